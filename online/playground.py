"""GET /: a small playground page (no front-end build): type a text and see every label's
score as a bar; upload a file as a job, watch its progress, download the results; links to
/docs and /metrics. Plain HTML and JavaScript, served from this module; user data is only
ever written with textContent."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>surgeserve playground</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto;
         padding: 0 1rem; color: #1d232a; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  nav a { margin-right: 1rem; }
  section { border: 1px solid #d6dbe0; border-radius: 8px; padding: 1rem; margin: 1rem 0; }
  textarea { width: 100%; box-sizing: border-box; min-height: 5rem; font: inherit; }
  .row { display: grid; grid-template-columns: 9rem 1fr 4.5rem; gap: .5rem;
         align-items: center; margin: .25rem 0; }
  .bar { background: #e9edf1; border-radius: 4px; height: 1rem; overflow: hidden; }
  .fill { background: #2f7dd1; height: 100%; }
  .top .fill { background: #1f9d55; }
  .muted { color: #66727f; font-size: .9rem; }
  .error { color: #b42318; }
  progress { width: 100%; }
</style>
</head>
<body>
<h1>surgeserve playground</h1>
<nav><a href="/docs">API docs</a><a href="/metrics">metrics</a>
<a href="/v1/models">models</a>
<label>API key <input id="key" type="password" size="18" autocomplete="off"
  placeholder="if the server wants one"></label></nav>

<section>
  <label for="model">Model</label> <select id="model"></select>
  <p><label for="text">Text</label><br>
  <textarea id="text" placeholder="Type a review: a warm, funny and moving film"></textarea></p>
  <div id="bars" aria-live="polite"></div>
  <p id="meta" class="muted"></p>
</section>

<section>
  <label for="file">Bulk job: a file with one text per line (or NDJSON)</label><br>
  <input id="file" type="file" accept=".txt,.jsonl,.ndjson,.csv,text/plain">
  <button id="submit" disabled>Submit job</button>
  <p><progress id="progress" max="1" value="0" hidden></progress></p>
  <p id="job" class="muted"></p>
  <p><a id="download" hidden>Download results (NDJSON)</a></p>
</section>

<script>
const $ = (id) => document.getElementById(id);
let timer = null, seq = 0;
$("key").value = sessionStorage.getItem("surge-key") || "";
$("key").addEventListener("change", () => {
  sessionStorage.setItem("surge-key", $("key").value); loadModels(); });

function api(path, options) {  // every API call carries the key, when one was given
  const opts = Object.assign({}, options || {});
  opts.headers = Object.assign({}, opts.headers || {});
  if ($("key").value) opts.headers["X-API-Key"] = $("key").value;
  return fetch(path, opts);
}

function show(node, text, cls) { node.textContent = text; node.className = cls || "muted"; }

async function errorText(res) {
  try { const body = await res.json(); return body.error.message || res.statusText; }
  catch (e) { return res.status + " " + res.statusText; }
}

async function loadModels() {
  const res = await api("/v1/models");
  if (!res.ok) { show($("meta"), "models: " + await errorText(res), "error"); return; }
  $("model").replaceChildren();
  show($("meta"), "");
  for (const m of (await res.json()).models) {
    const opt = document.createElement("option");
    opt.value = m.name;
    opt.textContent = m.name + (m.default ? " (default)" : "") + " " + m.version;
    $("model").appendChild(opt);
  }
}

function render(result) {
  const bars = $("bars");
  bars.replaceChildren();
  result.scores.forEach((s, i) => {
    const row = document.createElement("div");
    row.className = "row" + (i === 0 ? " top" : "");
    row.dataset.label = s.label;
    const name = document.createElement("span");
    name.textContent = s.label;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = (100 * s.score).toFixed(1) + "%";
    bar.appendChild(fill);
    const pct = document.createElement("span");
    pct.textContent = (100 * s.score).toFixed(1) + "%";
    row.append(name, bar, pct);
    bars.appendChild(row);
  });
}

async function predict() {
  const text = $("text").value;
  if (!text.trim()) { $("bars").replaceChildren(); show($("meta"), ""); return; }
  const mine = ++seq, started = performance.now();
  const res = await api("/v1/models/" + encodeURIComponent($("model").value) + "/predict", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({text})});
  if (mine !== seq) return;  // a newer keystroke won
  if (!res.ok) { show($("meta"), await errorText(res), "error"); return; }
  const result = await res.json();
  render(result);
  $("bars").dataset.text = text;  // which text the bars are for
  show($("meta"), result.model + " " + result.version + " · " +
       (result.cached ? "from the cache" : "computed") + " · " +
       Math.round(performance.now() - started) + " ms");
}

$("text").addEventListener("input", () => {
  clearTimeout(timer); timer = setTimeout(predict, 200);
});
$("model").addEventListener("change", predict);
$("file").addEventListener("change", () => { $("submit").disabled = !$("file").files.length; });

$("submit").addEventListener("click", async () => {
  const file = $("file").files[0];
  $("download").hidden = true;
  const lines = (await file.text()).split(/\\r?\\n/).filter((l) => l.trim());
  const body = lines.map((l) => { try { JSON.parse(l); return l; }
                                   catch (e) { return JSON.stringify(l); } }).join("\\n");
  const res = await api("/v1/jobs?model=" + encodeURIComponent($("model").value), {
    method: "POST", headers: {"Content-Type": "application/x-ndjson"}, body});
  if (!res.ok) { show($("job"), "job refused: " + await errorText(res), "error"); return; }
  watch((await res.json()).id);
});

async function watch(id) {
  const bar = $("progress");
  bar.hidden = false;
  for (;;) {
    const res = await api("/v1/jobs/" + encodeURIComponent(id));
    if (!res.ok) { show($("job"), await errorText(res), "error"); return; }
    const job = await res.json();
    bar.max = job.total; bar.value = job.done;
    show($("job"), "job " + id + ": " + job.status + ", " + job.done + " / " + job.total);
    if (job.status === "succeeded") { offerDownload(id); return; }
    if (["failed", "cancelled"].includes(job.status)) {
      show($("job"), "job " + id + " " + job.status + (job.error ? ": " + job.error : ""), "error");
      return;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function offerDownload(id) {
  const res = await api("/v1/jobs/" + encodeURIComponent(id) + "/results",
                        {headers: {"Accept": "application/x-ndjson"}});
  const link = $("download");
  link.href = URL.createObjectURL(await res.blob());
  link.download = "results-" + id + ".ndjson";
  link.hidden = false;
}

loadModels();
</script>
</body>
</html>
"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    """The playground page."""
    return HTMLResponse(PAGE)

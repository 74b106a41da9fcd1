"""loadtest/k6: the script is valid JavaScript; run under node with k6's modules stubbed, it
sends requests our API accepts to real routes, follows the same stage shapes as
loadtest/traffic.py, and honours the hit-rate knob; the Job builds and validates."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from common.schemas import BulkPredictRequest, PredictRequest
from loadtest.traffic import preset
from tests.deploy import checks

K6 = checks.ROOT / "loadtest" / "k6"

STUBS = """
const __calls = [];
const __ENV = globalThis.__ENV;
const http = { post: (url, body, params) => { __calls.push({url, body, tags: params.tags});
  const data = JSON.parse(body);
  const results = (data.texts || []).map(() => ({cached: false}));
  return { status: 200, json: (k) => (k === 'results' ? results : false) }; } };
const check = () => true;
class Rate { add() {} }
"""

HARNESS = """
for (let i = 0; i < 400; i++) { main(); }
console.log(JSON.stringify({options, calls: __calls}));
"""


def run_script(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed")
    source = (K6 / "script.js").read_text()
    body = re.sub(r"^import .*$", "", source, flags=re.MULTILINE)
    body = body.replace("export default function ()", "function main()")
    body = body.replace("export const", "const")
    path = tmp_path / "k6-under-node.mjs"
    path.write_text(f"globalThis.__ENV = {json.dumps(env)};\n" + STUBS + body + HARNESS)
    done = subprocess.run([node, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_script_sends_valid_requests_to_real_routes(tmp_path: Path) -> None:
    out = run_script(tmp_path, {"BASE_URL": "http://svc", "BULK_FRACTION": "0.25",
                                "BULK_SIZE": "4", "HIT_RATE": "0.5", "HOT_TEXTS": "20"})
    routes = {c["url"] for c in out["calls"]}
    assert routes == {"http://svc/v1/predict", "http://svc/v1/bulk-predict"}
    for call in out["calls"]:
        body = json.loads(call["body"])
        if call["url"].endswith("/bulk-predict"):
            assert len(BulkPredictRequest.model_validate(body).texts) == 4
        else:
            PredictRequest.model_validate(body)
    bulk = sum(c["url"].endswith("/bulk-predict") for c in out["calls"])
    assert 60 <= bulk <= 140  # 25% of 400


def test_hit_rate_knob_controls_repeats(tmp_path: Path) -> None:
    def repeat_share(rate: str) -> float:
        out = run_script(tmp_path, {"HIT_RATE": rate, "HOT_TEXTS": "50"})
        texts = [json.loads(c["body"])["text"] for c in out["calls"]]
        return 1 - len(set(texts)) / len(texts)

    assert repeat_share("0") == 0
    assert repeat_share("0.9") > 0.7


@pytest.mark.parametrize("shape", ["ramp", "steady", "spike", "ramp-down"])
def test_stages_mirror_the_python_presets(tmp_path: Path, shape: str) -> None:
    out = run_script(tmp_path, {"SHAPE": shape, "PEAK": "40", "DURATION_S": "100"})
    stages = out["options"]["scenarios"]["predictor"]["stages"]
    expected = preset(shape, 40, 100)
    assert [int(s["target"]) for s in stages] == [round(s.target) for s in expected]
    assert [s["duration"] for s in stages] == [f"{max(1, round(s.seconds))}s"
                                               for s in expected]
    opened = run_script(tmp_path, {"SHAPE": shape, "MODE": "open", "PEAK": "40"})
    assert opened["options"]["scenarios"]["predictor"]["executor"] == "ramping-arrival-rate"


def test_job_builds_and_targets_the_predictor() -> None:
    docs = checks.kustomize(K6)
    assert [p for d in docs for p in checks.validate(d)] == []
    job = next(d for d in docs if d["kind"] == "Job")
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    volume = job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
    assert volume == config["metadata"]["name"] and "script.js" in config["data"]
    env = {e["name"]: e["value"] for e in checks.containers(job)[0]["env"]}
    prod = checks.kustomize(checks.ROOT / "knative" / "overlays" / "prod")
    predictor = next(d for d in prod if d["kind"] == "Service"
                     and d["metadata"]["name"] == "predictor")
    namespace = predictor["metadata"]["namespace"]
    assert env["BASE_URL"] == f"http://predictor.{namespace}.svc.cluster.local"
    assert job["metadata"]["namespace"] == namespace
    assert env["SHAPE"] in ("ramp", "steady", "spike", "ramp-down")

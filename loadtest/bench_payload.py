"""`make bench` (prediction events): what payload logging at sample 1.0 costs.

  miss path   cache off, unique texts, 32 closed-loop clients: SURGE_PAYLOAD_SINK set vs not
  hit path    in-process LRU hits (the cheapest answer, so the largest relative cost), hot
              texts, 32 closed-loop clients: set vs not

Two servers run side by side, identical but for the payload settings; rounds alternate which
goes first and each ratio is the median of per-round ratios (this machine's speed drifts).
Each round also reads the server process's CPU time per request (/proc): a figure that other
load on the machine moves far less than throughput, so the two together tell a real cost from
a noisy neighbour. The sink is the real drift consumer (`surgeserve drift`) in its own process,
and the server's own counters show the events were sent, not dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from common.corpus import snippets
from common.metrics import PAYLOAD_OUTCOMES
from common.redis_server import free_port
from loadtest.processes import Server, launched, server, wait_ready
from loadtest.report import markdown_table, write_report
from loadtest.run import closed_loop


@contextmanager
def drift_sink(log: Path) -> Iterator[str]:
    """`surgeserve drift` on a free port: the events' receiver."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"

    def healthy() -> bool:
        try:
            return httpx.get(url + "healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    with launched(("online.cli", "drift", "--port", str(port), "--host", "127.0.0.1"), {},
                  log) as process:
        wait_ready(process, healthy, "the drift consumer")
        yield url


def outcomes(url: str) -> dict[str, float]:
    """The server's surge_payload_events_total by outcome."""
    from prometheus_client.parser import text_string_to_metric_families

    out = dict.fromkeys(PAYLOAD_OUTCOMES, 0.0)
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == "surge_payload_events_total":
                out[sample.labels["outcome"]] = sample.value
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(srv: Server, texts: list[str], concurrency: int) -> dict[str, Any]:
    """One closed-loop run, with the server's CPU time per request."""
    before = cpu_seconds(srv.process.pid)
    result = asyncio.run(closed_loop(srv.url, texts, concurrency))
    used = cpu_seconds(srv.process.pid) - before
    return result | {"cpu_us_per_request": round(used / len(texts) * 1e6, 1)}


def rounds(off: Server, on: Server, texts: list[str], n: int,
           concurrency: int) -> list[dict[str, Any]]:
    """Interleaved closed-loop rounds against both servers, alternating which goes first."""
    rows = []
    for number in range(n):
        order = [("off", off), ("on", on)] if number % 2 == 0 else [("on", on), ("off", off)]
        row = {name: measured(srv, texts, concurrency) for name, srv in order}
        row["ratio"] = round(row["on"]["rps"] / row["off"]["rps"], 3)
        row["cpu_ratio"] = round(row["off"]["cpu_us_per_request"]
                                 / row["on"]["cpu_us_per_request"], 3)
        print(f"  round {number + 1}: off {row['off']['rps']} req/s "
              f"({row['off']['cpu_us_per_request']} us CPU each), on {row['on']['rps']} req/s "
              f"({row['on']['cpu_us_per_request']} us), on/off {row['ratio']}", flush=True)
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both paths, payload on vs off, in one run."""
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "bench-servers.log"
    texts = snippets(args.texts)
    base = {"SURGE_MAX_BATCH_SIZE": "32"}
    results: dict[str, Any] = {"concurrency": args.concurrency, "sample": 1.0}
    with ExitStack() as stack:
        sink = stack.enter_context(drift_sink(log))
        payload = {"SURGE_PAYLOAD_SINK": sink, "SURGE_PAYLOAD_SAMPLE": "1.0"}
        for path, env, load in (
                ("miss", {"SURGE_CACHE": "off"}, texts),
                ("hit", {}, (texts[: args.hot_texts] * (args.hit_requests // args.hot_texts
                                                         + 1))[: args.hit_requests])):
            with server(base | env, log) as off, server(base | env | payload, log) as on:
                if path == "hit":  # fill both LRUs first
                    for srv in (off, on):
                        asyncio.run(closed_loop(srv.url, texts[: args.hot_texts],
                                                args.concurrency))
                print(f"{path} path: payload off vs on (sample 1.0) ...", flush=True)
                rows = rounds(off, on, load, args.rounds, args.concurrency)
                time.sleep(1)  # the last events leave within FLUSH_S
                results[path] = {
                    "rounds": rows, "events": outcomes(on.url),
                    "ratio": round(statistics.median(r["ratio"] for r in rows), 3),
                    "cpu_ratio": round(statistics.median(r["cpu_ratio"] for r in rows), 3)}
    return results


def report(r: dict[str, Any]) -> str:
    """The Markdown table docs/benchmarks.md shows."""
    rows = []
    for path, what in (("miss", "miss path (cache off, unique texts)"),
                       ("hit", "hit path (LRU hits)")):
        runs = r[path]["rounds"]
        events = r[path]["events"]
        lost = sum(v for k, v in events.items() if k != "sent")

        def median(name: str, key: str, runs: list[dict[str, Any]] = runs) -> float:
            return float(statistics.median(x[name][key] for x in runs))

        rows.append((f"payload logging at sample 1.0 / off, {what}", f"{r[path]['ratio']:.3f}",
                     ">= 0.95",
                     f"throughput, median of {len(runs)} interleaved rounds: "
                     f"{median('on', 'rps'):.1f} vs {median('off', 'rps'):.1f} req/s; server CPU "
                     f"per request {median('on', 'cpu_us_per_request'):.0f} vs "
                     f"{median('off', 'cpu_us_per_request'):.0f} us (ratio "
                     f"{r[path]['cpu_ratio']:.3f}); {events['sent']:.0f} predictions sent, "
                     f"{lost:.0f} lost"))
    return markdown_table(rows)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: `python -m loadtest.bench_payload`."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1000, help="unique texts per miss round")
    parser.add_argument("--hot-texts", type=int, default=500)
    parser.add_argument("--hit-requests", type=int, default=10000, help="per hit round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    results = run(args)
    write_report(args.out, "payload", results, report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench` (jobs part): one worker, a job of N distinct snippets, over HTTP.

  job items/s / best raw: the fastest guard-passing engine candidate on this CPU, the whole
  set sorted (a chunk is sorted as a whole), measured just before the job; and / the served
  engine's raw, sorted, before and after the job, averaged (this machine's speed drifts)
  time from submit to the first result page
  jobs-Redis memory per result (and per submitted text, texts included)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from common.corpus import snippets
from loadtest.bench_online import raw_throughput
from loadtest.processes import WORKER, launched, redis_server, server
from loadtest.report import markdown_table, write_report


def _wait(client: httpx.Client, job_id: str, first_page: list[float], started: float,
          timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if not first_page and job["done"] > 0:
            page = client.get(f"/v1/jobs/{job_id}/results?limit=100").json()
            if page["results"]:
                first_page.append(time.perf_counter() - started)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return dict(job)
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The jobs measurements, in one run."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    texts = snippets(args.texts)
    # The corpus has 12,752 distinct snippets: a larger request uses them all.
    results: dict[str, Any] = {"texts": len(texts), "texts_requested": args.texts}
    with redis_server("jobs", out / "redis-jobs") as jobs, \
            redis_server("cache", out / "redis-cache") as cache:
        env = {"SURGE_REDIS_URL": jobs.url, "SURGE_CACHE_URL": cache.url}
        with launched(WORKER, env, out / "bench-jobs-worker.log"):
            print(f"raw model, before: {args.raw_texts} texts, every engine, sorted ...",
                  flush=True)
            engines = raw_throughput(args.raw_texts, 32, {}, "--candidates", "--rounds", "1")
            best = engines.get("best") or {}
            raw_before = raw_throughput(args.raw_texts, 32, {}, "--sorted")["texts_per_s"]
            with server(env | {"SURGE_ROLE": "jobs"}, out / "bench-servers.log",
                        probe="/readyz") as api, httpx.Client(base_url=api.url, timeout=60) as c:
                warm = c.post("/v1/jobs", json={"texts": ["warm the worker up"]}).json()
                _wait(c, warm["id"], [], time.perf_counter(), 120)
                store = redis.Redis.from_url(jobs.url)
                memory_before = int(store.info("memory")["used_memory"])
                print(f"job of {len(texts)} texts, one worker ...", flush=True)
                started = time.perf_counter()
                job_id = c.post("/v1/jobs", json={"texts": texts}).json()["id"]
                first_page: list[float] = []
                job = _wait(c, job_id, first_page, started, 3600)
                seconds = time.perf_counter() - started
                memory_after = int(store.info("memory")["used_memory"])
                results_bytes = int(store.memory_usage(f"surge:job:{job_id}:results") or 0)
            print(f"raw model, after: {args.raw_texts} texts ...", flush=True)
            raw_after = raw_throughput(args.raw_texts, 32, {}, "--sorted")["texts_per_s"]
    raw = (raw_before + raw_after) / 2
    results |= {
        "status": job["status"], "done": job["done"], "seconds": round(seconds, 2),
        "items_per_s": round(len(texts) / seconds, 1),
        "raw_texts_per_s": {"before": raw_before, "after": raw_after},
        "job_over_raw": round(len(texts) / seconds / raw, 3),
        "best_raw": {"label": best.get("label"), "sorted": best.get("sorted")},
        "job_over_best_raw": round(len(texts) / seconds / (best.get("sorted") or raw), 3),
        "first_page_s": round(first_page[0], 2) if first_page else None,
        "bytes_per_result": round(results_bytes / len(texts), 1),
        "bytes_per_item_total": round((memory_after - memory_before) / len(texts), 1),
    }
    return results


def report(r: dict[str, Any]) -> str:
    """The Markdown table docs/benchmarks.md shows."""
    rows = [
        ("job items/s / best raw (whole set sorted)", f"{r['job_over_best_raw']:.3f}",
         ">= 0.9", f"{r['items_per_s']} vs {r['best_raw']['label']} "
         f"{r['best_raw']['sorted']} texts/s; {r['texts']} distinct texts, one worker"),
        ("job items/s / raw of the served engine (sorted)", f"{r['job_over_raw']:.3f}", "",
         f"{r['items_per_s']} vs {r['raw_texts_per_s']['before']} / "
         f"{r['raw_texts_per_s']['after']} texts/s (raw before / after)"),
        ("time to first result page", f"{r['first_page_s']} s", "", "submit → 100 results"),
        ("jobs-Redis bytes per result", f"{r['bytes_per_result']}", "",
         "the results hash (MEMORY USAGE)"),
        ("jobs-Redis bytes per submitted text", f"{r['bytes_per_item_total']}", "",
         "used_memory delta: text + result + bookkeeping"),
    ]
    return markdown_table(rows)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: `python -m loadtest.bench_jobs`."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--raw-texts", type=int, default=4000)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    results = run(args)
    write_report(args.out, "jobs", results, report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hardening benchmarks (in `make bench`):

  overload  4x the measured capacity for 30 s (open loop, every text a miss): how much is shed
            (503/429) and how fast, the tail of what is accepted, and how soon full throughput
            returns afterwards (goal: within 5 s).
  soak      minutes at half the measured capacity (Zipf traffic, cache on) with a job every
            30 s through a real worker: errors, p99 drift (first vs last minute), RSS growth of
            the API and the worker (goals: 0 errors, RSS growth < 5%).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from common.corpus import snippets
from loadtest.processes import WORKER, launched, redis_server, rss_mb, server
from loadtest.run import RunConfig, constant, run
from loadtest.stats import latency_ms, per_second, percentile, summary
from loadtest.traffic import HitRateTexts, ZipfTexts


def capacity(url: str, texts: Any, users: int = 16, seconds: float = 8) -> float:
    """Closed-loop requests/s at `users` in flight."""
    result = run(RunConfig(url=url, stages=list(constant(users, seconds)), texts=texts,
                           progress=False))
    return float(summary(result.samples, result.seconds)["rps"])


def overload(out: Path, factor: float = 4, seconds: float = 30) -> dict[str, Any]:
    """Shedding under factor x capacity, then recovery."""
    with server({"SURGE_CACHE": "off"}, out / "bench-servers.log") as srv:
        fresh = HitRateTexts(snippets() * 20, 0.0, seed=5)  # every request a miss
        cap = capacity(srv.url, fresh)
        print(f"  capacity {cap:.0f} req/s; offering {factor * cap:.0f} req/s for "
              f"{seconds:g} s", flush=True)
        over = run(RunConfig(url=srv.url, stages=list(constant(factor * cap, seconds)),
                             texts=fresh, mode="open", max_connections=4096))
        after = run(RunConfig(url=srv.url, stages=list(constant(16, 15)), texts=fresh,
                              progress=False))
    shed = [s for s in over.samples if s.status in (429, 503)]
    served = [s for s in over.samples if s.status == 200]
    rows = per_second(after.samples)
    recovered = next((r["second"] for r in rows if r["ok"] >= 0.9 * cap), None)
    return {"capacity_rps": round(cap, 1), "offered_rps": round(factor * cap, 1),
            "summary": summary(over.samples, over.seconds),
            "shed_fraction": round(len(shed) / max(1, len(over.samples)), 3),
            "shed_latency": latency_ms([s.latency for s in shed]),
            "served_latency": latency_ms([s.latency for s in served]),
            "recovery_s": recovered, "after": rows}


def soak(out: Path, minutes: float) -> dict[str, Any]:
    """Half of the Zipf capacity for `minutes`, a 300-text job every 30 s."""
    with redis_server("cache", out / "soak-cache") as cache, \
            redis_server("jobs", out / "soak-jobs") as jobs:
        env = {"SURGE_CACHE_URL": cache.url, "SURGE_REDIS_URL": jobs.url}
        worker_env = env | {"SURGE_WORKER_METRICS_PORT": "0", "SURGE_LOG_LEVEL": "WARNING"}
        with launched(WORKER, worker_env, out / "bench-worker.log", stop_timeout=60) as worker, \
                server(env, out / "bench-servers.log") as srv:
            texts = ZipfTexts(snippets(), 1.2, seed=11)
            cap = capacity(srv.url, texts, users=32, seconds=10)
            rate = cap / 2
            print(f"  Zipf capacity {cap:.0f} req/s; soaking at {rate:.0f} req/s for "
                  f"{minutes:g} min", flush=True)
            stop = threading.Event()
            submitted: list[str] = []
            feeder = threading.Thread(target=_jobs_every, args=(srv.url, 30, stop, submitted),
                                      daemon=True)
            result_box: list[Any] = []
            marks: dict[str, float] = {}

            def sample_rss() -> None:
                time.sleep(60)  # after a minute of warm-up (caches filled, arenas grown)
                marks.update(api_start=rss_mb(srv.process.pid), worker_start=rss_mb(worker.pid))

            sampler = threading.Thread(target=sample_rss, daemon=True)
            feeder.start()
            sampler.start()
            stages = list(constant(rate, minutes * 60))
            result_box.append(run(RunConfig(url=srv.url, stages=stages, texts=texts,
                                            mode="open")))
            stop.set()
            marks.update(api_end=rss_mb(srv.process.pid), worker_end=rss_mb(worker.pid))
            finished = _wait_jobs(srv.url, submitted)
    samples = result_box[0].samples
    first = [s.latency for s in samples if s.start < 60 and s.status == 200]
    last = [s.latency for s in samples if s.start >= minutes * 60 - 60 and s.status == 200]
    return {"minutes": minutes, "rate_rps": round(rate, 1), "summary":
            summary(samples, result_box[0].seconds),
            "p99_first_minute_ms": round(percentile(first, 0.99) * 1000, 1),
            "p99_last_minute_ms": round(percentile(last, 0.99) * 1000, 1),
            "rss_mb": {k: round(v, 1) for k, v in marks.items()},
            "api_rss_growth": _growth(marks, "api"),
            "worker_rss_growth": _growth(marks, "worker"),
            "jobs": {"submitted": len(submitted), "succeeded": finished}}


def _growth(marks: dict[str, float], who: str) -> float | None:
    start, end = marks.get(f"{who}_start"), marks.get(f"{who}_end")
    return round((end - start) / start, 4) if start and end else None


def _jobs_every(url: str, every_s: float, stop: threading.Event, ids: list[str]) -> None:
    corpus = snippets()
    n = 0
    while not stop.is_set():
        texts = corpus[(n * 300) % len(corpus):][:300]
        reply = httpx.post(f"{url}/v1/jobs", json={"texts": texts}, timeout=30)
        if reply.status_code == 202:
            ids.append(reply.json()["id"])
        n += 1
        stop.wait(every_s)


def _wait_jobs(url: str, ids: list[str], timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    done = 0
    for job_id in ids:
        while time.monotonic() < deadline:
            status = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()["status"]
            if status in ("succeeded", "failed", "cancelled"):
                done += status == "succeeded"
                break
            time.sleep(0.5)
    return done


def main(argv: list[str] | None = None) -> int:
    """CLI entry: `python -m loadtest.bench_hardening`."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--soak-minutes", type=float, default=10)
    parser.add_argument("--overload-seconds", type=float, default=30)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("== overload", flush=True)
    results = {"overload": overload(out, seconds=args.overload_seconds)}
    print("== soak", flush=True)
    results["soak"] = soak(out, args.soak_minutes)
    (out / "hardening.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "after"}
                      for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

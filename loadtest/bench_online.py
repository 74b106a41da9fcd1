"""`make bench` (online part): ratios measured in one run against real server processes.

  service / raw batched model throughput   (cache off, 32 clients, same texts, same threads)
  service / naive server                   (same server with max_batch_size=1: one forward
                                            pass per request)
  cache-hit p99 at 32 concurrent clients
  cold start: process exec → first 200 from /v1/predict; RSS after the load

The raw figure comes from `surgeserve model bench` in its own process; everything else over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.corpus import snippets
from common.redis_server import RedisServer, free_port
from loadtest.client import Connection


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    cold_start_s: float

    def rss_mb(self) -> float:
        """Resident memory of the server process now."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@contextmanager
def server(env: dict[str, str], log: Path) -> Iterator[Server]:
    """A `surgeserve serve` process; cold start timed from exec to the first 200 prediction."""
    port = free_port()
    full_env = os.environ | {"PORT": str(port), "SURGE_ACCESS_LOG": "false",
                             "SURGE_LOG_LEVEL": "WARNING"} | env
    started = time.perf_counter()
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "online.cli", "serve"], env=full_env,
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        cold = asyncio.run(_first_prediction(url, process, started))
        yield Server(url, process, cold)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


async def _first_prediction(url: str, process: subprocess.Popen[bytes], started: float) -> float:
    conn = Connection(url)
    while time.perf_counter() - started < 120:
        if process.poll() is not None:
            raise RuntimeError("server exited during startup; see the bench log")
        try:
            reply = await conn.post_json("/v1/predict", {"text": "cold start probe"})
            if reply.status == 200:
                await conn.close()
                return time.perf_counter() - started
        except OSError:
            await conn.close()
        await asyncio.sleep(0.01)
    raise TimeoutError("no 200 within 120 s")


async def closed_loop(url: str, texts: list[str], concurrency: int) -> dict[str, Any]:
    """`concurrency` virtual users, each sending the next text as soon as it has an answer."""
    queue = iter(texts)
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def user() -> None:
        conn = Connection(url)
        for text in queue:
            reply = await conn.post_json("/v1/predict", {"text": text})
            latencies.append(reply.seconds)
            statuses[reply.status] = statuses.get(reply.status, 0) + 1
        await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return {"requests": len(latencies), "seconds": round(seconds, 3),
            "rps": round(len(latencies) / seconds, 1), "statuses": statuses,
            **percentiles(latencies)}


def percentiles(latencies: list[float]) -> dict[str, float]:
    """p50/p90/p99 in milliseconds (nearest rank)."""
    ordered = sorted(latencies)
    if not ordered:
        return {}

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50_ms": rank(0.50), "p90_ms": rank(0.90), "p99_ms": rank(0.99)}


def raw_throughput(n: int, batch_size: int, env: dict[str, str]) -> dict[str, Any]:
    """`surgeserve model bench` in its own process: the in-process batched ceiling."""
    out = subprocess.run(
        [sys.executable, "-m", "online.cli", "model", "bench", "--texts", str(n),
         "--batch-size", str(batch_size)],
        env=os.environ | env, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every online measurement, in one run."""
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "bench-servers.log"
    texts = snippets(args.texts)
    base = {"SURGE_TORCH_THREADS": str(args.threads), "SURGE_MAX_BATCH_SIZE": str(args.batch)}
    results: dict[str, Any] = {"texts": len(texts), "concurrency": args.concurrency,
                               "threads": args.threads, "max_batch_size": args.batch}
    print(f"raw model: {len(texts)} texts, batches of {args.batch} ...", flush=True)
    results["raw"] = raw_throughput(len(texts), args.batch, base)
    print(f"  {results['raw']['texts_per_s']} texts/s", flush=True)

    with server(base | {"SURGE_CACHE": "off"}, log) as srv:
        results["cold_start_s"] = round(srv.cold_start_s, 3)
        print(f"service, cache off: cold start {srv.cold_start_s:.2f} s; load ...", flush=True)
        results["service"] = asyncio.run(closed_loop(srv.url, texts, args.concurrency))
        results["rss_mb"] = round(srv.rss_mb(), 1)
    print(f"  {results['service']['rps']} req/s, RSS {results['rss_mb']} MB", flush=True)

    naive_texts = texts[: args.naive_texts]
    with server(base | {"SURGE_CACHE": "off", "SURGE_MAX_BATCH_SIZE": "1"}, log) as srv:
        print(f"naive (one forward pass per request): {len(naive_texts)} texts ...", flush=True)
        results["naive"] = asyncio.run(closed_loop(srv.url, naive_texts, args.concurrency))
    print(f"  {results['naive']['rps']} req/s", flush=True)

    cache_redis = RedisServer("cache", out_dir / "redis-cache").start()
    try:
        with server(base | {"SURGE_CACHE_URL": cache_redis.url}, log) as srv:
            hot = texts[: args.hot_texts]
            asyncio.run(closed_loop(srv.url, hot, args.concurrency))  # warm the cache
            repeated = (hot * (args.hit_requests // len(hot) + 1))[: args.hit_requests]
            print(f"cache hits: {len(repeated)} requests ...", flush=True)
            results["cache_hit"] = asyncio.run(closed_loop(srv.url, repeated, args.concurrency))
    finally:
        cache_redis.stop()
    print(f"  {results['cache_hit']['rps']} req/s, p99 {results['cache_hit']['p99_ms']} ms")
    results["ratios"] = {
        "service_over_raw": round(results["service"]["rps"] / results["raw"]["texts_per_s"], 3),
        "service_over_naive": round(results["service"]["rps"] / results["naive"]["rps"], 2),
    }
    return results


def report(results: dict[str, Any]) -> str:
    """The Markdown table README shows."""
    r = results
    rows = [
        ("service / raw batched model throughput", f"{r['ratios']['service_over_raw']:.3f}",
         ">= 0.85", f"{r['service']['rps']} vs {r['raw']['texts_per_s']} texts/s"),
        ("service / naive server (batch size 1)", f"{r['ratios']['service_over_naive']:.2f}",
         ">= 4", f"{r['service']['rps']} vs {r['naive']['rps']} req/s"),
        ("cache-hit p99 at 32 concurrent", f"{r['cache_hit']['p99_ms']} ms", "<= 10 ms",
         f"p50 {r['cache_hit']['p50_ms']} ms, {r['cache_hit']['rps']} req/s"),
        ("cold start: exec → first 200", f"{r['cold_start_s']} s", "<= 2.5 s", ""),
        ("RSS after load", f"{r['rss_mb']} MB", "<= 500 MB", ""),
    ]
    lines = ["| measure | value | goal | detail |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: `python -m loadtest.bench_online`."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--naive-texts", type=int, default=500)
    parser.add_argument("--hot-texts", type=int, default=500)
    parser.add_argument("--hit-requests", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    results = run(args)
    table = report(results)
    Path(args.out, "online.json").write_text(json.dumps(results, indent=2) + "\n")
    Path(args.out, "online.md").write_text(table + "\n")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

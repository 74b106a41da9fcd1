"""`make bench`: every benchmark of the project in one run, gathered into one report
(bench-results/report.json and report.md) with the ratios and the command that reproduces each.

  online      python -m loadtest.bench_online      service vs raw model vs naive, cache-hit
                                                   latency, cold start, RSS
  jobs        python -m loadtest.bench_jobs        job throughput vs raw, first page, bytes
  zipf        (here)                               service (cache on) vs naive on Zipf traffic
  capacity    python -m loadtest sweep             capacity curve, knee, concurrency under SLO
  simulator   python -m loadtest validate          simulated vs measured, one instance
  tuning      python -m loadtest tune              cheapest Knative settings per trace
  hardening   python -m loadtest.bench_hardening   overload at 4x capacity, 10-minute soak
  payload     python -m loadtest.bench_payload     prediction events at sample 1.0 vs off
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from common.corpus import snippets
from loadtest.curve import Curve
from loadtest.kpa import trace
from loadtest.processes import NAIVE, server
from loadtest.report import COLUMNS, markdown_table, write_report
from loadtest.run import RunConfig, constant, run
from loadtest.stats import summary
from loadtest.sweep import LEVELS, sweep
from loadtest.traffic import HitRateTexts, ZipfTexts
from loadtest.tune import explain, tune
from loadtest.validate import validate

SLO_MS = 250.0


def _module(out: Path, name: str, *extra: str) -> dict[str, Any]:
    """Run `python -m loadtest.<name>` (its own processes, its own progress) and read its JSON."""
    subprocess.run([sys.executable, "-m", f"loadtest.{name}", "--out", str(out), *extra],
                   check=True)
    return dict(json.loads((out / f"{name.removeprefix('bench_')}.json").read_text()))


def zipf_vs_naive(out: Path, seconds: float, rounds: int, users: int) -> dict[str, Any]:
    """The same Zipf(1.2) closed-loop traffic against the service (cache on) and the naive
    server (one forward pass per request, no cache), interleaved; median of per-round ratios."""
    log = out / "bench-servers.log"
    rows = []
    with server({}, log) as svc, server({}, log, command=NAIVE) as naive:
        for number in range(rounds):
            row = {}
            for name, url in (("service", svc.url), ("naive", naive.url)):
                result = run(RunConfig(url=url, stages=list(constant(users, seconds)),
                                       texts=ZipfTexts(snippets(), 1.2, seed=number),
                                       progress=False))
                row[name] = summary(result.samples, result.seconds)
            print(f"  zipf round {number + 1}: service {row['service']['rps']} req/s "
                  f"(hit {row['service']['cache_hit_ratio']}), naive {row['naive']['rps']} "
                  f"req/s", flush=True)
            rows.append(row)
    ratio = statistics.median(r["service"]["rps"] / r["naive"]["rps"] for r in rows)
    return {"rounds": rows, "service_over_naive": round(ratio, 2)}


def capacity(out: Path, seconds: float) -> dict[str, Any]:
    """Sweep and simulator validation against one fresh instance, cache off."""
    with server({"SURGE_CACHE": "off"}, out / "bench-servers.log") as srv:
        curve = sweep(srv.url, HitRateTexts(snippets(), 0.0), LEVELS, seconds=seconds,
                      warmup=2, slo_p99_ms=SLO_MS)
        curve["cold_start_s"] = round(srv.cold_start_s, 3)
        (out / "sweep.json").write_text(json.dumps(curve, indent=2) + "\n")
        checked = validate(srv.url, HitRateTexts(snippets(), 0.0, seed=9), out / "sweep.json",
                           (0.3, 0.6, 0.9), seconds=seconds * 2)
    (out / "validate.json").write_text(json.dumps(checked, indent=2) + "\n")
    return {"sweep": curve, "validate": checked}


def tuning(curve: dict[str, Any]) -> dict[str, Any]:
    """Recommendations for two traces on the measured curve and cold start."""
    measured = Curve(curve["curve"])
    peak = 10 * measured.capacity  # traffic for about ten pods at the peak
    loads = {"spike": trace("spike", 900, peak, low=peak / 10, at_s=300, length_s=120),
             "diurnal": trace("diurnal", 1800, peak, low=peak / 20, period_s=1800)}
    return {name: tune(measured, load, curve["cold_start_s"], SLO_MS)
            for name, load in loads.items()}


Row = tuple[str, str, str, str, str]  # measure, value, goal, detail, command
# The commands that reproduce the rows.
ON, JOBS, HARD = ("python -m loadtest.bench_online", "python -m loadtest.bench_jobs",
                  "python -m loadtest.bench_hardening")
LT = "python -m loadtest"


def rows(r: dict[str, Any]) -> list[Row]:
    """(measure, value, goal, detail, command) for the report."""
    return [*_online_rows(r["online"], r["zipf"]), *_jobs_rows(r["jobs"]),
            *_capacity_rows(r["capacity"]["sweep"], r["capacity"]["validate"]),
            *_hardening_rows(r["hardening"]), *_payload_rows(r["payload"]),
            *_tuning_rows(r["tuning"])]


def _online_rows(online: dict[str, Any], zipf: dict[str, Any]) -> list[Row]:
    cpu, served = online["engines"]["cpu"], online["served"]
    engine = f"{served['name']} {served['precision']} {served['streams']}x{served['threads']}"
    best = online["engines"].get("best") or {}
    return [
        ("CPU (every figure below)", cpu["model"], "",
         f"{cpu['cpus']} usable cores; flags {' '.join(cpu['flags'])}", ON),
        *[(f"raw {label}, sorted / arrival order (texts/s)",
           f"{row.get('sorted')} / {row.get('arrival')}", "",
           f"guard: {row.get('guard', row.get('error'))}; accuracy {row.get('accuracy')}",
           "python -m loadtest.rawbench --candidates")
          for label, row in online["engines"]["candidates"].items()],
        ("miss path / best raw (cache off, 32 clients, 2,000 distinct texts)",
         f"{online['ratios']['service_over_best_raw']:.3f}", ">= 0.75",
         f"best raw: {best.get('label')} {best.get('arrival')} texts/s in arrival order; "
         f"serving {engine}; client {online['client']}", ON),
        ("service / naive server on the same engine, unique texts (cache off)",
         f"{online['ratios']['service_over_naive']:.2f}", ">= 1.8 on AMX",
         f"batching alone; its ceiling here (raw batch-32 / batch-1) is "
         f"{online['ratios']['batching_ceiling']:.2f}", ON),
        ("service / naive server as tutorials write it (transformers), unique texts",
         f"{online['ratios']['service_over_naive_eager']:.2f}", ">= 7",
         "batching, tight passes and the chosen engine", ON),
        ("service / naive server, Zipf(1.2) traffic (cache on)",
         f"{zipf['service_over_naive']:.2f}", ">= 4",
         f"hit ratio {zipf['rounds'][-1]['service']['cache_hit_ratio']}", "make bench"),
        *[(f"cache-hit p99 at {p['offered_rps']:.0f} req/s", f"{p['p99_ms']} ms", "<= 10 ms",
           f"server's own p99 <= {p['server_p99_le_ms']:g} ms", ON)
          for p in online["cache_hit_paced"]],
        ("cache-hit throughput, fast path / through FastAPI", f"{online['fast_path']['ratio']:.2f}",
         "", f"{online['cache_hit']['rps']} vs {online['fast_path']['off_rps']} req/s "
         f"(SURGE_FAST_PATH=false), 32 closed-loop clients", ON),
        ("cold start: exec → first 200", f"{online['cold_start_s']} s", "<= 1.2 s",
         f"{engine}; transformers path {online['cold_start_eager_s']} s", ON),
        ("RSS after load", f"{online['rss_mb']} MB", "<= 400 MB", "", ON),
    ]


def _jobs_rows(jobs: dict[str, Any]) -> list[Row]:
    return [
        ("job items/s / best raw, whole set sorted", f"{jobs['job_over_best_raw']:.3f}",
         ">= 0.9", f"{jobs['items_per_s']} items/s vs {jobs['best_raw']['label']} "
         f"{jobs['best_raw']['sorted']} texts/s", JOBS),
        ("time to first result page", f"{jobs['first_page_s']} s", "", "", JOBS),
    ]


def _capacity_rows(sweep_: dict[str, Any], checked: dict[str, Any]) -> list[Row]:
    out: list[Row] = [
        ("capacity of one instance (cache off)", f"{sweep_['capacity_rps']} req/s", "",
         f"knee {sweep_['knee']} in flight; p99 <= {SLO_MS:g} ms up to "
         f"{sweep_['max_concurrency_under_slo']} in flight",
         f"{LT} sweep --start-server --server-env SURGE_CACHE=off"),
    ]
    for load in checked["loads"]:
        out.append((f"simulator error at {load['fraction']:.0%} of capacity",
                    f"{load['error']['throughput']:+.1%} req/s, {load['error']['p99']:+.1%} p99",
                    "+-25% p99", f"measured p99 {load['measured']['p99_ms']} ms vs simulated "
                                 f"{load['simulated']['p99_ms']} ms"
                                 f"{'' if load['trusted'] else ' (untrusted: machine noise)'}",
                    f"{LT} validate --start-server --server-env SURGE_CACHE=off"))
    return out


def _hardening_rows(hardening: dict[str, Any]) -> list[Row]:
    over, soak = hardening["overload"], hardening["soak"]
    return [
        ("overload 4x capacity: requests shed (503)", f"{over['shed_fraction']:.0%}", "",
         f"shed in p99 {over['shed_latency']['p99_ms']} ms; accepted p99 "
         f"{over['served_latency']['p99_ms']} ms at {over['summary']['rps']} req/s", HARD),
        ("overload: back to full throughput after", f"{over['recovery_s']} s", "<= 5 s",
         "first second >= 90% of capacity", HARD),
        (f"soak {soak['minutes']:g} min at {soak['rate_rps']} req/s (Zipf, jobs every 30 s)",
         f"{sum(soak['summary']['errors'].values())} errors", "0",
         f"p99 {soak['p99_first_minute_ms']} -> {soak['p99_last_minute_ms']} ms (first -> "
         f"last minute); jobs {soak['jobs']['succeeded']}/{soak['jobs']['submitted']}", HARD),
        ("soak: RSS growth, API / worker",
         f"{_pct(soak['api_rss_growth'])} / {_pct(soak['worker_rss_growth'])}", "< 5%",
         f"{soak['rss_mb']}", HARD),
    ]


def _payload_rows(payload: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for path in ("miss", "hit"):
        cost = payload[path]
        out.append((f"prediction events at sample 1.0 / off, {path} path throughput",
                    f"{cost['ratio']:.3f}", ">= 0.95",
                    f"server CPU per request ratio {cost['cpu_ratio']:.3f}; "
                    f"{cost['events']['sent']:.0f} predictions sent",
                    "python -m loadtest.bench_payload"))
    return out


def _tuning_rows(tuning: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for name, outcome in tuning.items():
        best = outcome["best"]
        value = "none meets the SLO" if best is None else (
            f"target {best['config']['target']:g} x {best['config']['utilization']:.0%}, "
            f"cc {best['config']['container_concurrency']}, "
            f"min-scale {best['config']['min_scale']}, "
            f"delay {best['config']['scale_down_delay_s']:g} s")
        manifest = outcome["current"]["summary"]
        detail = "" if best is None else (
            f"{best['summary']['pod_seconds']:g} pod-s, p99 {best['summary']['p99_ms']:g} ms; "
            f"the manifest: {manifest['pod_seconds']:g} pod-s, p99 {manifest['p99_ms']:g} ms")
        out.append((f"tuned for the {name} trace", value, f"p99 <= {SLO_MS:g} ms", detail,
                    f"{LT} tune --curve bench-results/sweep.json --trace {name}"))
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def markdown(table: list[Row]) -> str:
    """The report as a Markdown table: the benchmarks' format, and the command as code."""
    return markdown_table([(*row[:4], f"`{row[4]}`") for row in table], (*COLUMNS, "reproduce"))


def main(argv: list[str] | None = None) -> int:
    """CLI entry: `python -m loadtest.bench_all` (what `make bench` runs)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--seconds", type=float, default=10, help="per sweep level / load")
    parser.add_argument("--zipf-seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--soak-minutes", type=float, default=10)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    print("== online", flush=True)
    results["online"] = _module(out, "bench_online")
    print("== jobs", flush=True)
    results["jobs"] = _module(out, "bench_jobs")
    print("== Zipf traffic: service vs naive", flush=True)
    results["zipf"] = zipf_vs_naive(out, args.zipf_seconds, args.rounds, users=32)
    print("== capacity sweep and simulator check", flush=True)
    results["capacity"] = capacity(out, args.seconds)
    print("== tuning", flush=True)
    results["tuning"] = tuning(results["capacity"]["sweep"])
    for name, outcome in results["tuning"].items():
        print(f"-- {name}\n{explain(outcome)}", flush=True)
    print("== prediction events: payload logging on vs off", flush=True)
    results["payload"] = _module(out, "bench_payload")
    print("== hardening: overload and soak", flush=True)
    results["hardening"] = _module(out, "bench_hardening", "--soak-minutes",
                                   str(args.soak_minutes))
    write_report(out, "report", results, markdown(rows(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

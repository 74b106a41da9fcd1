"""`python -m loadtest run | sweep | simulate | tune | validate` (docs/operations.md, "Tuning
the autoscaler")."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeAlias

from common.corpus import snippets
from loadtest import kpa, plots
from loadtest.k6summary import read_curve
from loadtest.run import RunConfig, run
from loadtest.stats import per_second, summary
from loadtest.traffic import HitRateTexts, Mix, ZipfTexts, parse_stages, preset
from loadtest.tune import current_config, explain, patch, tune


def _texts(args: argparse.Namespace) -> Any:
    corpus = snippets(args.corpus_size)
    if args.hit_rate is not None:
        return HitRateTexts(corpus, args.hit_rate, seed=args.seed)
    return ZipfTexts(corpus, args.zipf, seed=args.seed)


@contextmanager
def _target(args: argparse.Namespace) -> Iterator[tuple[str, float | None]]:
    """(base URL, cold start seconds or None): the given URL, or an instance started here."""
    if not args.start_server:
        if not args.url:
            raise SystemExit("give --url of a running service, or --start-server")
        yield args.url, None
        return
    from loadtest.processes import server

    env = dict(item.split("=", 1) for item in args.server_env)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with server(env, Path(args.out) / "loadtest-server.log") as srv:
        print(f"started {srv.url} (cold start {srv.cold_start_s:.2f} s)", file=sys.stderr)
        yield srv.url, srv.cold_start_s


def cmd_run(args: argparse.Namespace) -> int:
    stages = parse_stages(args.stages) if args.stages else preset(args.shape, args.peak,
                                                                  args.duration)
    with _target(args) as (url, _):
        result = run(RunConfig(url=url, stages=stages, texts=_texts(args), mode=args.mode,
                               mix=Mix(args.bulk_fraction, args.bulk_size), seed=args.seed))
    report = summary(result.samples, result.seconds)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    for path in plots.write_run(Path(args.out), args.name, config, report,
                                per_second(result.samples)):
        print(path)
    print(json.dumps(report, indent=2))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from loadtest.sweep import sweep

    levels = [int(x) for x in args.levels.split(",")]
    with _target(args) as (url, cold):
        out = sweep(url, _texts(args), levels, args.seconds, args.warmup, args.slo_ms)
    out["cold_start_s"] = cold
    path = Path(args.out) / f"{args.name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    plots.curve_plot(path.with_suffix(".png"), out["curve"], out["knee"], args.slo_ms,
                     out["max_concurrency_under_slo"])
    print(f"{path}\nknee {out['knee']} in flight; largest under p99 {args.slo_ms:g} ms: "
          f"{out['max_concurrency_under_slo']}; capacity {out['capacity_rps']} req/s")
    return 0


def _curve(args: argparse.Namespace) -> tuple[kpa.Curve, float]:
    data = read_curve(Path(args.curve))
    cold = args.cold_start if args.cold_start is not None else data.get("cold_start_s")
    if cold is None:
        raise SystemExit("the curve file has no cold_start_s: give --cold-start SECONDS")
    return kpa.Curve(data["curve"]), float(cold)


def _trace(args: argparse.Namespace) -> kpa.Trace:
    return kpa.trace(args.trace, args.seconds, args.rate, low=args.low, period_s=args.period,
                     at_s=args.at, length_s=args.length)


def cmd_simulate(args: argparse.Namespace) -> int:
    curve, cold = _curve(args)
    if args.from_manifest:
        config = current_config()
    else:
        config = kpa.KpaConfig(
            container_concurrency=args.cc, target=args.target, utilization=args.utilization,
            min_scale=args.min_scale, max_scale=args.max_scale,
            initial_scale=args.initial_scale, scale_down_delay_s=args.delay,
            retention_s=args.retention)
    load = _trace(args)
    result = kpa.simulate(config, curve, load, cold, workers=args.workers)
    path = Path(args.out) / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"summary": result.summary, "series": result.series}) + "\n")
    plots.simulation_plot(path.with_suffix(".png"), result.series,
                          f"KPA simulation: {load.name} trace")
    print(path)
    print(json.dumps(result.summary, indent=2))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    curve, cold = _curve(args)
    outcome = tune(curve, _trace(args), cold, args.slo_ms, workers=args.workers)
    path = Path(args.out) / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(outcome, indent=2) + "\n")
    print(explain(outcome))
    if outcome["best"]:
        print("\n# add to knative/overlays/<env>/kustomization.yaml\n"
              + patch(outcome["best"]["config"]))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from loadtest.validate import validate

    with _target(args) as (url, _):
        out = validate(url, _texts(args), Path(args.curve) if args.curve else None,
                       [float(x) for x in args.loads.split(",")], args.seconds, args.workers)
    path = Path(args.out) / f"{args.name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(path)
    for row in out["loads"]:
        print(f"  {row['offered_rps']:7.1f} req/s offered: measured {row['measured']['rps']:7.1f}"
              f" req/s p99 {row['measured']['p99_ms']:7.1f} ms | simulated "
              f"{row['simulated']['throughput_rps']:7.1f} req/s p99 "
              f"{row['simulated']['p99_ms']:7.1f} ms | errors {row['error']}"
              f"{'' if row['trusted'] else ' | UNTRUSTED (see below)'}")
    if not all(row["trusted"] for row in out["loads"]):
        print("  UNTRUSTED rows: the server fell short of the offered load, or its capacity "
              "changed during the run: the curve does not describe it")
    if abs(out["capacity_drift"]) > 0.1:
        print(f"  capacity drifted {out['capacity_drift']:+.0%} during the run "
              f"({out['capacity_rps']:.1f} -> {out['capacity_after_rps']:.1f} req/s): the "
              "machine's speed changed (other work?); rerun on a quiet machine")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subcommand per load-test task."""
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_sweep, _add_simulate, _add_tune, _add_validate):
        add(sub)
    return parser


# What add_subparsers returns.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _common(p: argparse.ArgumentParser, name: str, target: bool = True) -> None:
    """Output options, and (target) the service under load and its traffic."""
    p.add_argument("--out", default="bench-results/loadtest",
                   help="directory for the JSON, CSV and PNG results")
    p.add_argument("--name", default=name, help="file name stem of the results")
    p.add_argument("--seed", type=int, default=1, help="random seed (texts, arrivals)")
    if target:
        p.add_argument("--url", help="base URL of a running service")
        p.add_argument("--start-server", action="store_true",
                       help="start one `surgeserve serve` here (its cold start is measured)")
        p.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE",
                       help="settings for the started server, e.g. SURGE_CACHE=off")
        p.add_argument("--corpus-size", type=int, default=None,
                       help="distinct texts to draw from (default: the whole corpus)")
        p.add_argument("--zipf", type=float, default=1.2,
                       help="Zipf exponent of text popularity (higher: more repeats)")
        p.add_argument("--hit-rate", type=float, default=None,
                       help="instead of Zipf: repeat a sent text with this probability")


def _pod(p: argparse.ArgumentParser) -> None:
    """The simulated pod."""
    p.add_argument("--workers", type=int, default=2,
                   help="model threads per pod (SURGE_WORKERS; default one per CPU: the "
                        "predictor's 2)")


def _curve_and_trace(p: argparse.ArgumentParser) -> None:
    """The measured curve and the traffic trace a simulation runs."""
    p.add_argument("--curve", required=True,
                   help="a capacity curve: a sweep's JSON, or the --summary-export JSON of "
                        "loadtest/k6/script.js run with MODE=sweep")
    p.add_argument("--cold-start", type=float, default=None,
                   help="seconds from pod start to ready (default: the sweep's measure)")
    p.add_argument("--trace", default="spike",
                   choices=["constant", "diurnal", "spike", "onoff"],
                   help="traffic shape over time")
    p.add_argument("--seconds", type=float, default=900, help="length of the trace")
    p.add_argument("--rate", type=float, default=300, help="peak requests/s")
    p.add_argument("--low", type=float, default=30, help="base requests/s")
    p.add_argument("--period", type=float, default=600,
                   help="seconds per cycle (diurnal, onoff)")
    p.add_argument("--at", type=float, default=300, help="spike start, seconds")
    p.add_argument("--length", type=float, default=60,
                   help="seconds at the peak (spike, onoff)")


def _add_run(sub: Subcommands) -> None:
    p = sub.add_parser("run", help="one load run: JSON, CSV, PNG plots")
    _common(p, "run")
    p.add_argument("--mode", choices=["closed", "open"], default="closed",
                   help="closed: virtual users; open: Poisson arrivals at a rate")
    p.add_argument("--stages", help='e.g. "10s:8,30s:8,5s:32,10s:0" (VUs or req/s)')
    p.add_argument("--shape", default="ramp", choices=["ramp", "steady", "spike", "ramp-down"],
                   help="stages by name, scaled by --peak and --duration")
    p.add_argument("--peak", type=float, default=16, help="peak VUs (closed) or req/s (open)")
    p.add_argument("--duration", type=float, default=60, help="seconds, for --shape")
    p.add_argument("--bulk-fraction", type=float, default=0.0,
                   help="share of requests sent to /v1/bulk-predict")
    p.add_argument("--bulk-size", type=int, default=16, help="texts per bulk request")
    p.set_defaults(func=cmd_run)


def _add_sweep(sub: Subcommands) -> None:
    p = sub.add_parser("sweep", help="capacity curve of one instance")
    _common(p, "sweep")
    p.add_argument("--levels", default="1,2,4,8,16,32,64",
                   help="in-flight requests to measure, comma-separated")
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=2,
                   help="seconds per level run first and discarded")
    p.add_argument("--slo-ms", type=float, default=250,
                   help="p99 objective: the largest level within it is reported")
    p.set_defaults(func=cmd_sweep, hit_rate=0.0)


def _add_simulate(sub: Subcommands) -> None:
    p = sub.add_parser("simulate", help="Knative KPA simulation for a trace")
    _common(p, "simulate", target=False)
    _curve_and_trace(p)
    _pod(p)
    p.add_argument("--from-manifest", action="store_true",
                   help="the settings in knative/base/predictor.yaml")
    p.add_argument("--cc", type=int, default=32,
                   help="containerConcurrency, the hard limit per pod (0: none)")
    p.add_argument("--target", type=float, default=None,
                   help="autoscaling.knative.dev/target, the soft target (default: --cc)")
    p.add_argument("--utilization", type=float, default=0.7,
                   help="target-utilization-percentage / 100")
    p.add_argument("--min-scale", type=int, default=0, help="fewest pods")
    p.add_argument("--max-scale", type=int, default=0, help="most pods (0: unbounded)")
    p.add_argument("--initial-scale", type=int, default=1, help="pods at the start")
    p.add_argument("--delay", type=float, default=0, help="scale-down delay, seconds")
    p.add_argument("--retention", type=float, default=0,
                   help="scale-to-zero-pod-retention-period, seconds")
    p.set_defaults(func=cmd_simulate)


def _add_tune(sub: Subcommands) -> None:
    p = sub.add_parser("tune", help="cheapest Knative settings meeting an SLO; a patch")
    _common(p, "tune", target=False)
    _curve_and_trace(p)
    _pod(p)
    p.add_argument("--slo-ms", type=float, default=250, help="p99 objective, milliseconds")
    p.set_defaults(func=cmd_tune)


def _add_validate(sub: Subcommands) -> None:
    p = sub.add_parser("validate", help="simulated vs measured, one instance, open loop")
    _common(p, "validate")
    _pod(p)
    p.add_argument("--curve", help="a sweep's JSON or a k6 sweep summary (default: sweep "
                                    "first)")
    p.add_argument("--loads", default="0.3,0.6,0.9", help="fractions of capacity")
    p.add_argument("--seconds", type=float, default=20, help="measured seconds per load")
    p.set_defaults(func=cmd_validate, hit_rate=0.0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""The `surgeserve` command: serve, up, worker, drift, keys, model build|compile|info.

The benchmark baselines (the naive server, raw model throughput) are in loadtest/:
`python -m loadtest.naive`, `python -m loadtest.rawbench`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TypeAlias

# sysexits' EX_CONFIG (= online.server.EXIT_UNSERVABLE): not servable, or not buildable, here.
EXIT_CONFIG = 78


def _without_build_tools(command: str) -> bool:
    """True (after saying so) where torch or transformers is missing: the runtime image."""
    from common.engines.torch import available

    if available():
        return False
    print(f"surgeserve model {command} needs the build tools (torch, transformers, onnx): "
          "`pip install 'surgeserve[build]'`, or run it in the surgeserve-toolchain image",
          file=sys.stderr)
    return True


def _cmd_model_build(args: argparse.Namespace) -> int:
    from common.settings import Settings
    from common.training import TrainConfig, build, default_model_dir, ensure_compiled

    if _without_build_tools("build"):
        return EXIT_CONFIG
    home = Settings().model_home
    config = TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, limit=args.limit)
    target = Path(args.output) if args.output else default_model_dir(config, home)
    if (target / "surgeserve.json").is_file() and not args.force:
        print(f"model already built: {target}  (--force rebuilds)", file=sys.stderr)
    else:
        print(f"building {target} (2 cores: about 6 minutes, once)", file=sys.stderr)
        build(config, target, progress=not args.no_progress)
        manifest = json.loads((target / "surgeserve.json").read_text())
        print(f"held-out accuracy {manifest['metrics']['heldout_accuracy']:.4f}, "
              f"built in {manifest['build_seconds']} s", file=sys.stderr)
    print("compiling and measuring the engines on this CPU ...", file=sys.stderr)
    compiled = ensure_compiled(target, home)
    print(f"compiled (fast start): {compiled or 'no: serving uses transformers'}",
          file=sys.stderr)
    print(target)
    return 0


def _cmd_model_compile(args: argparse.Namespace) -> int:
    from common.chooser import measure
    from common.compiled import compile_model, read_meta
    from common.settings import Settings
    from common.training import default_model_dir

    if _without_build_tools("compile"):
        return EXIT_CONFIG
    home = Settings().model_home
    path = Path(args.path) if args.path else default_model_dir(home=home)
    try:
        where = compile_model(path, home=home)
    except ValueError as exc:
        print(f"not compiled: {exc}", file=sys.stderr)
        return 1
    meta = read_meta(where)
    assert meta is not None
    print(f"measuring the engines on this CPU (accuracy guard: {where}) ...", file=sys.stderr)
    record = measure(where, meta, full=True)
    print(_choice_table(record), file=sys.stderr)
    print(where)
    return 0


def _choice_table(record: dict[str, Any]) -> str:
    """The chooser's record as lines a person reads."""
    cpu = record["cpu"]
    lines = [f"CPU: {cpu['model']}, {cpu['cpus']} usable, flags {' '.join(cpu['flags'])}",
             f"guard: {record['guard']['source']}, {record['guard']['texts']} texts, fp32 "
             f"accuracy {record['guard']['fp32_accuracy']}"]
    for c in record["candidates"]:
        lines.append(f"  {c['label']:<22} {c['texts_per_s']:>7.1f} texts/s  "
                     f"accuracy {c['accuracy']}  agreement {c['agreement']}  {c['reason']}")
    winner = record["winner"]
    lines.append(f"chosen: {winner['engine']} {winner['precision']} {winner['streams']}x"
                 f"{winner['threads']} ({record['winner_texts_per_s']} texts/s; ONNX Runtime "
                 f"fp32 {record['baseline_texts_per_s']})")
    return "\n".join(lines)


def _cmd_model_info(args: argparse.Namespace) -> int:
    from common.loader import load_configured
    from common.settings import Settings

    bundle = load_configured(Settings(), Path(args.path) if args.path else None)
    print(json.dumps(bundle.info() | {"manifest": bundle.manifest}, indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from online.server import serve

    return serve()


def _cmd_worker(args: argparse.Namespace) -> int:
    from batch.celery_app import run_worker

    return run_worker()


def _cmd_drift(args: argparse.Namespace) -> int:
    from online.drift import serve_drift

    return serve_drift(args.port, args.host, window_s=args.window_s,
                       reference_s=args.reference_s, min_count=args.min_count)


def _client_cli(argv: list[str]) -> int:
    """`surgeserve submit ...` and `surgeserve job ...`: the client package's command line
    (surgeserve_client.cli, the `ssc` command), so there is one implementation."""
    from surgeserve_client.cli import main as client_main

    return client_main(argv, prog="surgeserve")


def _cmd_keys_new(args: argparse.Namespace) -> int:
    from common.auth import hash_key, new_key

    key = new_key()
    print(f"key (give it to the client; it is not stored anywhere): {key}")
    print(f"SURGE_API_KEYS entry (add it, comma-separated):        {args.name}:{hash_key(key)}")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from online.stack import up

    return up(api_port=args.port, scrape_interval_s=args.scrape_interval or None)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public for tests and docs)."""
    parser = argparse.ArgumentParser(prog="surgeserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serving(sub)
    _add_drift(sub)
    # Delegated whole to the client's command line (see main): listed here for --help.
    sub.add_parser("submit", add_help=False,
                   help="submit a txt / csv / jsonl file as bulk job(s) (= `ssc submit`)")
    sub.add_parser("job", add_help=False,
                   help="status|wait|results|cancel|list of jobs (= `ssc ...`)")
    _add_up(sub)
    keys = sub.add_parser("keys", help="API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    knew = ksub.add_parser("new", help="make a key: prints it and its SURGE_API_KEYS entry")
    knew.add_argument("name", help="who the key is for (jobs belong to it)")
    knew.set_defaults(func=_cmd_keys_new)
    _add_model(sub)
    return parser


# What add_subparsers returns.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_serving(sub: Subcommands) -> None:
    serve = sub.add_parser("serve", help="run the online API (settings from SURGE_* env)")
    serve.set_defaults(func=_cmd_serve)
    worker = sub.add_parser("worker", help="a Celery worker for bulk jobs (SURGE_REDIS_URL)")
    worker.set_defaults(func=_cmd_worker)


def _add_drift(sub: Subcommands) -> None:
    drift = sub.add_parser("drift", help="drift consumer: a sink for prediction events that "
                           "exports each model version's label mix and its drift")
    drift.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")),
                       help="listen port (default $PORT or 8080)")
    drift.add_argument("--host", default="0.0.0.0")
    drift.add_argument("--window-s", type=float, default=600,
                       help="the current window (seconds)")
    drift.add_argument("--reference-s", type=float, default=3600,
                       help="the reference window, just before the current one (seconds)")
    drift.add_argument("--min-count", type=int, default=200,
                       help="predictions each window needs before a distance is exported")
    drift.set_defaults(func=_cmd_drift)


def _add_up(sub: Subcommands) -> None:
    up = sub.add_parser(
        "up", help="local stack: cache Redis, jobs Redis, API, worker, Prometheus; Ctrl-C stops")
    up.add_argument("--port", type=int, default=None, help="API port (default $PORT or 8080)")
    up.add_argument("--scrape-interval", type=float, default=15.0, metavar="SECONDS",
                    help="Prometheus scrape and rule interval (0: no Prometheus)")
    up.set_defaults(func=_cmd_up)


def _add_model(sub: Subcommands) -> None:
    model = sub.add_parser("model", help="build, compile or inspect a model bundle")
    msub = model.add_subparsers(dest="model_command", required=True)
    build = msub.add_parser("build", help="fine-tune the default model (cached; seeded)")
    build.add_argument("--output", help="directory (default: the cache dir keyed by settings)")
    build.add_argument("--epochs", type=int, default=2)
    build.add_argument("--lr", type=float, default=8e-5)
    build.add_argument("--seed", type=int, default=13)
    build.add_argument("--limit", type=int, default=None, help="train on N examples only")
    build.add_argument("--force", action="store_true")
    build.add_argument("--no-progress", action="store_true")
    build.set_defaults(func=_cmd_model_build)

    comp = msub.add_parser("compile", help="export + verify a model (fast cold start), then "
                                           "measure the engines on this CPU and record the "
                                           "fastest that passes the accuracy guard")
    comp.add_argument("path", nargs="?", help="model directory (default: the default bundle)")
    comp.set_defaults(func=_cmd_model_compile)

    info = msub.add_parser("info", help="print a bundle's identity, engine (as the settings "
                                       "choose it) and manifest")
    info.add_argument("path", nargs="?", help="model directory (default: the default bundle)")
    info.set_defaults(func=_cmd_model_info)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "submit":
        return _client_cli(argv)
    if argv and argv[0] == "job":
        return _client_cli(argv[1:])
    args = build_parser().parse_args(argv)
    from common.errors import ModelNotFound

    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except ModelNotFound as exc:  # `worker`, `model info`: configuration, not a crash
        hint = exc.detail.get("hint") if isinstance(exc.detail, dict) else None
        print(f"surgeserve: {exc.message}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())

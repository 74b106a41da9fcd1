"""`python -m loadtest.rawbench`: raw in-process batched model throughput, the ceiling for the
service (in process: the one benchmark besides loadtest.naive that loads the model itself).

Default: the engine the server would serve (same settings, streams and pass rule), over
arrival-order batches of --batch-size (or the whole set sorted, --sorted: the jobs path's
ceiling). --candidates: every engine candidate the chooser knows on this CPU, both ways,
interleaved over --rounds, with the guard's verdict recorded at compile. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common.bundle import ModelBundle, serving_batching
from common.corpus import snippets
from common.settings import Settings


def measure(texts: list[str], batch_size: int, path: Path | None, settings: Settings,
            whole_sorted: bool = False) -> dict[str, Any]:
    """Texts per second of bundle.predict with the service's engine, streams and pass rule:
    arrival-order batches of `batch_size`, or (`whole_sorted`) the set sorted as a whole and
    its passes run on every stream, as a job chunk runs."""
    from common.loader import load_configured

    bundle = load_configured(settings, path)
    streams = settings.model_workers or bundle.streams
    seconds = _timed(bundle, texts, batch_size, streams, settings, whole_sorted)
    return {"texts": len(texts), "batch_size": batch_size, "sorted": whole_sorted,
            "engine": bundle.engine.kind, "precision": bundle.precision, "workers": streams,
            "seconds": round(seconds, 3), "texts_per_s": round(len(texts) / seconds, 2)}


def _timed(bundle: ModelBundle, texts: list[str], batch_size: int, streams: int,
           settings: Settings, whole_sorted: bool) -> float:
    cut = serving_batching(bundle, settings, whole=whole_sorted)
    batches = [texts[start : start + batch_size] for start in range(0, len(texts), batch_size)]

    def run(batch: list[str]) -> None:
        bundle.predict(batch, max_forward_batch=batch_size,
                       max_forward_tokens=cut.max_forward_tokens, max_padding=cut.max_padding)

    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:  # the service's worker layout
        if whole_sorted:  # as a job chunk runs: one sort, the passes on every stream
            bundle.predict(texts, cut.max_batch, cut.max_forward_tokens, cut.max_padding,
                           streams=pool)
        else:
            list(pool.map(run, batches))
    return time.perf_counter() - started


def candidates(texts: list[str], batch_size: int, path: Path | None, rounds: int,
               ) -> dict[str, Any]:
    """Every candidate on this CPU, arrival-order batches and whole set sorted, interleaved;
    best of `rounds` each. The guard's verdicts come from the record made at compile."""
    from common.chooser import candidates as specs_for
    from common.chooser import cpu_info, recorded, run_texts
    from common.compiled import compiled_dir, read_meta
    from common.engines import open_engine
    from common.identity import weights_hash
    from common.settings import usable_cpus
    from common.training import default_model_dir

    artifact = compiled_dir(weights_hash(Path(path or default_model_dir())))
    meta = read_meta(artifact)
    if meta is None:
        raise SystemExit(f"no compiled artifact in {artifact}: run `surgeserve model compile`")
    record = recorded(artifact) or {}
    verdicts = {c["label"]: c for c in record.get("candidates", [])}
    rows: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for spec in specs_for(usable_cpus(), full=True):
            row = rows.setdefault(spec.label, {"spec": spec.as_dict(), "arrival": 0.0,
                                               "sorted": 0.0})
            try:
                engine = open_engine(spec, artifact, meta, 128)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:200]
                continue
            cut = engine.batching.overridden(max_batch=batch_size)
            run_texts(engine, texts[:64], spec.streams, cut)  # warm-up
            for way in ("arrival", "sorted"):
                _, timing = run_texts(engine, texts, spec.streams, cut,
                                      whole_sorted=way == "sorted")
                row[way] = round(max(row[way], timing.wall_rate), 1)
                cpu_key = f"{way}_cpu_based"
                row[cpu_key] = round(max(row.get(cpu_key, 0.0),
                                         timing.rate(spec.streams * spec.threads)), 1)
            engine = None  # type: ignore[assignment]  # before the next one opens
            verdict = verdicts.get(spec.label, {})
            row |= {"batching": dataclasses.asdict(cut), "passed": verdict.get("passed"),
                    "guard": verdict.get("reason", "not measured at compile on this CPU"),
                    "accuracy": verdict.get("accuracy"), "agreement": verdict.get("agreement")}
    passing = [r for r in rows.values() if r.get("passed") and "error" not in r]
    best = max(passing, key=lambda r: r["arrival"], default=None)
    return {"cpu": cpu_info(), "texts": len(texts), "batch_size": batch_size,
            "rounds": rounds, "candidates": rows,
            "fp32_accuracy": (record.get("guard") or {}).get("fp32_accuracy"),
            "best": best and {"label": next(k for k, v in rows.items() if v is best),
                              "arrival": best["arrival"], "sorted": best["sorted"]}}


def build_parser() -> argparse.ArgumentParser:
    """Its arguments (the settings come from SURGE_* as the server's do)."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.rawbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--path", default=None, help="model directory (default: the default "
                                                     "bundle)")
    parser.add_argument("--sorted", action="store_true",
                        help="the whole set sorted (a job chunk's ceiling), not arrival order")
    parser.add_argument("--candidates", action="store_true",
                        help="every engine candidate on this CPU, both ways")
    parser.add_argument("--rounds", type=int, default=2, help="with --candidates: best of N")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry: `python -m loadtest.rawbench` (prints one JSON object)."""
    args = build_parser().parse_args(argv)
    settings = Settings()
    path = Path(args.path) if args.path else None
    texts = snippets(args.texts)
    if args.candidates:
        result = candidates(texts, args.batch_size, path, args.rounds)
    else:
        result = measure(texts, args.batch_size, path, settings, args.sorted)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

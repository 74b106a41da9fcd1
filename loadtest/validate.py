"""The simulator against reality on one instance: open-loop (Poisson) runs at fractions of
the measured capacity, and the simulation of the same load on one pod from the same capacity
curve; the relative error of throughput and p99.

A comparison is only as good as the curve: on a machine whose speed changes during the run
(other work on the same CPUs) the curve no longer describes the server. So the capacity level
is measured again after the loads, and a load whose measured throughput fell short of the
offered rate, or a run whose capacity drifted, is marked untrusted."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.curve import Curve
from loadtest.k6summary import read_curve
from loadtest.kpa import KpaConfig, simulate, trace
from loadtest.run import RunConfig, TextSource, constant, run
from loadtest.stats import summary
from loadtest.sweep import LEVELS, measure_level, sweep

WARMUP_S = 3.0


DRIFT_LIMIT = 0.10  # capacity change between the curve and the end of the run
SHORTFALL_LIMIT = 0.05  # measured throughput under the offered rate


def validate(url: str, texts: TextSource, curve_path: Path | None,
             loads: Sequence[float] = (0.3, 0.6, 0.9), seconds: float = 20,
             workers: int = 2) -> dict[str, Any]:
    """Measured vs simulated at each load (a fraction of the curve's capacity)."""
    data = read_curve(curve_path) if curve_path else sweep(url, texts, LEVELS, seconds=8,
                                                            warmup=2)
    curve = Curve(data["curve"])
    one_pod = KpaConfig(container_concurrency=0, min_scale=1, max_scale=1, initial_scale=1)
    rows: list[dict[str, Any]] = []
    for fraction in loads:
        rate = fraction * curve.capacity
        result = run(RunConfig(url=url, stages=list(constant(rate, WARMUP_S + seconds)),
                               texts=texts, mode="open", progress=False))
        kept = [s for s in result.samples if s.start >= WARMUP_S]
        measured = summary(kept, seconds)
        simulated = simulate(one_pod, curve, trace("constant", seconds, rate), 0.0,
                             dt=0.02, workers=workers).summary
        rows.append({"fraction": fraction, "offered_rps": round(rate, 1),
                     "measured": measured, "simulated": simulated,
                     "error": {"throughput": _relative(simulated["throughput_rps"],
                                                       measured["rps"]),
                               "p99": _relative(simulated["p99_ms"], measured["p99_ms"])}})
    best = max(data["curve"], key=lambda p: p["rps"])
    after = measure_level(url, texts, int(best["concurrency"]), seconds=min(8.0, seconds),
                          warmup=min(2.0, seconds / 4))
    drift = _relative(after["rps"], best["rps"]) or 0.0
    for row in rows:
        shortfall = 1 - row["measured"]["rps"] / row["offered_rps"]
        row["trusted"] = abs(drift) <= DRIFT_LIMIT and shortfall <= SHORTFALL_LIMIT
    return {"curve": data["curve"], "capacity_rps": curve.capacity, "loads": rows,
            "capacity_after_rps": after["rps"], "capacity_drift": drift}


def _relative(simulated: float, measured: float) -> float | None:
    if not measured:
        return None
    return round((simulated - measured) / measured, 3)

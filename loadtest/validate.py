"""The simulator against reality on one instance: open-loop (Poisson) runs at fractions of
the measured capacity, and the simulation of the same load on one pod from the same capacity
curve; the relative error of throughput and p99."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.curve import Curve
from loadtest.k6summary import read_curve
from loadtest.kpa import KpaConfig, simulate, trace
from loadtest.run import RunConfig, TextSource, constant, run
from loadtest.stats import summary
from loadtest.sweep import LEVELS, sweep

WARMUP_S = 3.0


def validate(url: str, texts: TextSource, curve_path: Path | None,
             loads: Sequence[float] = (0.3, 0.6, 0.9), seconds: float = 20,
             ) -> dict[str, Any]:
    """Measured vs simulated at each load (a fraction of the curve's capacity)."""
    data = read_curve(curve_path) if curve_path else sweep(url, texts, LEVELS, seconds=8,
                                                            warmup=2)
    curve = Curve(data["curve"])
    one_pod = KpaConfig(container_concurrency=0, min_scale=1, max_scale=1, initial_scale=1)
    rows = []
    for fraction in loads:
        rate = fraction * curve.capacity
        result = run(RunConfig(url=url, stages=list(constant(rate, WARMUP_S + seconds)),
                               texts=texts, mode="open", progress=False))
        kept = [s for s in result.samples if s.start >= WARMUP_S]
        measured = summary(kept, seconds)
        simulated = simulate(one_pod, curve, trace("constant", seconds, rate), 0.0,
                             dt=0.02).summary
        rows.append({"fraction": fraction, "offered_rps": round(rate, 1),
                     "measured": measured, "simulated": simulated,
                     "error": {"throughput": _relative(simulated["throughput_rps"],
                                                       measured["rps"]),
                               "p99": _relative(simulated["p99_ms"], measured["p99_ms"])}})
    return {"curve": data["curve"], "capacity_rps": curve.capacity, "loads": rows}


def _relative(simulated: float, measured: float) -> float | None:
    if not measured:
        return None
    return round((simulated - measured) / measured, 3)

"""Capacity sweep: closed-loop runs at rising concurrency against one instance -> throughput
and p50/p99 per level, the knee, and the largest concurrency that keeps p99 under an SLO."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loadtest.run import RunConfig, TextSource, constant, run
from loadtest.stats import summary

LEVELS = (1, 2, 4, 8, 16, 32, 64)


def measure_level(url: str, texts: TextSource, concurrency: int, seconds: float,
                  warmup: float, progress: bool = False) -> dict[str, Any]:
    """One level: `warmup` seconds discarded, then `seconds` measured."""
    result = run(RunConfig(url=url, stages=list(constant(concurrency, warmup + seconds)),
                           texts=texts, progress=progress))
    kept = [s for s in result.samples if s.start >= warmup]
    point = summary(kept, result.seconds - warmup)
    return {"concurrency": concurrency} | {k: point[k] for k in (
        "rps", "p50_ms", "p90_ms", "p99_ms", "errors", "requests", "cache_hit_ratio")}


def knee(curve: Sequence[dict[str, Any]]) -> int | None:
    """The level with the most "power" (Kleinrock: throughput / median latency): below it more
    in flight buys throughput cheaply, past it mostly latency. Unlike "the first level within
    x% of the best throughput" it does not jump with noise on a flat top."""
    if not curve:
        return None
    return int(max(curve, key=lambda p: p["rps"] / max(p["p50_ms"], 1e-6))["concurrency"])


def max_under_slo(curve: Sequence[dict[str, Any]], slo_p99_ms: float) -> int | None:
    """The largest concurrency whose p99 is within the SLO with no errors (None if none)."""
    good = [p["concurrency"] for p in curve
            if p["p99_ms"] <= slo_p99_ms and not p["errors"]]
    return max(good) if good else None


def sweep(url: str, texts: TextSource, levels: Sequence[int] = LEVELS, seconds: float = 10,
          warmup: float = 2, slo_p99_ms: float = 250, progress: bool = True,
          ) -> dict[str, Any]:
    """The capacity curve and what it says."""
    curve = []
    for level in levels:
        point = measure_level(url, texts, level, seconds, warmup)
        curve.append(point)
        if progress:
            print(f"  {level:4d} in flight: {point['rps']:8.1f} req/s  p50 {point['p50_ms']:8.1f}"
                  f" ms  p99 {point['p99_ms']:8.1f} ms  errors {sum(point['errors'].values())}",
                  flush=True)
    return {"curve": curve, "knee": knee(curve), "slo_p99_ms": slo_p99_ms,
            "max_concurrency_under_slo": max_under_slo(curve, slo_p99_ms),
            "capacity_rps": max(p["rps"] for p in curve)}

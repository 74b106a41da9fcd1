"""A measured capacity curve (req/s and p50/p99 against in-flight requests), interpolated and
inverted, and the Poisson quantile the simulator uses for in-flight fluctuation."""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from typing import Any


@functools.lru_cache(maxsize=4096)
def _poisson_quantile(mean_centi: int, q: float) -> int:
    mean = mean_centi / 100
    k, term = 0, math.exp(-mean)
    total = term
    while total < q and k < 10_000:
        k += 1
        term *= mean / k
        total += term
    return k


def poisson_quantile(mean: float, q: float) -> float:
    """The smallest k with P(Poisson(mean) <= k) >= q (mean rounded to 0.01); 0 for 0."""
    if mean <= 0:
        return 0.0
    return float(_poisson_quantile(round(mean * 100), q))


class Curve:
    """A measured capacity curve (req/s, p50/p99 ms against concurrency), interpolated."""

    def __init__(self, points: Sequence[dict[str, Any]]):
        ordered = sorted(points, key=lambda p: p["concurrency"])
        if not ordered:
            raise ValueError("empty capacity curve")
        self.c = [float(p["concurrency"]) for p in ordered]
        self.rps = [float(p["rps"]) for p in ordered]
        self.p50 = [float(p["p50_ms"]) / 1000 for p in ordered]
        self.p99 = [float(p["p99_ms"]) / 1000 for p in ordered]
        self.capacity = max(self.rps)

    def _at(self, values: list[float], c: float) -> float:
        if c <= self.c[0]:
            return values[0]
        i = bisect.bisect_left(self.c, c)
        if i >= len(self.c):
            return values[-1]
        lo, hi = self.c[i - 1], self.c[i]
        return values[i - 1] + (values[i] - values[i - 1]) * (c - lo) / (hi - lo)

    def throughput(self, c: float) -> float:
        """Requests/s one pod completes with `c` in flight (below 1: busy a fraction)."""
        if c <= 0:
            return 0.0
        if c < self.c[0]:
            return self.rps[0] * c / self.c[0]
        return min(self.capacity, self._at(self.rps, c)) if c > self.c[-1] else self._at(
            self.rps, c)

    def best(self, limit: float = math.inf) -> tuple[float, float]:
        """(concurrency, req/s) of the highest throughput at or below `limit` in flight."""
        points = [(c, r) for c, r in zip(self.c, self.rps, strict=True) if c <= limit]
        if not points:  # a limit below the first measured level
            return limit, self.throughput(limit)
        c, r = max(points, key=lambda p: p[1])
        return c, r

    def concurrency_for(self, rate: float, limit: float = math.inf) -> float:
        """The per-pod concurrency at which the curve serves `rate` req/s (the first
        crossing; the best point under `limit` when the rate is beyond it)."""
        top_c, top_r = self.best(limit)
        if rate >= top_r:
            return top_c
        if rate <= self.rps[0]:
            return self.c[0] * rate / self.rps[0]
        for i in range(1, len(self.c)):
            lo, hi = self.rps[i - 1], self.rps[i]
            if lo <= rate <= hi and hi > lo:
                return self.c[i - 1] + (self.c[i] - self.c[i - 1]) * (rate - lo) / (hi - lo)
        return top_c

    def p99_s(self, c: float) -> float:
        """p99 latency at `c` in flight; beyond the curve it grows as Little's law says."""
        return self._latency(self.p99, c)

    def p50_s(self, c: float) -> float:
        """Median latency at `c` in flight."""
        return self._latency(self.p50, c)

    def _latency(self, values: list[float], c: float) -> float:
        if c > self.c[-1]:
            return values[-1] * c / self.c[-1]
        return self._at(values, max(c, self.c[0]))

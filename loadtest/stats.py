"""Percentiles and per-second time series of a load run."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

QUANTILES = (0.5, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Sample:
    """One request as the load generator saw it."""

    start: float  # seconds since the run began (the scheduled time, for open loop)
    latency: float  # seconds
    status: int  # HTTP status; 0 = connection error
    route: str
    items: int  # texts in the request
    cached: int  # of which the service answered from its cache


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation between closest ranks (numpy's default);
    NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_ms(latencies: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99 in milliseconds."""
    return {f"p{round(q * 100)}_ms": round(percentile(latencies, q) * 1000, 2)
            for q in QUANTILES}


def summary(samples: Sequence[Sample], seconds: float) -> dict[str, Any]:
    """Requests/s, latency percentiles of the successful requests, errors by status and the
    observed cache-hit ratio (items answered from the cache / items answered)."""
    ok = [s for s in samples if 200 <= s.status < 300]
    errors: dict[str, int] = {}
    for s in samples:
        if not 200 <= s.status < 300:
            errors[str(s.status)] = errors.get(str(s.status), 0) + 1
    items = sum(s.items for s in ok)
    return {"requests": len(samples), "ok": len(ok), "seconds": round(seconds, 3),
            "rps": round(len(ok) / seconds, 2) if seconds > 0 else 0.0,
            "items_per_s": round(items / seconds, 2) if seconds > 0 else 0.0,
            **latency_ms([s.latency for s in ok]), "errors": errors,
            "cache_hit_ratio": round(sum(s.cached for s in ok) / items, 4) if items else None}


def per_second(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """One row per second of the run: requests, errors, p50/p99 and the hit ratio of the
    requests that started in it, and the hit ratio so far (the cache warming up)."""
    buckets: dict[int, list[Sample]] = {}
    for s in samples:
        buckets.setdefault(int(s.start), []).append(s)
    rows, hits, items = [], 0, 0
    for second in range(max(buckets, default=-1) + 1):
        group = buckets.get(second, [])
        ok = [s for s in group if 200 <= s.status < 300]
        lat = [s.latency for s in ok]
        got, asked = sum(s.cached for s in ok), sum(s.items for s in ok)
        hits, items = hits + got, items + asked
        rows.append({"second": second, "requests": len(group), "ok": len(ok),
                     "errors": len(group) - len(ok),
                     "p50_ms": round(percentile(lat, 0.5) * 1000, 2),
                     "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
                     "hit_ratio": round(got / asked, 4) if asked else None,
                     "hit_ratio_so_far": round(hits / items, 4) if items else None})
    return rows

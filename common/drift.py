"""Label drift: the label mix of each model version over a sliding window, compared with the
reference window just before it by total variation distance. Pure bookkeeping: the drift
consumer (`surgeserve drift`, online/drift.py) feeds it prediction events and exports it.

Windows are made of time buckets (a twentieth of the window each), so memory is bounded by
series x buckets x labels whatever the traffic, and a scrape sums a few dozen counters.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

BUCKETS_PER_WINDOW = 20
OTHER = "other"  # labels past max_labels of a series are counted under this one


@dataclass(frozen=True)
class DriftRow:
    """One model version's windows: label counts now and before, and how far apart they are
    (None while either window holds fewer than min_count predictions: too few to judge)."""

    model: str
    version: str
    current: dict[str, int]
    reference: dict[str, int]
    distance: float | None


def total_variation(a: Mapping[str, int], b: Mapping[str, int]) -> float:
    """Half the L1 distance between two label distributions given as counts (0: the same
    mix; 1: no label in common). The share of predictions that would have to change label."""
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return math.nan
    return 0.5 * sum(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in set(a) | set(b))


class _Series:
    def __init__(self) -> None:
        self.buckets: deque[tuple[int, Counter[str]]] = deque()
        self.labels: set[str] = set()


class LabelWindows:
    """Label counts per (model, version): the last `window_s` seconds against the
    `reference_s` seconds before them."""

    def __init__(self, window_s: float = 600.0, reference_s: float = 3600.0, *,
                 min_count: int = 200, max_series: int = 32, max_labels: int = 32,
                 clock: Callable[[], float] = time.monotonic):
        if window_s <= 0 or reference_s <= 0:
            raise ValueError("window and reference must be positive")
        self.bucket_s = window_s / BUCKETS_PER_WINDOW
        self.window = BUCKETS_PER_WINDOW
        self.reference = max(1, round(reference_s / self.bucket_s))
        self.min_count = min_count
        self.max_series = max_series
        self.max_labels = max_labels
        self.clock = clock
        self._series: OrderedDict[tuple[str, str], _Series] = OrderedDict()

    def add(self, model: str, version: str, labels: Iterable[str]) -> None:
        """Count predictions of one model version, now."""
        key = (model, version)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.max_series:  # the version not heard from longest
                self._series.popitem(last=False)
            series = self._series[key] = _Series()
        self._series.move_to_end(key)
        now = self._index()
        if not series.buckets or series.buckets[-1][0] != now:
            series.buckets.append((now, Counter()))
        bucket = series.buckets[-1][1]
        for label in labels:
            if label not in series.labels:
                if len(series.labels) >= self.max_labels:
                    label = OTHER
                series.labels.add(label)
            bucket[label] += 1
        self._evict(series, now)

    def rows(self) -> list[DriftRow]:
        """Every live series' windows and distance, as of now."""
        now = self._index()
        out = []
        for (model, version), series in list(self._series.items()):
            self._evict(series, now)
            if not series.buckets:
                del self._series[(model, version)]
                continue
            current: Counter[str] = Counter()
            reference: Counter[str] = Counter()
            for index, counts in series.buckets:
                (current if index > now - self.window else reference).update(counts)
            enough = min(sum(current.values()), sum(reference.values())) >= self.min_count
            distance = total_variation(current, reference) if enough else None
            out.append(DriftRow(model, version, dict(current), dict(reference), distance))
        return out

    def _index(self) -> int:
        return math.floor(self.clock() / self.bucket_s)

    def _evict(self, series: _Series, now: int) -> None:
        oldest = now - self.window - self.reference
        while series.buckets and series.buckets[0][0] <= oldest:
            series.buckets.popleft()

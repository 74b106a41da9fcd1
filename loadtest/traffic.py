"""What a load run sends: which text (Zipf law or a fixed cache-hit rate), which endpoint
(predict / bulk mix), and how much when (k6-like stages of virtual users or arrival rate)."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass


class ZipfTexts:
    """Draws texts with P(rank k) proportional to 1 / k**exponent over a fixed corpus; which
    text has which rank is a seeded shuffle, so popular texts are not the corpus's first."""

    def __init__(self, texts: Sequence[str], exponent: float = 1.2, seed: int = 1):
        if not texts:
            raise ValueError("no texts")
        if exponent <= 0:
            raise ValueError("the Zipf exponent must be > 0")
        self.rng = random.Random(seed)
        self.texts = list(texts)
        self.rng.shuffle(self.texts)
        weights = [1.0 / (k ** exponent) for k in range(1, len(self.texts) + 1)]
        self.cumulative = list(itertools.accumulate(weights))

    def probability(self, rank: int) -> float:
        """P(the text of this 1-based rank)."""
        previous = self.cumulative[rank - 2] if rank > 1 else 0.0
        return (self.cumulative[rank - 1] - previous) / self.cumulative[-1]

    def rank(self) -> int:
        """A 1-based rank drawn from the law."""
        point = self.rng.random() * self.cumulative[-1]
        return min(bisect.bisect_left(self.cumulative, point), len(self.texts) - 1) + 1

    def next(self) -> str:
        """The next text to send."""
        return self.texts[self.rank() - 1]


class HitRateTexts:
    """Repeats an already-sent text with probability `hit_rate`, else sends a new one: against
    a warm cache that keeps everything, the observed hit ratio converges to `hit_rate`."""

    def __init__(self, texts: Sequence[str], hit_rate: float, seed: int = 1):
        if not 0 <= hit_rate <= 1:
            raise ValueError("hit_rate is a fraction in [0, 1]")
        self.rng = random.Random(seed)
        self.fresh = list(texts)
        self.rng.shuffle(self.fresh)
        self.hit_rate = hit_rate
        self.sent: list[str] = []

    def next(self) -> str:
        """The next text to send."""
        if self.sent and (self.rng.random() < self.hit_rate or not self.fresh):
            return self.rng.choice(self.sent)
        text = self.fresh.pop()
        self.sent.append(text)
        return text


@dataclass(frozen=True)
class Stage:
    """Like a k6 stage: move linearly to `target` (virtual users, or requests/s in open loop)
    over `seconds`."""

    seconds: float
    target: float


def parse_stages(spec: str) -> list[Stage]:
    """`"10s:8,30s:8,5s:32,10s:0"` (duration:target, comma-separated) as stages."""
    stages = []
    for part in spec.split(","):
        duration, _, target = part.strip().partition(":")
        if not target:
            raise ValueError(f"stage {part!r}: expected DURATION:TARGET, e.g. 30s:16")
        stages.append(Stage(seconds_of(duration), float(target)))
    return stages


def seconds_of(text: str) -> float:
    """`"500ms"`, `"30s"`, `"2m"`, `"1h"` or a bare number of seconds."""
    text = text.strip()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def preset(name: str, peak: float, seconds: float = 60) -> list[Stage]:
    """Named shapes: ramp (up to peak, hold), steady (peak all along), spike (a quarter of
    peak with a short burst to peak), ramp-down (hold, then down to zero)."""
    t = seconds
    shapes = {
        "ramp": [Stage(t * 0.4, peak), Stage(t * 0.6, peak)],
        "steady": [Stage(0, peak), Stage(t, peak)],
        "spike": [Stage(0, peak / 4), Stage(t * 0.4, peak / 4), Stage(t * 0.02, peak),
                  Stage(t * 0.18, peak), Stage(t * 0.02, peak / 4), Stage(t * 0.38, peak / 4)],
        "ramp-down": [Stage(0, peak), Stage(t * 0.6, peak), Stage(t * 0.4, 0)],
    }
    if name not in shapes:
        raise ValueError(f"unknown shape {name!r}: one of {', '.join(shapes)}")
    return shapes[name]


def target_at(stages: Sequence[Stage], t: float, start: float = 0.0) -> float:
    """The target at `t` seconds: linear within a stage from the previous stage's target
    (from `start` before the first); the last target after the end."""
    previous = start
    for stage in stages:
        if t < stage.seconds:
            if stage.seconds <= 0:
                return stage.target
            return previous + (stage.target - previous) * (t / stage.seconds)
        t -= stage.seconds
        previous = stage.target
    return previous


def total_seconds(stages: Sequence[Stage]) -> float:
    """The length of a run with these stages."""
    return sum(s.seconds for s in stages)


@dataclass(frozen=True)
class Mix:
    """The endpoint mix: a request is a bulk call of `bulk_size` texts with probability
    `bulk_fraction`, else a single /v1/predict."""

    bulk_fraction: float = 0.0
    bulk_size: int = 16

    def __post_init__(self) -> None:
        if not 0 <= self.bulk_fraction <= 1 or self.bulk_size < 1:
            raise ValueError("bulk_fraction in [0, 1], bulk_size >= 1")

"""Traffic: Zipf sampling statistics, the fixed-hit-rate source, k6-like stage scheduling."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from loadtest.traffic import (
    HitRateTexts,
    Mix,
    Stage,
    ZipfTexts,
    parse_stages,
    preset,
    target_at,
    total_seconds,
)

TEXTS = [f"text {i}" for i in range(1000)]


def test_zipf_probabilities_follow_the_law() -> None:
    zipf = ZipfTexts(TEXTS, exponent=1.2)
    assert zipf.probability(1) / zipf.probability(2) == pytest.approx(2 ** 1.2)
    assert zipf.probability(10) / zipf.probability(100) == pytest.approx(10 ** 1.2)
    assert sum(zipf.probability(k) for k in range(1, len(TEXTS) + 1)) == pytest.approx(1.0)


def test_zipf_draws_match_the_probabilities() -> None:
    zipf = ZipfTexts(TEXTS, exponent=1.2, seed=3)
    n = 40_000
    counts = Counter(zipf.rank() for _ in range(n))
    for rank in (1, 2, 5, 20):
        p = zipf.probability(rank)
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[rank] - n * p) < 4 * sigma, (rank, counts[rank], n * p)
    assert counts[1] > counts[2] > counts[5] > counts[20]
    # the most popular text is a seeded choice, not the corpus's first
    assert ZipfTexts(TEXTS, seed=3).texts == zipf.texts
    assert ZipfTexts(TEXTS, seed=4).texts != zipf.texts


def test_zipf_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        ZipfTexts([], 1.2)
    with pytest.raises(ValueError):
        ZipfTexts(TEXTS, 0)


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.9])
def test_hit_rate_source_repeats_at_the_rate(rate: float) -> None:
    source = HitRateTexts([f"unique {i}" for i in range(20_000)], hit_rate=rate, seed=2)
    seen: set[str] = set()
    repeats = 0
    n = 5000
    for _ in range(n):
        text = source.next()
        repeats += text in seen
        seen.add(text)
    assert repeats / n == pytest.approx(rate, abs=0.03)


def test_stages_parse_and_interpolate_like_k6() -> None:
    stages = parse_stages("10s:8, 30s:8, 5s:32, 500ms:0")
    assert stages == [Stage(10, 8), Stage(30, 8), Stage(5, 32), Stage(0.5, 0)]
    assert total_seconds(stages) == 45.5
    assert target_at(stages, 0) == 0
    assert target_at(stages, 5) == pytest.approx(4)  # ramping 0 -> 8 over 10 s
    assert target_at(stages, 25) == 8
    assert target_at(stages, 42.5) == pytest.approx(20)  # half way 8 -> 32
    assert target_at(stages, 100) == 0
    assert parse_stages("1m:2")[0].seconds == 60
    with pytest.raises(ValueError, match="DURATION:TARGET"):
        parse_stages("10s")


@pytest.mark.parametrize("name", ["ramp", "steady", "spike", "ramp-down"])
def test_presets_span_the_duration_and_reach_the_peak(name: str) -> None:
    stages = preset(name, peak=40, seconds=100)
    assert total_seconds(stages) == pytest.approx(100)
    assert max(target_at(stages, t / 10) for t in range(1000)) == pytest.approx(40)
    if name == "spike":
        assert target_at(stages, 10) == 10 and target_at(stages, 50) == 40
    if name == "ramp-down":
        assert target_at(stages, 99.9) < 1
    with pytest.raises(ValueError):
        preset("zigzag", 1)


def test_mix_is_validated() -> None:
    with pytest.raises(ValueError):
        Mix(bulk_fraction=1.5)
    with pytest.raises(ValueError):
        Mix(bulk_size=0)

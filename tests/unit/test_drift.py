"""common/drift.py: windows, distance, bounds (a clock the test moves)."""

from __future__ import annotations

import math

import pytest

from common.drift import OTHER, LabelWindows, total_variation


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def windows(clock: Clock, **kw: int) -> LabelWindows:
    return LabelWindows(window_s=100, reference_s=300, clock=clock,
                        min_count=kw.pop("min_count", 10), **kw)


def test_total_variation() -> None:
    assert total_variation({"a": 5, "b": 5}, {"a": 50, "b": 50}) == 0
    assert total_variation({"a": 10}, {"b": 3}) == 1
    assert total_variation({"a": 3, "b": 1}, {"a": 1, "b": 1}) == pytest.approx(0.25)
    assert total_variation({"a": 8, "b": 2}, {"b": 5, "c": 5}) == pytest.approx(0.8)
    assert math.isnan(total_variation({}, {"a": 1}))


def test_current_window_against_the_reference_before_it() -> None:
    clock = Clock()
    w = windows(clock)
    w.add("m", "v1", ["pos"] * 50 + ["neg"] * 50)
    (row,) = w.rows()
    assert row.current == {"pos": 50, "neg": 50} and row.reference == {}
    assert row.distance is None  # no reference yet

    clock.now += 120  # the first counts are now the reference
    w.add("m", "v1", ["pos"] * 45 + ["neg"] * 55)
    (row,) = w.rows()
    assert row.reference == {"pos": 50, "neg": 50}
    assert row.current == {"pos": 45, "neg": 55}
    assert row.distance == pytest.approx(0.05)

    clock.now += 120
    w.add("m", "v1", ["neg"] * 100)  # the mix moves
    (row,) = w.rows()
    assert row.reference == {"pos": 95, "neg": 105}
    assert row.distance == pytest.approx(0.475)


def test_too_few_predictions_give_no_distance() -> None:
    clock = Clock()
    w = windows(clock, min_count=30)
    w.add("m", "v1", ["pos"] * 40)
    clock.now += 150
    w.add("m", "v1", ["neg"] * 29)
    assert w.rows()[0].distance is None
    w.add("m", "v1", ["neg"])
    assert w.rows()[0].distance == pytest.approx(1.0)


def test_old_buckets_leave_and_quiet_series_go() -> None:
    clock = Clock()
    w = windows(clock)
    w.add("m", "v1", ["pos"] * 20)
    clock.now += 350  # in the reference still (window 100 + reference 300)
    assert w.rows()[0].reference == {"pos": 20}
    clock.now += 60  # past both windows
    assert w.rows() == []


def test_versions_are_separate_and_bounded() -> None:
    clock = Clock()
    w = windows(clock, max_series=2, max_labels=2)
    w.add("m", "v1", ["a"])
    w.add("m", "v2", ["a", "b", "c", "d"])  # labels past the bound count as OTHER
    assert {(r.model, r.version) for r in w.rows()} == {("m", "v1"), ("m", "v2")}
    assert next(r for r in w.rows() if r.version == "v2").current == {"a": 1, "b": 1, OTHER: 2}
    w.add("m", "v1", ["a"])
    w.add("m", "v3", ["a"])  # the series heard from longest ago (v2) goes
    assert {r.version for r in w.rows()} == {"v1", "v3"}

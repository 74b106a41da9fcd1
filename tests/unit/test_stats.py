"""Percentiles, the run summary and the per-second series."""

from __future__ import annotations

import math

import pytest

from loadtest.stats import Sample, latency_ms, per_second, percentile, summary


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.99) == pytest.approx(99.01)
    assert percentile(values, 0.0) == 1 and percentile(values, 1.0) == 100
    assert percentile([3.0], 0.99) == 3.0
    assert math.isnan(percentile([], 0.5))
    assert percentile([5.0, 1.0, 3.0], 0.5) == 3.0  # order does not matter
    assert latency_ms([0.010, 0.020]) == {"p50_ms": 15.0, "p90_ms": 19.0, "p95_ms": 19.5,
                                          "p99_ms": 19.9}


def test_summary_counts_errors_and_the_hit_ratio() -> None:
    samples = [Sample(0.1, 0.010, 200, "/v1/predict", 1, 1),
               Sample(0.2, 0.020, 200, "/v1/bulk-predict", 4, 1),
               Sample(0.3, 0.500, 503, "/v1/predict", 1, 0),
               Sample(1.1, 0.030, 0, "/v1/predict", 1, 0)]
    out = summary(samples, 2.0)
    assert out["requests"] == 4 and out["ok"] == 2 and out["rps"] == 1.0
    assert out["items_per_s"] == 2.5
    assert out["errors"] == {"503": 1, "0": 1}
    assert out["cache_hit_ratio"] == pytest.approx(2 / 5)
    assert out["p99_ms"] == pytest.approx(19.9)  # errors are not in the latencies


def test_per_second_series_and_warming_cache() -> None:
    samples = [Sample(0.5, 0.01, 200, "/v1/predict", 1, 0),
               Sample(0.6, 0.01, 200, "/v1/predict", 1, 0),
               Sample(2.5, 0.02, 200, "/v1/predict", 1, 1),
               Sample(2.7, 0.02, 503, "/v1/predict", 1, 0)]
    rows = per_second(samples)
    assert [r["second"] for r in rows] == [0, 1, 2]
    assert [r["requests"] for r in rows] == [2, 0, 1 + 1]
    assert rows[1]["hit_ratio"] is None and math.isnan(rows[1]["p50_ms"])
    assert rows[2]["errors"] == 1 and rows[2]["hit_ratio"] == 1.0
    assert rows[2]["hit_ratio_so_far"] == pytest.approx(1 / 3, abs=1e-4)

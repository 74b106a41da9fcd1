"""The KPA model: Knative's documented formulas, and the simulator's behaviour (scale from
zero, panic, scale-down delay, scale to zero, bounds, one pod's steady state)."""

from __future__ import annotations

import math

import pytest

from loadtest.curve import poisson_quantile
from loadtest.kpa import (
    Curve,
    KpaConfig,
    _decide,
    desired_pods,
    simulate,
    trace,
)
from loadtest.podqueue import PodModel, pod_model

CURVE = Curve([
    {"concurrency": 1, "rps": 60, "p50_ms": 16, "p99_ms": 30},
    {"concurrency": 2, "rps": 100, "p50_ms": 20, "p99_ms": 40},
    {"concurrency": 4, "rps": 120, "p50_ms": 33, "p99_ms": 70},
    {"concurrency": 8, "rps": 120, "p50_ms": 66, "p99_ms": 130},
    {"concurrency": 16, "rps": 120, "p50_ms": 133, "p99_ms": 250},
])


def test_knative_documented_examples() -> None:
    # containerConcurrency 4 at the default 70% -> 2.8 per pod; 20 in flight -> 8 pods
    config = KpaConfig(container_concurrency=4)
    assert config.target_per_pod == pytest.approx(2.8)
    assert desired_pods(20, config.target_per_pod) == 8
    # containerConcurrency 10, 70%, 100 concurrent requests -> 15 pods
    assert desired_pods(100, KpaConfig(container_concurrency=10).target_per_pod) == 15
    # a soft target overrides containerConcurrency; no cc and no target -> 100
    assert KpaConfig(container_concurrency=10, target=5, utilization=1).target_per_pod == 5
    assert KpaConfig().target_per_pod == pytest.approx(70)
    assert desired_pods(14, 7) == 2 and desired_pods(14.01, 7) == 3


def test_panic_mode_starts_at_twice_the_ready_pods_and_never_scales_down() -> None:
    config = KpaConfig(container_concurrency=10)  # 7 per pod
    # stable says 2 pods, the panic window says 6: 6 / 2 ready >= 200% -> panic
    want, since, most = _decide(config, stable=14, panic=42, ready=2, t=100, panic_since=None,
                                max_panic_pods=0)
    assert (want, since, most) == (6, 100, 6)
    # the burst is over but the panic lasts a stable window: no scaling down meanwhile
    want, since, most = _decide(config, stable=7, panic=7, ready=6, t=130, panic_since=since,
                                max_panic_pods=most)
    assert want == 6 and since == 100
    want, since, _ = _decide(config, stable=7, panic=7, ready=6, t=161, panic_since=since,
                             max_panic_pods=most)
    assert since is None and want == 3  # floor(6 / max_scale_down_rate 2) limits the drop
    # under the threshold: no panic, the stable count rules
    want, since, _ = _decide(config, stable=14, panic=20, ready=2, t=0, panic_since=None,
                             max_panic_pods=0)
    assert since is None and want == 2


def test_scale_up_rate_limit() -> None:
    config = KpaConfig(container_concurrency=1, utilization=1, max_scale_up_rate=2)
    want, _, _ = _decide(config, stable=50, panic=50, ready=3, t=0, panic_since=None,
                         max_panic_pods=0)
    assert want == 6  # ceil(2 x 3 ready)


def test_poisson_quantiles() -> None:
    assert poisson_quantile(0, 0.99) == 0
    assert poisson_quantile(1, 0.5) == 1  # P(X <= 0) = 0.37, P(X <= 1) = 0.74
    assert poisson_quantile(1, 0.99) == 4  # P(X <= 3) = 0.981, P(X <= 4) = 0.996
    assert poisson_quantile(100, 0.99) == 124  # ~ mean + 2.33 sd


def test_curve_interpolates_and_inverts() -> None:
    assert CURVE.throughput(0.5) == pytest.approx(30)
    assert CURVE.throughput(3) == pytest.approx(110)
    assert CURVE.concurrency_for(110) == pytest.approx(3)
    assert CURVE.concurrency_for(30) == pytest.approx(0.5)
    assert CURVE.concurrency_for(500) == 4  # the first level at the best throughput
    assert CURVE.best(limit=2) == (2, 100)
    assert CURVE.p99_s(32) == pytest.approx(0.5)  # past the curve: Little's law


def test_one_pod_steady_state_is_the_curve() -> None:
    one = KpaConfig(min_scale=1, max_scale=1, initial_scale=1)
    out = simulate(one, CURVE, trace("constant", 30, 110), cold_start_s=0, dt=0.02).summary
    assert out["throughput_rps"] == pytest.approx(110, rel=0.01)
    # the pod's latency under random arrivals at that rate (loadtest/podqueue.py)
    pod = pod_model(CURVE, workers=2, max_batch=32, container_concurrency=math.inf)
    assert out["p99_ms"] == pytest.approx(pod.p99_s(110) * 1000, rel=0.02)
    assert out["p50_ms"] == pytest.approx(pod.p50_s(110) * 1000, rel=0.02)
    assert out["timed_out"] == 0 and out["max_pods"] == 1
    overloaded = simulate(one, CURVE, trace("constant", 30, 180), 0, dt=0.02).summary
    assert overloaded["throughput_rps"] == pytest.approx(120, rel=0.02)
    assert overloaded["p99_ms"] > 5000  # the queue grows without bound


def test_pod_model_under_random_arrivals() -> None:
    pod = PodModel(CURVE, workers=2, max_batch=32)
    assert pod.capacity == pytest.approx(120, rel=0.01)  # full batches, back to back
    # Nearly idle: a request is a batch of one, alone on the pod (the curve at 1 in flight).
    assert pod.p50_s(0.05 * pod.capacity) == pytest.approx(CURVE.p50_s(1), rel=0.15)
    p99s = [pod.p99_s(f * pod.capacity) for f in (0.1, 0.3, 0.6, 0.9)]
    assert p99s == sorted(p99s)
    # Near saturation, random arrivals queue far past the closed-loop curve's p99 at the
    # in-flight count Little's law gives: the gap `loadtest validate` measured.
    rate = 0.9 * pod.capacity
    assert pod.p99_s(rate) > 2 * CURVE.p99_s(CURVE.concurrency_for(rate))
    # containerConcurrency 2 over two threads: batches of one, less throughput.
    capped = PodModel(CURVE, workers=2, max_batch=32, container_concurrency=2)
    assert capped.max_batch == 2 and capped.capacity == pytest.approx(100, rel=0.01)


def test_scale_from_zero_waits_one_cold_start() -> None:
    config = KpaConfig(container_concurrency=10, initial_scale=0)
    result = simulate(config, CURVE, trace("constant", 60, 50), cold_start_s=1.5, dt=0.05)
    first_ready = next(r["t"] for r in result.series if r["ready"] > 0)
    assert 1.5 <= first_ready <= 1.5 + config.tick_s + 1
    out = result.summary
    assert out["cold_start_waiters"] == pytest.approx(50 * 1.5, rel=0.3)
    # the first 1.5 s of arrivals (2.5% of the run) waited up to a cold start, then met a pod
    # draining that backlog at full speed: they are p99
    saturated = pod_model(CURVE, 2, 32, 10).p99_s(CURVE.best(10)[1]) * 1000
    assert 1000 <= out["p99_ms"] <= 1500 + saturated
    assert out["p50_ms"] < 50
    assert out["timed_out"] == 0 and out["served"] == pytest.approx(out["offered"], rel=0.01)


def test_spike_triggers_panic_and_scale_down_delay_holds_pods() -> None:
    load = trace("spike", 400, 600, low=20, at_s=60, length_s=60)
    quick = simulate(KpaConfig(container_concurrency=10, min_scale=1), CURVE, load, 1.0)
    held = simulate(KpaConfig(container_concurrency=10, min_scale=1, scale_down_delay_s=120),
                    CURVE, load, 1.0)
    assert quick.summary["panic_seconds"] > 0
    peak = max(r["ready"] for r in quick.series)
    assert peak >= 5  # 600 req/s at 120 per pod
    # pods reach the spike's level within seconds (panic), not a 60 s stable window
    assert next(r["t"] for r in quick.series if r["ready"] >= 5) < 60 + 10

    def last_at_peak(result) -> float:  # type: ignore[no-untyped-def]
        top = max(r["ready"] for r in result.series)
        return max(r["t"] for r in result.series if r["ready"] >= top)

    assert last_at_peak(held) >= last_at_peak(quick) + 100
    assert held.summary["pod_seconds"] > quick.summary["pod_seconds"]


def test_scale_to_zero_after_grace_and_min_max_bounds() -> None:
    load = trace("onoff", 300, 50, period_s=300, length_s=30)
    gone = simulate(KpaConfig(container_concurrency=10), CURVE, load, 1.0).series
    zero_at = next(r["t"] for r in gone if r["t"] > 30 and r["ready"] == 0)
    # traffic stops at 30 s; the 60 s stable window empties at 90 s, plus the 30 s grace
    assert 110 <= zero_at <= 130
    kept = simulate(KpaConfig(container_concurrency=10, min_scale=2), CURVE, load, 1.0).series
    assert min(r["ready"] for r in kept) == 2
    capped = simulate(KpaConfig(container_concurrency=10, max_scale=2), CURVE,
                      trace("constant", 60, 1000), 1.0)
    assert capped.summary["max_pods"] == 2 and capped.summary["timed_out"] > 0

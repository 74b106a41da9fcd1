"""The pod's batch-service queue (loadtest/podqueue.py) against queueing theory: with one
thread, batches of one and a fixed service time it is M/D/1; with unbounded batches a request
never waits for more than the batch in progress."""

from __future__ import annotations

import random
import statistics

import pytest

from loadtest.curve import Curve
from loadtest.podqueue import PodModel

# Every level takes 10 ms, no spread: a forward pass whose cost does not depend on the batch.
FLAT = Curve([{"concurrency": c, "rps": c * 100, "p50_ms": 10, "p99_ms": 10}
              for c in (1, 2, 4, 8, 16, 32, 64)])


@pytest.mark.parametrize("load", [0.3, 0.6, 0.9])
def test_one_thread_batches_of_one_is_m_d_1(load: float) -> None:
    pod = PodModel(FLAT, workers=1, max_batch=1, requests=2000)
    assert pod.capacity == pytest.approx(100)
    latencies = pod._run(load * 100, 40_000, random.Random(3))
    service = 0.010
    # Pollaczek-Khinchine for deterministic service: W = s + rho s / (2 (1 - rho))
    expected = service + load * service / (2 * (1 - load))
    assert statistics.fmean(latencies) == pytest.approx(expected, rel=0.08)


def test_with_whole_batches_nobody_waits_past_the_batch_in_progress() -> None:
    pod = PodModel(FLAT, workers=1, max_batch=10_000, requests=2000)
    latencies = pod._run(2000.0, 20_000, random.Random(5))  # 20 arrivals per pass
    assert max(latencies) <= 2 * 0.010 + 1e-9  # the pass in progress, then its own
    assert min(latencies) >= 0.010 - 1e-9

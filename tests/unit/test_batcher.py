"""The micro-batcher with a small fake model: order, merging, backpressure, deadlines, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from common.errors import DeadlineExceeded, ModelError, Overloaded
from common.metrics import Metrics
from online.batcher import MicroBatcher


class FakeModel:
    """Upper-cases texts; can be held busy to let a queue build up; records each batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, texts: list[str]) -> list[str]:
        self.entered.set()
        self.gate.wait(timeout=10)
        self.batches.append(list(texts))
        return [t.upper() for t in texts]


def far() -> float:
    return time.monotonic() + 30


async def test_results_go_back_to_their_own_callers() -> None:
    model = FakeModel()
    batcher = MicroBatcher(model, max_batch_size=8, max_queue=100)
    batcher.start()
    texts = [f"text {i}" for i in range(50)]
    results = await asyncio.gather(*(batcher.submit(t, far()) for t in texts))
    assert results == [t.upper() for t in texts]
    assert all(len(b) <= 8 for b in model.batches)
    await batcher.stop()


async def test_lone_request_runs_alone_without_waiting() -> None:
    model = FakeModel()
    batcher = MicroBatcher(model, max_batch_size=32, max_queue=10, max_wait_ms=0)
    batcher.start()
    started = time.perf_counter()
    assert await batcher.submit("only", far()) == "ONLY"
    assert time.perf_counter() - started < 0.2
    assert model.batches == [["only"]]
    await batcher.stop()


async def test_queue_builds_into_one_batch_while_model_is_busy() -> None:
    model = FakeModel()
    model.gate.clear()
    metrics = Metrics()
    batcher = MicroBatcher(model, max_batch_size=16, max_queue=100, metrics=metrics)
    batcher.start()
    first = batcher.submit("first", far())
    await asyncio.to_thread(model.entered.wait, 5)  # the worker is now busy with "first"
    rest = [batcher.submit(f"t{i}", far()) for i in range(10)]
    model.gate.set()
    await asyncio.gather(first, *rest)
    assert [len(b) for b in model.batches] == [1, 10]
    assert metrics.registry.get_sample_value("surge_batch_size_sum", {"model": ""}) == 11
    await batcher.stop()


async def test_full_queue_is_refused_with_retry_after() -> None:
    model = FakeModel()
    model.gate.clear()
    metrics = Metrics()
    batcher = MicroBatcher(model, max_batch_size=4, max_queue=3, retry_after_s=2, metrics=metrics)
    batcher.start()
    busy = batcher.submit("busy", far())
    await asyncio.to_thread(model.entered.wait, 5)
    queued = [batcher.submit(f"q{i}", far()) for i in range(3)]
    with pytest.raises(Overloaded) as refused:
        batcher.submit("one too many", far())
    assert refused.value.retry_after == 2
    assert metrics.registry.get_sample_value(
        "surge_rejected_total", {"model": "", "reason": "overloaded"}) == 1
    model.gate.set()
    assert await asyncio.gather(busy, *queued) == ["BUSY", "Q0", "Q1", "Q2"]
    await batcher.stop()


async def test_item_past_its_deadline_gets_504_and_never_reaches_the_model() -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = MicroBatcher(model, max_batch_size=4, max_queue=10)
    batcher.start()
    busy = batcher.submit("busy", far())
    await asyncio.to_thread(model.entered.wait, 5)
    late = batcher.submit("late", time.monotonic() + 0.05)
    await asyncio.sleep(0.1)
    model.gate.set()
    with pytest.raises(DeadlineExceeded):
        await late
    assert await busy == "BUSY"
    assert ["late"] not in model.batches and all("late" not in b for b in model.batches)
    await batcher.stop()


async def test_model_failure_fails_that_batch_only() -> None:
    calls = 0

    def flaky(texts: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("CUDA? no: just a bad batch")
        return texts

    batcher = MicroBatcher(flaky, max_batch_size=4, max_queue=10)
    batcher.start()
    with pytest.raises(ModelError) as failed:
        await batcher.submit("a", far())
    assert "bad batch" not in failed.value.message  # the cause is logged, not shown
    assert await batcher.submit("b", far()) == "b"
    await batcher.stop()


async def test_stop_finishes_queued_items() -> None:
    model = FakeModel()
    batcher = MicroBatcher(model, max_batch_size=2, max_queue=100)
    batcher.start()
    futures = [batcher.submit(f"x{i}", far()) for i in range(9)]
    await batcher.stop()
    assert [f.result() for f in futures] == [f"X{i}" for i in range(9)]


class SlowModel(FakeModel):
    """10 ms per batch: a known drain rate."""

    def __call__(self, texts: list[str]) -> list[str]:
        time.sleep(0.01)
        return super().__call__(texts)


async def test_admission_sheds_what_would_wait_too_long() -> None:
    model = SlowModel()
    metrics = Metrics()
    batcher = MicroBatcher(model, max_batch_size=4, max_queue=10_000, metrics=metrics,
                           max_queue_wait_s=0.5)
    batcher.start()
    batcher.admit(1000)  # nothing queued, no rate measured: admitted
    await asyncio.gather(*(batcher.submit(f"w{i}", far()) for i in range(40)))
    rate = batcher.drain_rate()
    assert rate is not None and rate > 100  # up to 4 items per 10 ms of model time
    model.gate.clear()  # hold the model: a queue builds
    held = [batcher.submit(f"h{i}", far()) for i in range(int(rate * 0.4))]
    batcher.admit(1)  # still within 0.5 s of work
    with pytest.raises(Overloaded) as refused:
        batcher.admit(int(rate * 0.2))  # would wait past 0.5 s
    assert refused.value.detail["expected_wait_s"] > 0.5
    assert refused.value.retry_after >= 1
    assert metrics.registry.get_sample_value(
        "surge_rejected_total", {"model": "", "reason": "overloaded"}) == int(rate * 0.2)
    model.gate.set()
    await asyncio.gather(*held)
    unlimited = MicroBatcher(model, max_batch_size=4, max_queue=10, max_queue_wait_s=0)
    unlimited.admit(10_000)  # 0 turns the check off
    await batcher.stop()


async def test_a_burst_after_an_idle_spell_is_not_shed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drain rate is measured over model busy time: two 10 ms batches just after an idle
    spell already say ~100 items/s, so 30 queued items (0.3 s of work) fit a 1 s budget."""
    monkeypatch.setattr("online.batcher.RATE_WINDOW_S", 0.3)
    model = SlowModel()
    batcher = MicroBatcher(model, max_batch_size=1, max_queue=1000, max_queue_wait_s=1.0)
    batcher.start()
    await asyncio.gather(*(batcher.submit(f"warm{i}", far()) for i in range(3)))
    await asyncio.sleep(0.4)  # idle: what finished before has left the window
    model.batches.clear()
    burst = [batcher.submit(f"b{i}", far()) for i in range(30)]
    while len(model.batches) < 2:
        await asyncio.sleep(0.002)
    rate = batcher.drain_rate()
    assert rate is not None and 30 < rate <= 101  # a wall-clock window said 4/s here
    batcher.admit(1)  # ~28 queued at ~100/s: well within the budget
    with pytest.raises(Overloaded):
        batcher.admit(int(rate))  # but not another second of work
    await asyncio.gather(*burst)
    await batcher.stop()


async def test_a_worker_freed_while_another_is_busy_waits_for_requests_on_their_way(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers: one busy, the other just finished a batch. Requests arriving one after
    another (as answered clients come back) go in one batch, not the first alone; with both
    workers idle a lone request still runs at once."""
    import online.batcher as batcher_module

    monkeypatch.setattr(batcher_module, "HOLD_GAP_S", 0.5)  # generous: a shared machine
    monkeypatch.setattr(batcher_module, "HOLD_SHARE", 3.0)
    release_busy = threading.Event()
    batches: list[list[str]] = []

    def model(texts: list[str]) -> list[str]:
        if texts == ["busy"]:
            release_busy.wait(timeout=10)
        elif texts[0].startswith("warm"):
            time.sleep(0.2)  # this worker's last batch took 0.2 s: it may hold up to 0.6 s
        batches.append(list(texts))
        return [t.upper() for t in texts]

    batcher = MicroBatcher(model, max_batch_size=8, max_queue=100, workers=2)
    batcher.start()
    started = time.perf_counter()
    assert await batcher.submit("alone", far()) == "ALONE"  # both idle: no waiting
    assert time.perf_counter() - started < 0.2
    warm = batcher.submit("warm1", far())  # one worker busy 0.2 s ...
    await asyncio.sleep(0.05)
    # ... so the other runs this one: both workers' last batch took 0.2 s, whichever is freed
    assert await asyncio.gather(warm, batcher.submit("warm2", far())) == ["WARM1", "WARM2"]
    busy = batcher.submit("busy", far())
    await asyncio.sleep(0.1)  # one worker is now held by "busy"
    first = batcher.submit("a", far())
    await asyncio.sleep(0.05)
    later = [batcher.submit(t, far()) for t in ("b", "c")]
    assert await asyncio.gather(first, *later) == ["A", "B", "C"]
    release_busy.set()
    await busy
    assert ["a", "b", "c"] in batches, batches
    await batcher.stop()

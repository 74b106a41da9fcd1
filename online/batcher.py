"""The micro-batcher: one bounded queue, one collate loop, `workers` model threads.

When a worker frees up it takes everything queued (up to max_batch_size) at once, so batches
grow with load by themselves and a lone request at low load waits for nothing but its forward pass.
`max_wait_ms` > 0 optionally holds a non-full batch open that long for company.

Why more than one worker: on CPU, two single-threaded workers outrun one two-threaded worker
for a small encoder (no OpenMP barrier stalls when the event loop preempts a thread; measured in
README, Benchmarks). With workers=1 this is the classic one-queue, one-worker batcher.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from common.errors import DeadlineExceeded, ModelError, Overloaded
from common.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


RATE_WINDOW_S = 5.0


@dataclass
class _Item(Generic[T, R]):
    payload: T
    future: asyncio.Future[R]
    enqueued: float
    deadline: float


class MicroBatcher(Generic[T, R]):
    """Merge concurrent single-item requests into batches for `run_batch` (called off-loop)."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_queue: int,
        max_wait_ms: float = 0.0,
        retry_after_s: int = 1,
        metrics: Metrics | None = None,
        workers: int = 1,
        model: str = "",
        max_queue_wait_s: float = 0.0,
    ):
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._retry_after_s = retry_after_s
        m = metrics or Metrics()
        self._overloaded = m.rejected.labels(model, "overloaded")
        self._expired = m.rejected.labels(model, "expired")
        self._depth = m.queue_depth.labels(model)
        self._wait = m.queue_wait.labels(model)
        self._size = m.batch_size.labels(model)
        self._queue: asyncio.Queue[_Item[T, R]] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model")
        self._free_workers = asyncio.Semaphore(workers)
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        # Admission by expected wait: items finished in the last RATE_WINDOW_S seconds give
        # the drain rate; a request whose items would wait longer than max_queue_wait_s is
        # refused at once instead of queueing into a timeout.
        self.max_queue_wait_s = max_queue_wait_s
        self.workers = workers
        # (finished at, items, busy seconds) of recent batches.
        self._finished: collections.deque[tuple[float, int, float]] = collections.deque()

    @property
    def depth(self) -> int:
        """Items waiting now."""
        return self._queue.qsize()

    def drain_rate(self) -> float | None:
        """Items/s the model drains a backlog at: items over busy seconds of the batches that
        finished in the last few seconds, times the workers (None until one has finished).

        Busy time, not wall time: after an idle spell the first batches of a burst give the
        real rate at once (a wall-clock window would read "2 items in 0.5 s" and shed a
        burst the model clears in milliseconds)."""
        now = time.monotonic()
        while self._finished and self._finished[0][0] < now - RATE_WINDOW_S:
            self._finished.popleft()
        busy = sum(seconds for _, _, seconds in self._finished)
        if not self._finished or busy <= 0:
            return None
        return self.workers * sum(n for _, n, _ in self._finished) / busy

    def admit(self, count: int) -> None:
        """Refuse (Overloaded, 503) a request of `count` items whose wait behind what is
        queued would exceed max_queue_wait_s at the measured drain rate."""
        if not self.max_queue_wait_s or not self.depth:
            return
        rate = self.drain_rate()
        if rate is None:
            return
        wait = (self.depth + count) / rate
        if wait > self.max_queue_wait_s:
            self._overloaded.inc(count)
            raise Overloaded("the prediction queue is longer than a request may wait; retry "
                             "shortly", {"expected_wait_s": round(wait, 2),
                                         "max_queue_wait_s": self.max_queue_wait_s},
                             retry_after=max(self._retry_after_s, math.ceil(wait / 2)))

    def start(self) -> None:
        """Start the collate loop on the running event loop."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._collate_loop())

    def submit(self, payload: T, deadline: float) -> asyncio.Future[R]:
        """Queue one item; its future resolves to the result. Raises Overloaded when full."""
        loop = asyncio.get_running_loop()
        item = _Item(payload, loop.create_future(), time.monotonic(), deadline)
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._overloaded.inc()
            raise Overloaded("the prediction queue is full; retry shortly",
                             {"queue_size": self._queue.maxsize},
                             retry_after=self._retry_after_s) from None
        self._depth.set(self._queue.qsize())
        return item.future

    async def _collate_loop(self) -> None:
        while True:
            await self._free_workers.acquire()  # collect only when a worker can take the batch
            live = self._drop_expired(await self._collect())
            if not live:
                self._free_workers.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(live))
            self._running.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._free_workers.release()

    async def _collect(self) -> list[_Item[T, R]]:
        batch = [await self._queue.get()]
        self._drain_into(batch)
        if self.max_wait_s and len(batch) < self.max_batch_size:
            until = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size and (left := until - time.monotonic()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
                self._drain_into(batch)
        self._depth.set(self._queue.qsize())
        return batch

    def _drain_into(self, batch: list[_Item[T, R]]) -> None:
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    def _drop_expired(self, batch: list[_Item[T, R]]) -> list[_Item[T, R]]:
        now = time.monotonic()
        live = []
        for item in batch:
            if item.future.done():  # every waiter gave up (cancelled)
                continue
            if now >= item.deadline:
                self._expired.inc()
                item.future.set_exception(
                    DeadlineExceeded("the request waited past its deadline in the queue"))
                continue
            self._wait.observe(now - item.enqueued)
            live.append(item)
        return live

    async def _run(self, batch: list[_Item[T, R]]) -> None:
        # run_batch sorts by token length itself (it has the tokenizer); order here is arrival.
        self._size.observe(len(batch))
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            results = await loop.run_in_executor(
                self._executor, self._run_batch, [item.payload for item in batch])
        except Exception as exc:
            log.exception("model batch of %d failed", len(batch))
            error = ModelError("the model failed on this batch")
            error.__cause__ = exc
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        now = time.monotonic()
        self._finished.append((now, len(batch), now - started))
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    async def stop(self) -> None:
        """Finish what is queued, then stop the loop and the worker thread."""
        while not self._queue.empty() or self._running:
            await asyncio.sleep(0.01)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        self._executor.shutdown(wait=True)

"""The micro-batcher: one bounded queue, `workers` model threads that collect from it.

When a worker frees up it takes everything queued (up to max_batch_size) at once, so batches
grow with load by themselves and a lone request at low load waits for nothing but its forward pass.
Only while another worker is busy (a loaded server) does a freed worker wait a moment for the
requests on their way back (`_hold`): a lone request never waits.
`max_wait_ms` > 0 optionally holds a non-full batch open that long for company.

The workers collect for themselves (a lock and a condition around the queue): a worker that
finishes a batch starts the next one at once, without a round trip through the event loop,
which is busy answering the batch just finished. The loop only enqueues and, once per batch,
hands the results to the waiting requests.

Why more than one worker: on CPU, two single-threaded workers outrun one two-threaded worker
for a small encoder (no OpenMP barrier stalls when the event loop preempts a thread; measured in
docs/benchmarks.md). With workers=1 this is the classic one-queue, one-worker batcher.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from common.errors import DeadlineExceeded, ModelError, Overloaded
from common.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


RATE_WINDOW_S = 5.0
# Holding a batch open for the requests on their way back (see _hold): at most this share of
# the worker's last forward pass, and only while they keep arriving (gaps under HOLD_GAP_S).
HOLD_SHARE = 0.25
HOLD_GAP_S = 0.002


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
        self.max_queue = max_queue
        self._items: collections.deque[_Item[T, R]] = collections.deque()
        self._ready = threading.Condition()  # guards _items, _running, _stopping
        self._running = 0  # batches being run now
        self._stopping = False
        self._threads = [threading.Thread(target=self._worker, name=f"model_{k}", daemon=True)
                         for k in range(workers)]
        self._loop: asyncio.AbstractEventLoop | None = None
        # Admission by expected wait: items finished in the last RATE_WINDOW_S seconds give
        # the drain rate; a request whose items would wait longer than max_queue_wait_s is
        # refused at once instead of queueing into a timeout.
        self.max_queue_wait_s = max_queue_wait_s
        self.workers = workers
        # (finished at, items, busy seconds) of recent batches.
        self._finished: collections.deque[tuple[float, int, float]] = collections.deque()
        self._last_busy: dict[str, float] = {}  # worker thread name -> its last batch's seconds

    @property
    def depth(self) -> int:
        """Items waiting now."""
        return len(self._items)

    def drain_rate(self) -> float | None:
        """Items/s the model drains a backlog at: items over busy seconds of the batches that
        finished in the last few seconds, times the workers (None until one has finished).

        Busy time, not wall time: after an idle spell the first batches of a burst give the
        real rate at once (a wall-clock window would read "2 items in 0.5 s" and shed a
        burst the model clears in milliseconds)."""
        now = time.monotonic()
        with self._ready:  # the workers append to it
            while self._finished and self._finished[0][0] < now - RATE_WINDOW_S:
                self._finished.popleft()
            recent = list(self._finished)
        busy = sum(seconds for _, _, seconds in recent)
        if not recent or busy <= 0:
            return None
        return self.workers * sum(n for _, n, _ in recent) / busy

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
        """Start the model worker threads; results are handed back on the running loop."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            for thread in self._threads:
                thread.start()

    def submit(self, payload: T, deadline: float) -> asyncio.Future[R]:
        """Queue one item; its future resolves to the result. Raises Overloaded when full."""
        item = _Item(payload, asyncio.get_running_loop().create_future(), time.monotonic(),
                     deadline)
        with self._ready:
            if len(self._items) >= self.max_queue:
                self._overloaded.inc()
                raise Overloaded("the prediction queue is full; retry shortly",
                                 {"queue_size": self.max_queue},
                                 retry_after=self._retry_after_s)
            self._items.append(item)
            self._ready.notify()
        self._depth.set(len(self._items))
        return item.future

    def _worker(self) -> None:
        """A model thread: take what is queued, run it, hand the results to the loop; again."""
        while (batch := self._collect()) is not None:
            live = self._drop_expired(batch)
            if live:
                self._run(live)
            with self._ready:
                self._running -= 1
                self._ready.notify_all()  # stop() may be waiting for the last batch

    def _collect(self) -> list[_Item[T, R]] | None:
        """Block until something is queued; take up to max_batch_size (after holding a
        non-full batch open max_wait_s, if set). None once stopping and empty."""
        with self._ready:
            while not self._items:
                if self._stopping:
                    return None
                self._ready.wait()
            batch = self._take()
            if self._running and len(batch) < self.max_batch_size:  # another worker is busy
                batch += self._hold(len(batch))
            if self.max_wait_s and len(batch) < self.max_batch_size:
                until = time.monotonic() + self.max_wait_s
                while len(batch) < self.max_batch_size and (left := until - time.monotonic()) > 0:
                    self._ready.wait(left)
                    batch += self._take(self.max_batch_size - len(batch))
            self._running += 1
        self._depth.set(len(self._items))
        return batch

    def _hold(self, have: int) -> list[_Item[T, R]]:
        """A worker freed while another is busy (a loaded server) takes what arrives in the
        next moments too: the clients it just answered are on their way back, and taking
        everything queued at once would start a batch of the few that beat them (measured:
        batches of 5-9 instead of ~16 under 32 clients on 2 workers, and a pass of few texts
        costs more per text). While requests keep arriving (gaps under HOLD_GAP_S), up to
        HOLD_SHARE of this worker's last batch time. Called with the lock held."""
        more: list[_Item[T, R]] = []
        last = self._last_busy.get(threading.current_thread().name, 0.0)
        until = time.monotonic() + HOLD_SHARE * last
        while have + len(more) < self.max_batch_size and (left := until - time.monotonic()) > 0:
            self._ready.wait(min(left, HOLD_GAP_S))
            got = self._take(self.max_batch_size - have - len(more))
            if not got:
                break
            more += got
        return more

    def _take(self, limit: int | None = None) -> list[_Item[T, R]]:
        items = self._items
        count = min(len(items), self.max_batch_size if limit is None else limit)
        return [items.popleft() for _ in range(count)]

    def _drop_expired(self, batch: list[_Item[T, R]]) -> list[_Item[T, R]]:
        now = time.monotonic()
        live, expired = [], []
        for item in batch:
            if item.future.done():  # every waiter gave up (cancelled)
                continue
            if now >= item.deadline:
                expired.append(item)
                continue
            self._wait.observe(now - item.enqueued)
            live.append(item)
        if expired:
            self._expired.inc(len(expired))
            self._hand_back(expired, None, DeadlineExceeded(
                "the request waited past its deadline in the queue"))
        return live

    def _run(self, batch: list[_Item[T, R]]) -> None:
        # run_batch sorts by token length itself (it has the tokenizer); order here is arrival.
        self._size.observe(len(batch))
        started = time.monotonic()
        try:
            results = list(self._run_batch([item.payload for item in batch]))
        except Exception as exc:
            log.exception("model batch of %d failed", len(batch))
            error = ModelError("the model failed on this batch")
            error.__cause__ = exc
            self._hand_back(batch, None, error)
            return
        now = time.monotonic()
        with self._ready:
            self._finished.append((now, len(batch), now - started))
            self._last_busy[threading.current_thread().name] = now - started
        self._hand_back(batch, results, None)

    def _hand_back(self, batch: list[_Item[T, R]], results: list[R] | None,
                   error: Exception | None) -> None:
        """Resolve a batch's futures on the loop: one wake-up per batch."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self._loop.call_soon_threadsafe(_settle, batch, results, error)

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker threads."""
        def drain() -> None:
            with self._ready:
                while self._items or self._running:
                    self._ready.wait(0.05)
                self._stopping = True
                self._ready.notify_all()
            for thread in self._threads:
                if thread.is_alive():
                    thread.join()

        if self._loop is not None:
            await asyncio.to_thread(drain)
            await asyncio.sleep(0)  # let the last hand-back run


def _settle(batch: list[_Item[T, R]], results: list[R] | None,
            error: Exception | None) -> None:
    if results is not None and len(results) != len(batch):
        error, results = ModelError("the model returned a wrong number of results"), None
    for k, item in enumerate(batch):
        if item.future.done():
            continue
        if results is None:
            item.future.set_exception(error or ModelError("the model failed on this batch"))
        else:
            item.future.set_result(results[k])

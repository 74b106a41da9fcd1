"""Finds chunks the broker lost and enqueues them again, so every job finishes.

kombu's Redis transport takes a message with BRPOP and records it as unacknowledged in a
second step. A worker killed between the two loses the message: nothing redelivers it and its
job stays `running` forever (measured: SIGKILL 0-3 ms after a chunk's ack lost the next chunk
in 4 of 8 tries). The same happens to a job whose publisher died between storing the job and
enqueuing its chunks, to a retry whose publish failed, and to a chunk whose transient Redis
errors outlasted its retries.

Each worker runs a sweeper thread; a Redis key lets one sweep per interval run across all of
them. A sweep costs one round trip unless chunks are missing: the chunks still expected (not
done, over unfinished jobs) against the chunk messages present (queued + unacknowledged).
Only then it reads the queue, the unacknowledged hash and the done sets in one MULTI, twice,
`confirm_s` apart, and enqueues again each chunk of a job older than the interval that was in
none of them both times (a live worker is in the gap for milliseconds). A false positive
costs one duplicate run of a chunk; chunk writes are idempotent.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from kombu.exceptions import OperationalError

from batch.store import FINAL, JobStore, done_key
from common.metrics import WorkerMetrics

log = logging.getLogger(__name__)

TURN = "surge:sweep:turn"
Chunk = tuple[str, int]


@dataclass(frozen=True)
class BrokerKeys:
    """Where kombu keeps the chunk messages: the queue (one list per priority step) and the
    hash of unacknowledged messages."""

    queues: tuple[str, ...]
    unacked: str

    @classmethod
    def from_celery(cls, app: Any, queue: str) -> BrokerKeys:
        """Ask the app's own Redis channel for its key names (they are transport options)."""
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            steps = [p for p in channel.priority_steps if p]
            return cls((queue, *(f"{queue}{channel.sep}{p}" for p in steps)),
                       channel.unacked_key)


def chunk_of(raw: str | bytes, task: str) -> Chunk | None:
    """(job id, chunk) of a Celery message for `task`, or None for anything else."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # an unacked entry: [message, exchange, routing key]
            message = message[0]
        if message["headers"]["task"] != task:
            return None
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]  # task protocol 2: [args, kwargs, embed]
        return str(args[0]), int(args[1])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


class ChunkSweeper:
    """One per worker process; `sweep` is also called directly by tests."""

    def __init__(self, store: JobStore, keys: BrokerKeys | Callable[[], BrokerKeys], task: str,
                 publish: Callable[[str, int], None], *, interval_s: float,
                 confirm_s: float | None = None, metrics: WorkerMetrics | None = None):
        self.store = store
        self.redis = store.redis
        # A factory is called on the first sweep: asking kombu connects, and a worker must
        # start while the jobs Redis is down (Celery retries its own connection).
        self._keys = keys
        self.task = task
        self.publish = publish
        self.interval_s = interval_s
        self.confirm_s = min(5.0, interval_s / 2) if confirm_s is None else confirm_s
        self.metrics = metrics

    def start(self) -> threading.Event:
        """Sweep every interval in a daemon thread until the returned event is set."""
        stop = threading.Event()
        threading.Thread(target=self._loop, args=(stop,), name="sweeper", daemon=True).start()
        return stop

    def _loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                if self._my_turn():
                    self.sweep()
            except (redis.RedisError, OperationalError) as exc:  # Redis down: next time
                log.warning("sweep skipped: %s", exc)
            except Exception:  # a sweep must never take the worker down
                log.exception("sweep failed")

    def _my_turn(self) -> bool:
        ttl_ms = max(1, int(self.interval_s * 900))  # expires before the next interval
        return bool(self.redis.set(TURN, secrets.token_hex(4), nx=True, px=ttl_ms))

    @property
    def keys(self) -> BrokerKeys:
        """The broker's key names (asked of kombu once)."""
        if not isinstance(self._keys, BrokerKeys):
            self._keys = self._keys()
        return self._keys

    def sweep(self, now: float | None = None) -> list[Chunk]:
        """Enqueue again the chunks no queue, worker or done set has; returns them."""
        now = time.time() if now is None else now
        active = self.store.active()
        progress = self.store.progress(list(active))
        ended = [job for job, (status, _, _) in progress.items()
                 if status is None or status in FINAL]
        self.store.forget(ended)
        unfinished = {job: (chunks, done) for job, (status, chunks, done) in progress.items()
                      if job not in ended}
        jobs = {job: chunks for job, (chunks, _) in unfinished.items()}
        if sum(chunks - done for chunks, done in unfinished.values()) <= self._present_count():
            return []
        old = {job: chunks for job, chunks in jobs.items()
               if active[job] <= now - self.interval_s}
        lost = self._missing(old)
        if lost:
            time.sleep(self.confirm_s)
            lost &= self._missing(old)
        for job, chunk in sorted(lost):
            self.publish(job, chunk)
            log.warning("chunk lost by the broker, enqueued again",
                        extra={"job": job, "chunk": chunk})
            if self.metrics is not None:
                self.metrics.chunks.labels("recovered").inc()
        return sorted(lost)

    def _present_count(self) -> int:
        with self.redis.pipeline(transaction=False) as pipe:
            for queue in self.keys.queues:
                pipe.llen(queue)
            pipe.hlen(self.keys.unacked)
            return sum(int(n) for n in pipe.execute())

    def _missing(self, jobs: dict[str, int]) -> set[Chunk]:
        """Chunks of `jobs` in neither the queue, the unacked hash nor the done sets, read
        in one transaction (a message moving between them is seen in exactly one)."""
        if not jobs:
            return set()
        with self.redis.pipeline(transaction=True) as pipe:
            for queue in self.keys.queues:
                pipe.lrange(queue, 0, -1)
            pipe.hvals(self.keys.unacked)
            for job in jobs:
                pipe.smembers(done_key(job))
            replies = pipe.execute()
        messages: Iterable[Any] = (m for reply in replies[: len(self.keys.queues) + 1]
                                   for m in reply)
        present = {c for c in (chunk_of(m, self.task) for m in messages) if c is not None}
        missing = set()
        for job, done in zip(jobs, replies[len(self.keys.queues) + 1 :], strict=True):
            finished = {int(c) for c in done}
            missing |= {(job, c) for c in range(jobs[job])
                        if c not in finished and (job, c) not in present}
        return missing

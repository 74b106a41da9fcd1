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

The same turn also puts back the messages of workers that died holding them (their heartbeat
expired: batch/liveness.py), ends a job whose chunks are all done, and sends the end events
waiting in the outbox (batch/events.py). Everything read from kombu's keys follows its private
layout (pinned versions): a message or key layout that does not parse is counted in
`surge_job_broker_parse_errors_total` (alert SurgeJobBrokerUnreadable).
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

from batch.liveness import Reclaimer
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
    unacked_index: str

    @classmethod
    def from_celery(cls, app: Any, queue: str) -> BrokerKeys:
        """Ask the app's own Redis channel for its key names (they are transport options;
        kombu's private layout, pinned in pyproject.toml: a change raises AttributeError,
        counted as a parse error)."""
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            steps = [p for p in channel.priority_steps if p]
            keys = cls((queue, *(f"{queue}{channel.sep}{p}" for p in steps)),
                       channel.unacked_key, channel.unacked_index_key)
        if not all(isinstance(k, str) and k for k in (keys.unacked, keys.unacked_index)):
            raise AttributeError("kombu's Redis channel names no unacked keys")
        return keys


def chunk_of(raw: str | bytes, task: str,
             on_error: Callable[[], None] | None = None) -> Chunk | None:
    """(job id, chunk) of a Celery message for `task`, or None for anything else;
    `on_error` is told of a message that does not parse (kombu's layout changed?)."""
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
        if on_error is not None:
            on_error()
        return None


class ChunkSweeper:
    """One per worker process; `sweep` and `tick` are also called directly by tests."""

    def __init__(self, store: JobStore, keys: BrokerKeys | Callable[[], BrokerKeys], task: str,
                 publish: Callable[[str, int], None], *, interval_s: float,
                 confirm_s: float | None = None, metrics: WorkerMetrics | None = None,
                 reclaim_grace_s: float | None = None,
                 drain: Callable[[], object] | None = None):
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
        # None: no reclaiming of dead workers' messages (tests of the lost-message sweep)
        self.reclaim_grace_s = reclaim_grace_s
        self._reclaimer: Reclaimer | None = None
        self.drain = drain

    def start(self) -> threading.Event:
        """Sweep every interval in a daemon thread until the returned event is set."""
        stop = threading.Event()
        threading.Thread(target=self._loop, args=(stop,), name="sweeper", daemon=True).start()
        return stop

    def _loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                if self._my_turn():
                    self.tick()
                    self.redis.pexpire(TURN, max(1, int(self.interval_s * 900)))
            except (redis.RedisError, OperationalError) as exc:  # Redis down: next time
                log.warning("sweep skipped: %s", exc)
            except Exception:  # a sweep must never take the worker down
                log.exception("sweep failed")

    def tick(self) -> None:
        """One turn: dead workers' messages back on the queue, lost chunks enqueued again,
        finished jobs ended, end events sent."""
        reclaimed = self.reclaimer().reclaim() if self.reclaim_grace_s is not None else []
        self._count("reclaimed", len(reclaimed))
        self.sweep()
        if self.drain is not None:
            self.drain()

    def reclaimer(self) -> Reclaimer:
        """The dead-worker reclaimer on the broker's keys (batch/liveness.py)."""
        if self._reclaimer is None:
            keys = self.keys
            self._reclaimer = Reclaimer(
                self.redis, unacked=keys.unacked, unacked_index=keys.unacked_index,
                queue=keys.queues[0], read_chunk=self._read_chunk,
                grace_s=self.reclaim_grace_s or 0.0, confirm_s=self.confirm_s)
        return self._reclaimer

    def _read_chunk(self, raw: str | bytes) -> Chunk | None:
        return chunk_of(raw, self.task, self._parse_error)

    def _parse_error(self, what: str = "message") -> None:
        if self.metrics is not None:
            self.metrics.broker_parse_errors.labels(what).inc()

    def _count(self, outcome: str, n: int) -> None:
        if self.metrics is not None and n:
            self.metrics.chunks.labels(outcome).inc(n)

    def _my_turn(self) -> bool:
        # Held while the turn runs (its two confirmations sleep), then until the next
        # interval: one sweep at a time across workers.
        ttl_ms = int((self.interval_s * 0.9 + 2 * self.confirm_s) * 1000) + 1000
        return bool(self.redis.set(TURN, secrets.token_hex(4), nx=True, px=ttl_ms))

    @property
    def keys(self) -> BrokerKeys:
        """The broker's key names (asked of kombu once)."""
        if not isinstance(self._keys, BrokerKeys):
            try:
                self._keys = self._keys()
            except AttributeError:
                self._parse_error("layout")
                raise
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
        for job, (chunks, done) in unfinished.items():
            if chunks and done >= chunks and self.store.finish(job, chunks):
                log.warning("job ended by the sweeper (every chunk done, not ended)",
                            extra={"job": job})
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
        present = {c for c in map(self._read_chunk, messages) if c is not None}
        missing = set()
        for job, done in zip(jobs, replies[len(self.keys.queues) + 1 :], strict=True):
            finished = {int(c) for c in done}
            missing |= {(job, c) for c in range(jobs[job])
                        if c not in finished and (job, c) not in present}
        return missing

"""Worker liveness: which worker holds which chunk message, and taking back a dead worker's.

kombu's Redis transport keeps a message a worker took in its unacked hash until the worker
acknowledges it, and hands it out again only after the visibility timeout (an hour: above
any chunk's run time, so a live worker's slow chunk is never handed out twice). A worker
killed mid-chunk (an OOMKilled pod, a lost node) would stall its job for that hour.

So each worker keeps a heartbeat key, `surge:worker:<id>`, with a short TTL
(`SURGE_WORKER_HEARTBEAT_S`), refreshed every second by a thread; its value lists the
delivery tags of the messages the worker holds, written when a message arrives, before its
chunk starts. The sweeper (batch/sweeper.py) takes back each chunk message in the unacked hash
that no live worker holds, seen so twice `confirm_s` apart and older than `grace_s` (a message
is recorded as held milliseconds after kombu records it), and puts it back at the head of its
queue in one script that also removes it from the unacked hash and its index, so kombu will
not restore it again an hour later.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

log = logging.getLogger(__name__)

WORKERS = "surge:workers"  # ids of workers that may hold messages (dead ones are removed)
Chunk = tuple[str, int]

# Back on the queue only if it is still the same unacknowledged message: an ack, kombu's own
# restore or another sweeper got there first otherwise. The push comes first: on a full Redis
# it is refused and nothing changes (the message stays unacked, taken back later).
# KEYS: unacked hash, unacked index, queue. ARGV: delivery tag, entry as read, message.
_RECLAIM = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


def heartbeat_key(worker_id: str) -> str:
    """The key whose presence says this worker is alive; its value, the tags it holds."""
    return f"surge:worker:{worker_id}"


class Heartbeat:
    """This worker's heartbeat and held messages (one per worker process)."""

    def __init__(self, client: redis.Redis, ttl_s: float, worker_id: str | None = None):
        self.redis = client
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        self.refresh_s = min(1.0, ttl_s / 5)
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._dirty = True  # the value in Redis may not say what we hold
        self._failing = False  # log a failure once per streak, not every second

    def hold(self, tag: str) -> None:
        """A message arrived: recorded before its chunk starts (the thread retries a failure)."""
        with self._lock:
            self._held.add(tag)
            self._dirty = True
        self._publish()

    def release(self, tag: str) -> None:
        """The message's chunk ended (acknowledged next)."""
        with self._lock:
            self._held.discard(tag)
            self._dirty = True
        self._publish()

    def beat(self) -> None:
        """Keep the key alive; rewrite it when it changed or vanished (expired, Redis
        restarted). EXPIRE first: unlike SET it works on a full Redis."""
        try:
            if self._dirty or not self.redis.pexpire(heartbeat_key(self.id), self.ttl_ms):
                self._publish()
        except redis.RedisError as exc:
            self._failed(exc)

    def _publish(self) -> None:
        with self._lock:
            value = json.dumps({"tags": sorted(self._held), "at": time.time()})
            self._dirty = False
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(heartbeat_key(self.id), value, px=self.ttl_ms)
                pipe.sadd(WORKERS, self.id)
                pipe.execute()
        except redis.RedisError as exc:
            self._dirty = True  # the thread tries again within a second
            self._failed(exc)
            return
        if self._failing:
            self._failing = False
            log.info("worker heartbeat written again")

    def _failed(self, exc: redis.RedisError) -> None:
        if not self._failing:
            self._failing = True
            log.warning("worker heartbeat not written (retried every %.0f s): %s",
                        self.refresh_s, type(exc).__name__)

    def start(self) -> threading.Event:
        """Beat every `refresh_s` in a daemon thread until the returned event is set."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.refresh_s):
                self.beat()

        self.beat()
        threading.Thread(target=loop, name="heartbeat", daemon=True).start()
        return stop


@dataclass(frozen=True)
class Unacked:
    """One unacknowledged chunk message."""

    raw: str
    chunk: Chunk
    since: float  # when kombu recorded it (its index score)


class Reclaimer:
    """Finds chunk messages no live worker holds and puts them back on their queue."""

    def __init__(self, client: redis.Redis, *, unacked: str, unacked_index: str, queue: str,
                 read_chunk: Callable[[str], Chunk | None], grace_s: float = 5.0,
                 confirm_s: float = 3.0):
        self.redis = client
        self.unacked, self.unacked_index, self.queue = unacked, unacked_index, queue
        self.read_chunk = read_chunk
        self.grace_s = grace_s
        self.confirm_s = confirm_s
        self._reclaim = client.register_script(_RECLAIM)

    def orphans(self, now: float | None = None) -> dict[str, Unacked]:
        """Chunk messages in the unacked hash, older than the grace, no live worker holds."""
        now = time.time() if now is None else now
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.unacked)
            pipe.zrange(self.unacked_index, 0, -1, withscores=True)
            pipe.smembers(WORKERS)
            entries, index, workers = pipe.execute()
        held = self._held(sorted(_text(w) for w in workers))
        since = {_text(tag): float(at) for tag, at in index}
        out = {}
        for tag, raw in ((_text(t), _text(r)) for t, r in entries.items()):
            if tag in held or since.get(tag, now) > now - self.grace_s:
                continue
            chunk = self.read_chunk(raw)
            if chunk is not None:
                out[tag] = Unacked(raw, chunk, since.get(tag, now))
        return out

    def _held(self, workers: list[str]) -> set[str]:
        """Tags held by live workers; workers whose heartbeat is gone leave the set."""
        if not workers:
            return set()
        values: list[Any] = list(self.redis.mget([heartbeat_key(w) for w in workers]))
        held: set[str] = set()
        dead = [w for w, v in zip(workers, values, strict=True) if v is None]
        for value in filter(None, values):
            try:
                held.update(json.loads(value)["tags"])
            except (ValueError, KeyError, TypeError):
                continue  # unreadable: its tags count as not held; a live worker rewrites it
        if dead:
            self.redis.srem(WORKERS, *dead)  # their messages are found without them
        return held

    def reclaim(self) -> list[Chunk]:
        """Put back each orphan seen twice, `confirm_s` apart; returns their chunks."""
        first = self.orphans()
        if not first:
            return []
        time.sleep(self.confirm_s)  # a heartbeat missed once (Redis restarting) is not death
        second = self.orphans()
        taken = []
        for tag, message in first.items():
            if second.get(tag) != message:
                continue
            if self._reclaim(keys=[self.unacked, self.unacked_index, self.queue],
                             args=[tag, message.raw, _redelivered(message.raw)]):
                taken.append(message.chunk)
                log.warning("chunk held by a dead worker, back on the queue",
                            extra={"job": message.chunk[0], "chunk": message.chunk[1],
                                   "unacked_s": round(time.time() - message.since, 1)})
        return taken


def _redelivered(raw: str) -> str:
    """The queue form of an unacked entry ([message, exchange, routing key]), flagged as
    redelivered as kombu's own restore does."""
    message: dict[str, Any] = json.loads(raw)[0]
    message.setdefault("headers", {})["redelivered"] = True
    message.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
    return json.dumps(message)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""Admission to the jobs Redis: refuse new work (503 jobs_full + Retry-After) before the
server passes a fraction of its maxmemory, so jobs already accepted can still write their
results and a full `noeviction` Redis is never reached by client uploads alone.

Cheap: INFO memory is read at most once a second; between reads the bytes admitted since
are added to the last reading, so a burst within that second cannot run past the line."""

from __future__ import annotations

import logging
import threading
import time

import redis

from common.errors import JobsFull

log = logging.getLogger(__name__)
# What one text costs the jobs Redis beyond its own bytes: its list entry, its result (a
# ~150-byte JSON) in the results hash, and their share of the chunk messages.
PER_TEXT_BYTES = 320
# Memory comes back as results are read and expire: minutes, not seconds.
RETRY_AFTER_S = 30


def job_bytes(texts: list[str]) -> int:
    """Estimated jobs-Redis memory of a job with these texts (texts, results, messages)."""
    return sum(len(t.encode("utf-8")) for t in texts) + PER_TEXT_BYTES * len(texts)


class MemoryGate:
    """`admit(nbytes)` raises JobsFull when the jobs Redis would pass `fraction` of its
    maxmemory. Thread-safe (the API calls it from worker threads)."""

    def __init__(self, client: redis.Redis, fraction: float, refresh_s: float = 1.0):
        self.client = client
        self.fraction = fraction
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._used = 0
        self._max = 0
        self._since = 0  # bytes admitted since the last reading
        self._warned = False

    def admit(self, nbytes: int) -> None:
        """Count `nbytes` as admitted, or raise JobsFull (nothing counted)."""
        if self.fraction >= 1:
            return
        with self._lock:
            if time.monotonic() - self._read_at >= self.refresh_s:
                self._read()
            if not self._max:
                return
            limit = int(self.fraction * self._max)
            if self._used + self._since + nbytes > limit:
                raise JobsFull(
                    "the job store is near its memory limit; retry later",
                    {"used_bytes": self._used + self._since, "limit_bytes": limit,
                     "request_bytes": nbytes}, retry_after=RETRY_AFTER_S)
            self._since += nbytes

    def _read(self) -> None:
        info = self.client.info("memory")
        self._used = int(info.get("used_memory", 0))
        self._max = int(info.get("maxmemory", 0))
        self._since = 0
        self._read_at = time.monotonic()
        if not self._max and not self._warned:
            self._warned = True
            log.warning("the jobs Redis has no maxmemory: job admission cannot keep it "
                        "below SURGE_JOBS_MEMORY_FRACTION (set maxmemory on that server)")

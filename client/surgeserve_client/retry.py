"""When to try a request again, and how long to wait: Retry-After when the server says,
jittered exponential backoff otherwise."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

# Busy (429), overloaded or restarting (503), a proxy's gateway errors (502, 504: the
# request may not have reached us, or our deadline passed; both worth a new try).
RETRY_STATUSES = (429, 502, 503, 504)


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries in all; waits grow from `base` to `cap` seconds (half fixed, half
    random, so many clients shed together do not come back together)."""

    attempts: int = 8
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 300.0
    statuses: tuple[int, ...] = RETRY_STATUSES

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before try number `attempt + 1` (attempt counts from 0). A
        Retry-After is honoured (never less), plus up to a fifth of it as jitter."""
        if retry_after is not None:
            wait = min(retry_after, self.max_retry_after)
            return wait + random.uniform(0, max(0.1, wait / 5))
        backoff = min(self.cap, self.base * 2 ** attempt)
        return backoff / 2 + random.uniform(0, backoff / 2)

    def retries_status(self, status: int) -> bool:
        """Whether an answer with this status is worth another try."""
        return status in self.statuses

    def retries_error(self, exc: Exception, idempotent: bool) -> bool:
        """Whether a transport failure is worth another try. A connection never made cannot
        have done anything; any other failure (the server died mid-request) only for calls
        that are safe to repeat (reads, cancels, predictions, keyed job submissions)."""
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            return True
        return idempotent and isinstance(exc, httpx.TransportError)


NO_RETRY = RetryPolicy(attempts=1)

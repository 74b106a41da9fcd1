"""Per-key token buckets. With a cache Redis the bucket lives there (one Lua call per
request, Redis's clock), so every replica shares it; without one, or while that Redis is
unreachable, each replica keeps its own (limits are then per replica, never off)."""

from __future__ import annotations

import hashlib
import logging
import math
import time

from common.errors import RateLimited

log = logging.getLogger(__name__)

# KEYS[1] bucket; ARGV rate/s, burst, cost. Returns the seconds to wait ("0" = allowed).
# A request is let in when the bucket holds its cost (at most a full bucket) and then pays
# its whole cost: the balance may go below zero, and the caller waits until it is paid back,
# so a 256-text request costs 256 texts however small the burst.
_TAKE = """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local need = math.min(cost, burst)
local wait = 0
if tokens >= need then tokens = tokens - cost else wait = (need - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil((burst - math.min(tokens, 0)) / rate) + 1)
return tostring(wait)
"""


class RateLimiter:
    """`await take(who)` raises RateLimited (429, Retry-After) when `who` is over budget."""

    def __init__(self, rate: float, burst: int, redis_url: str | None = None,
                 down_for_s: float = 5.0, *, unit: str = "requests", name: str = "rl"):
        self.rate, self.burst = rate, burst
        self.unit, self.name = unit, name  # what a token is; the bucket family's key prefix
        self._redis, self._script = None, None
        self._errors: tuple[type[Exception], ...] = (OSError,)
        if redis_url:  # redis-py is imported only then (~0.1 s of a cold start without one)
            import redis.asyncio as aioredis
            from redis.exceptions import RedisError

            self._redis = aioredis.Redis.from_url(redis_url, socket_timeout=0.1,
                                                  socket_connect_timeout=0.1)
            self._script = self._redis.register_script(_TAKE)
            self._errors = (RedisError, OSError)
        self._local: dict[str, tuple[float, float]] = {}
        self._down_until = 0.0
        self._down_for_s = down_for_s

    @property
    def enabled(self) -> bool:
        """Whether limits apply."""
        return self.rate > 0

    async def take(self, who: str, cost: int = 1) -> None:
        """Spend `cost` tokens of `who`'s bucket (RateLimited when it does not hold them)."""
        if not self.enabled:
            return
        wait = await self._shared(who, cost)
        if wait is None:
            wait = self._take_local(who, cost)
        if wait > 0:
            raise RateLimited(f"rate limit: {self.rate:g} {self.unit}/s (bursts of "
                              f"{self.burst})", {"retry_after_s": round(wait, 3)},
                              retry_after=max(1, math.ceil(wait)))

    async def _shared(self, who: str, cost: int) -> float | None:
        if self._script is None or time.monotonic() < self._down_until:
            return None
        key = f"surge:{self.name}:" + hashlib.sha256(who.encode()).hexdigest()[:24]
        try:
            return float(await self._script(keys=[key], args=[self.rate, self.burst, cost]))
        except self._errors as exc:
            log.warning("rate limiter: cache Redis unavailable (%s); per-replica buckets "
                        "for %g s", type(exc).__name__, self._down_for_s)
            self._down_until = time.monotonic() + self._down_for_s
            return None

    def _take_local(self, who: str, cost: int) -> float:
        now = time.monotonic()
        if len(self._local) > 100_000:  # bounded memory under many clients: start over
            self._local.clear()
        tokens, ts = self._local.get(who, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - ts) * self.rate)
        need = min(cost, self.burst)
        if tokens >= need:
            self._local[who] = (tokens - cost, now)
            return 0.0
        self._local[who] = (tokens, now)
        return (need - tokens) / self.rate

    async def close(self) -> None:
        """Close the Redis connection."""
        if self._redis is not None:
            await self._redis.aclose()

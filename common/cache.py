"""Two-tier prediction cache: in-process LRU, then Redis. Losing Redis costs speed, not answers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from common.bundle import Ranked
from common.lru import LRU
from common.metrics import CacheMetrics
from common.settings import Settings

log = logging.getLogger(__name__)


class RedisTier:
    """The shared tier. On any Redis error it backs off (exponentially) instead of stalling."""

    def __init__(self, url: str, *, ttl_s: int, timeout_s: float, backoff_max_s: float,
                 metrics: CacheMetrics):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        # One immediate retry: after a Redis restart every pooled connection is stale, and the
        # first command on each fails although the server is back. Only a second failure in a
        # row counts as an outage (and starts the backoff).
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=30, max_connections=64,
            retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError])
        self.ttl_s = ttl_s
        self._metrics = metrics
        self._backoff_max_s = backoff_max_s
        self._backoff_s = 0.0
        self._retry_at = 0.0
        metrics.cache_up.set(1)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: CacheMetrics) -> RedisTier | None:
        """The cache tier the settings describe, or None (cache off, or no SURGE_CACHE_URL)."""
        if not settings.cache_enabled or not settings.cache_url:
            return None
        return cls(settings.cache_url, ttl_s=settings.cache_ttl_s,
                   timeout_s=settings.cache_timeout_s,
                   backoff_max_s=settings.cache_backoff_max_s, metrics=metrics)

    @property
    def available(self) -> bool:
        """False while backing off after a failure."""
        return time.monotonic() >= self._retry_at

    def _failed(self, operation: str, exc: Exception) -> None:
        self._metrics.cache_errors.labels(operation).inc()
        self._metrics.cache_up.set(0)
        self._backoff_s = min(self._backoff_max_s, max(0.1, self._backoff_s * 2))
        self._retry_at = time.monotonic() + self._backoff_s
        log.warning("cache redis %s failed (%s); retry in %.1f s", operation,
                    type(exc).__name__, self._backoff_s)

    def _succeeded(self) -> None:
        if self._backoff_s:
            log.info("cache redis is back")
        self._backoff_s = 0.0
        self._metrics.cache_up.set(1)

    async def mget(self, keys: list[str]) -> list[Ranked | None]:
        """One MGET for all keys; all None when Redis is unavailable."""
        if not keys or not self.available:
            return [None] * len(keys)
        try:
            raw = await self._client.mget(keys)
        except Exception as exc:  # any Redis or socket failure: answer from the model
            self._failed("get", exc)
            return [None] * len(keys)
        self._succeeded()
        return [_decode(v) for v in raw]

    async def set_many(self, items: dict[str, Ranked]) -> None:
        """Write results with a TTL in one pipeline round trip."""
        if not items or not self.available:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, _encode(value), ex=self.ttl_s)
                await pipe.execute()
        except Exception as exc:
            self._failed("set", exc)
            return
        self._succeeded()

    async def ping(self) -> bool:
        """Whether Redis answers now (for /readyz detail; never raises)."""
        try:
            return bool(await self._client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def _encode(value: Ranked) -> str:
    return json.dumps(value, separators=(",", ":"))


def _decode(raw: Any) -> Ranked | None:
    if raw is None:
        return None
    try:
        return [(str(label), float(score)) for label, score in json.loads(raw)]
    except (ValueError, TypeError):
        return None  # a corrupt entry is a miss, not an error


class PredictionCache:
    """LRU first, then one Redis MGET for what the LRU missed; writes return at once."""

    def __init__(self, lru_size: int, redis: RedisTier | None, metrics: CacheMetrics):
        self.lru: LRU[Ranked] = LRU(lru_size)
        self.redis = redis
        self._metrics = metrics
        self._pending: set[asyncio.Task[None]] = set()

    async def lookup(self, keys: list[str]) -> dict[str, Ranked]:
        """Cached results for the keys found (a key absent from the dict is a miss)."""
        found: dict[str, Ranked] = {}
        missed: list[str] = []
        for key in keys:
            value = self.lru.get(key)
            if value is None:
                missed.append(key)
            else:
                found[key] = value
        lookups = self._metrics.cache_lookups
        if found:
            lookups.labels("lru", "hit").inc(len(found))
        if missed:
            lookups.labels("lru", "miss").inc(len(missed))
        if missed and self.redis is not None:
            values = await self.redis.mget(missed)
            hits = 0
            for key, value in zip(missed, values, strict=True):
                if value is not None:
                    found[key] = value
                    self.lru.put(key, value)
                    hits += 1
            if hits:
                lookups.labels("redis", "hit").inc(hits)
            if len(missed) - hits:
                lookups.labels("redis", "miss").inc(len(missed) - hits)
        return found

    def store(self, items: dict[str, Ranked]) -> None:
        """Put results in the LRU now and in Redis in the background (never delays a reply)."""
        for key, value in items.items():
            self.lru.put(key, value)
        if self.redis is not None and items:
            task = asyncio.get_running_loop().create_task(self.redis.set_many(items))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        """Wait for background writes (shutdown, tests)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def close(self) -> None:
        """Flush and close Redis."""
        await self.flush()
        if self.redis is not None:
            await self.redis.close()

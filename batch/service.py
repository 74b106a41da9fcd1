"""JobService: submit, inspect, page and cancel jobs. Transport-free (HTTP and CloudEvents)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis
from kombu.exceptions import OperationalError

from batch.admission import MemoryGate, job_bytes
from batch.celery_app import enqueue_chunk
from batch.events import type_label
from batch.items import ItemIds, ids_bytes
from batch.store import JobStore, is_out_of_memory
from common.errors import (
    JobsFull,
    JobsUnavailable,
    ListingNeedsKey,
    NotFound,
    UnknownModelInput,
)
from common.metrics import Metrics
from common.settings import Settings
from common.textnorm import check_texts, is_text

T = TypeVar("T")
log = logging.getLogger(__name__)


class JobService:
    """Jobs on the jobs Redis; chunks go to Celery workers."""

    def __init__(self, store: JobStore, celery: Any, settings: Settings,
                 metrics: Metrics | None = None,
                 served: Callable[[], list[str]] | None = None):
        self.store = store
        # The names of the models this process has loaded (SURGE_ROLE=all: the worker loads
        # the same settings), for when the settings do not name them.
        self.served = served
        self.celery = celery
        self.settings = settings
        self.metrics = metrics or Metrics()
        # Scrapes read the queue length with a short timeout: a slow Redis must not stall
        # /metrics (the answer is then NaN, not a stale number).
        self._probe = redis.Redis.from_url(str(settings.redis_url), socket_timeout=0.5,
                                           socket_connect_timeout=0.5)
        self.metrics.watch_queue(self.queue_length)
        self.gate = MemoryGate(self._probe, settings.jobs_memory_fraction)

    def queue_length(self) -> float:
        """Chunk messages waiting for a worker (the list KEDA scales the workers on)."""
        try:
            return float(self._probe.llen(self.settings.job_queue))
        except redis.RedisError:
            return float("nan")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store/broker call off the loop; Redis failures become 503."""
        try:
            return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OSError,
                OperationalError) as exc:  # ReadOnlyError: a failover demoted the primary
            raise JobsUnavailable("the job store is unavailable; retry shortly",
                                  retry_after=self.settings.retry_after_s) from exc
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            # noeviction at maxmemory: nothing is stored until room is made (jobs end, expire)
            raise JobsUnavailable("the job store is full; retry later",
                                  retry_after=self.settings.retry_after_s) from exc

    def validate(self, texts: list[str]) -> None:
        """Clear errors before anything is stored or enqueued."""
        check_texts(texts, max_chars=self.settings.max_text_chars,
                    max_items=self.settings.job_max_items, unit="job")

    def check_model(self, model: str | None) -> None:
        """A named model must be one this deployment serves, when the names are known here:
        SURGE_MODELS or SURGE_MODEL_NAME, else the models this process has loaded (role
        all). A jobs-only API that names none leaves it to the worker, which fails the job
        saying why."""
        names = self.settings.model_names()
        if names is None and self.served is not None:
            names = self.served() or None  # none loaded yet: the worker decides
        if model is not None and not (is_text(model) and 0 < len(model) <= 128):
            raise UnknownModelInput("no such model name", {"available": names})
        if model is not None and names is not None and model not in names:
            raise UnknownModelInput(f"no model named {model!r}",
                                    {"model": model, "available": names})

    async def submit(self, texts: list[str], idempotency_key: str | None = None, *,
                     ids: ItemIds | None = None, source: str = "http",
                     model: str | None = None, owner: str | None = None,
                     ) -> tuple[dict[str, Any], bool]:
        """Store the job and enqueue its chunks; a replay (the same idempotency key, kind and
        owner; any number at once) returns the one job, whose creator alone enqueued it.
        `ids` are the items' ids (results carry them back); `model` names one of the served
        models (None: the default)."""
        self.validate(texts)
        self.check_model(model)
        try:
            await self._call(self._admit, texts, ids)
        except JobsFull:
            # a replay stores nothing: it still gets its job when new ones are refused
            replayed = idempotency_key and await self.existing(
                texts, idempotency_key, ids=ids, source=source, model=model, owner=owner)
            if not replayed:
                raise
            return replayed, False
        job, created = await self._call(
            self.store.create, texts, chunk_size=self.settings.job_chunk_size,
            model=model or "", version="pending", idempotency_key=idempotency_key,
            owner=owner or "", kind=source, ids=ids,
            listed=bool(owner or self.settings.jobs_list_anonymous))
        if created:
            try:
                await self._call(self._enqueue, job["id"], job["chunks"])
            except JobsUnavailable as exc:
                # The job is stored, so it is accepted: the sweeper enqueues what is missing
                # once the jobs Redis takes writes again (batch/sweeper.py).
                log.warning("job stored, chunks not all enqueued: %s",
                            type(exc.__cause__).__name__, extra={"job": job["id"]})
            self.metrics.jobs_submitted.labels(source).inc()
        return job, created

    async def existing(self, texts: list[str], idempotency_key: str, *,
                       ids: ItemIds | None = None, source: str = "http",
                       model: str | None = None, owner: str | None = None,
                       ) -> dict[str, Any] | None:
        """The job an earlier request with this key and body made (None: none yet);
        IdempotencyKeyReused (422) for another body. A redelivery stores nothing."""
        return await self._call(self.store.replay, texts, model=model or "",
                                idempotency_key=idempotency_key, owner=owner or "",
                                kind=source, ids=ids)

    def _admit(self, texts: list[str], ids: ItemIds | None = None) -> None:
        self.gate.admit(job_bytes(texts) + ids_bytes(ids))

    async def owned(self, principal: str | None, offset: int, limit: int,
                    ) -> tuple[list[dict[str, Any]], int]:
        """A page of the caller's jobs, newest first, and how many they have listed. A key
        sees its own jobs; without keys, the anonymous jobs if SURGE_JOBS_LIST_ANONYMOUS."""
        if principal is None and not self.settings.jobs_list_anonymous:
            raise ListingNeedsKey("listing jobs needs an API key (on a server without keys "
                                  "set SURGE_JOBS_LIST_ANONYMOUS=true to list anonymous jobs)")
        return await self._call(self.store.owned, principal or "", offset, limit)

    async def dead_letter(self, record: dict[str, Any]) -> None:
        """Keep an event the Broker could not deliver (bounded: see the dead-letter
        settings), and count it by type (ours, or "other")."""
        encoded = json.dumps(record, separators=(",", ":"), default=str)
        await self._call(self.gate.admit, len(encoded))
        await self._call(self.store.add_dead_letter, encoded,
                         keep=self.settings.dead_letter_keep, ttl_s=self.settings.dead_letter_ttl_s)
        self.metrics.events_dead_lettered.labels(
            type_label(record["attributes"].get("type"))).inc()

    def _enqueue(self, job_id: str, chunks: int) -> None:
        for chunk in range(chunks):
            enqueue_chunk(self.celery, self.settings, job_id, chunk)

    async def get(self, job_id: str, principal: str | None = None) -> dict[str, Any]:
        """Status and exact progress. 404 when unknown, expired, or owned by another key
        (the same answer: a key learns nothing about other keys' jobs)."""
        job = await self._call(self.store.require, job_id)
        owner = job.get("owner") or ""
        if principal is not None and owner and owner != principal:
            raise NotFound("no such job (unknown id, or its results expired)", {"id": job_id})
        return job

    async def results(self, job_id: str, offset: int, limit: int,
                      principal: str | None = None,
                      ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The job and one page of its results."""
        job = await self.get(job_id, principal)
        return job, await self._call(self.store.results, job_id, offset, limit)

    async def result_stream(self, job_id: str, principal: str | None = None,
                            ) -> Iterator[dict[str, Any]]:
        """All of a job's results in order, read page by page as they are consumed (by a
        thread: the pages are blocking store reads)."""
        job = await self.get(job_id, principal)
        return self.store.iter_results(job_id, job["total"])

    async def cancel(self, job_id: str, principal: str | None = None) -> dict[str, Any]:
        """Cancel; chunks not yet run are skipped."""
        await self.get(job_id, principal)
        return await self._call(self.store.cancel, job_id)

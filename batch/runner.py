"""One chunk of a job: cache lookup, batched inference for the misses, idempotent write.

Transport-free: the Celery task is a thin wrapper around `ChunkRunner.run`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import redis

from batch.store import FINAL, JobStore, is_out_of_memory
from common.bundle import ModelBundle, Ranked, serving_batching
from common.cache import PredictionCache, RedisTier
from common.metrics import WorkerMetrics
from common.models import ModelSet
from common.payload import SOURCE_JOBS, PayloadLogger
from common.pipeline import CachedPipeline
from common.schemas import ranked_body
from common.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ChunkOutcome:
    """What running a chunk did (for logs, tests and the completion event)."""

    job_id: str
    chunk: int
    computed: int
    cached: int
    skipped: bool = False
    finished_job: bool = False


class ChunkRunner:
    """Runs chunks for one loaded model. One per worker process (the model loads once)."""

    def __init__(self, models: ModelSet | ModelBundle, store: JobStore, settings: Settings,
                 metrics: WorkerMetrics | None = None):
        self.models = (models if isinstance(models, ModelSet)
                       else ModelSet(settings, loaded={models.name: models}))
        self.store = store
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self._pools: dict[str, ThreadPoolExecutor] = {}  # model name -> its streams
        self.payload = PayloadLogger.from_settings(settings, self.metrics.payload_events,
                                                   source=SOURCE_JOBS, pack=False)
        # One event loop per worker process, on its own thread, for the chunks' async steps,
        # and on it one cache pool for the worker's life (not a loop and a pool per chunk).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cache: PredictionCache | None = None
        self._pipelines: dict[str, CachedPipeline] = {}  # model name -> its pipeline
        self._owner = 0  # the process the loop, the cache and the stream pools belong to
        self._lock = threading.Lock()

    def run(self, job_id: str, chunk: int) -> ChunkOutcome:
        """Run one chunk; skipped when the job was cancelled, finished or expired."""
        with self.metrics.chunk_seconds.time():
            outcome = self._run(job_id, chunk)
        m = self.metrics
        m.chunks.labels("skipped" if outcome.skipped else "done").inc()
        if not outcome.skipped:
            m.items.labels("computed").inc(outcome.computed)
            m.items.labels("cached").inc(outcome.cached)
        if outcome.finished_job:
            self.job_ended(job_id)
        return outcome

    def job_ended(self, job_id: str) -> None:
        """Count a job this worker ended (its last chunk, or a failure) and its duration."""
        job = self.store.get(job_id)
        if job is None:
            return
        self.metrics.jobs_finished.labels(job["status"]).inc()
        if job.get("finished_at") and job.get("created_at"):
            took = _timestamp(job["finished_at"]) - _timestamp(job["created_at"])
            self.metrics.job_seconds.observe(max(0.0, took))

    def _run(self, job_id: str, chunk: int) -> ChunkOutcome:
        job = self.store.get(job_id)
        if job is None or job["status"] in FINAL:
            reason = "expired" if job is None else job["status"]
            log.info("chunk skipped", extra={"job": job_id, "chunk": chunk, "reason": reason})
            return ChunkOutcome(job_id, chunk, 0, 0, skipped=True)
        if self.store.chunk_done(job_id, chunk):  # a redelivery of a chunk already written
            finished = self.store.finish(job_id, job["chunks"])  # its writer may have died
            return ChunkOutcome(job_id, chunk, 0, 0, skipped=True, finished_job=finished)
        bundle = self.models.get(job.get("model") or None)  # UnknownModel fails the job
        self._stored(lambda: self.store.mark_running(job_id, bundle.name, bundle.version))
        texts = self.store.chunk_texts(job_id, chunk, job["chunk_size"])
        if not texts:  # the job ended meanwhile (its texts are freed when it ends)
            return ChunkOutcome(job_id, chunk, 0, 0, skipped=True)
        ranked, cached = self._on_loop(self._predict(bundle, texts, f"{job_id}:{chunk}"))
        base = chunk * job["chunk_size"]
        results = {base + i: ranked_body(r) for i, r in enumerate(ranked)}
        written = self.write(job_id, chunk, results, job["chunks"])
        if written is None:  # cancelled (or ended) while computing: nothing kept
            return ChunkOutcome(job_id, chunk, len(texts) - cached, cached, skipped=True)
        return ChunkOutcome(job_id, chunk, len(texts) - cached, cached, finished_job=written)

    def write(self, job_id: str, chunk: int, results: dict[int, dict[str, Any]],
              chunks: int) -> bool | None:
        """The chunk's write (batch/store.py), waiting out a full jobs Redis; then room is
        waited for again, so that the broker's acknowledgement that follows is taken."""
        written = self._stored(lambda: self.store.write_chunk(job_id, chunk, results, chunks))
        self._stored(self.store.require_room)
        return written

    def _stored(self, call: Callable[[], T]) -> T:
        """A job-store call that waits while the jobs Redis is full (maxmemory, noeviction),
        backing off up to 5 s between tries: the chunk's message stays unacknowledged and
        held by this live worker, so nothing else runs it meanwhile, and nothing is lost."""
        delay = 0.5
        while True:
            try:
                return call()
            except redis.ResponseError as exc:
                if not is_out_of_memory(exc):
                    raise
            log.warning("jobs Redis full (maxmemory): waiting %.1f s for room", delay)
            time.sleep(delay)
            delay = min(5.0, delay * 2)

    async def _predict(self, bundle: ModelBundle, texts: list[str], request_id: str,
                       ) -> tuple[list[Ranked], int]:
        """The chunk through the cached-prediction pipeline (one payload event per chunk);
        its results are in the cache before the chunk's write."""
        answers = await self._pipeline(bundle).run(texts, request_id)
        if self._cache is not None:
            await self._cache.flush()
        return [a.scores for a in answers], sum(a.cached for a in answers)

    def _on_loop(self, coro: Coroutine[object, object, T]) -> T:
        """Run `coro` on the worker's loop from any thread (Celery's solo or threads pool).
        A process forked after the loop started (prefork) starts its own loop, cache pool
        and stream threads: threads do not survive a fork, and a pool is its process's."""
        with self._lock:
            if self._loop is None or self._owner != os.getpid():
                self._loop, self._owner = asyncio.new_event_loop(), os.getpid()
                threading.Thread(target=_serve, args=(self._loop,), name="chunk-loop",
                                 daemon=True).start()
                tier = RedisTier.from_settings(self.settings, self.metrics)
                self._cache = PredictionCache(0, tier, self.metrics) if tier else None
                self._pipelines, self._pools = {}, {}
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def _pipeline(self, bundle: ModelBundle) -> CachedPipeline:
        """This model's pipeline (its misses: `_predict_parallel`, off the loop)."""
        pipeline = self._pipelines.get(bundle.name)
        if pipeline is None or pipeline.bundle is not bundle:

            async def compute(misses: dict[str, str]) -> dict[str, Ranked]:
                ranked = await asyncio.to_thread(self._predict_parallel, bundle,
                                                 list(misses.values()))
                return dict(zip(misses, ranked, strict=True))

            pipeline = self._pipelines[bundle.name] = CachedPipeline(
                bundle, self._cache, compute, payload=self.payload)
        return pipeline

    def close(self) -> None:
        """Flush and close the cache pool, then stop the loop (tests, shutdown)."""
        if self._loop is not None and self._owner == os.getpid():
            if self._cache is not None:
                self._on_loop(self._cache.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop = None

    def _predict_parallel(self, bundle: ModelBundle, texts: list[str]) -> list[Ranked]:
        """The chunk sorted as a whole and cut into passes by the engine's rule, the passes
        run on every engine stream at once (the engine the chooser measured fastest)."""
        cut = serving_batching(bundle, self.settings, whole=True)
        return bundle.predict(texts, cut.max_batch, cut.max_forward_tokens, cut.max_padding,
                              streams=self._streams(bundle))

    def _streams(self, bundle: ModelBundle) -> ThreadPoolExecutor:
        """One thread per engine stream of this model, kept for the worker's life."""
        workers = self.settings.model_workers or bundle.streams
        pool = self._pools.get(bundle.name)
        if pool is None:
            pool = self._pools[bundle.name] = ThreadPoolExecutor(
                workers, thread_name_prefix=f"model-{bundle.name}")
        return pool


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _timestamp(iso: str) -> float:
    """Seconds since the epoch of a store timestamp (`2026-11-21T10:00:00Z`)."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

"""The chunk task's logic, called directly (the real-worker tests are in test_jobs*.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

import batch.celery_app as celery_app
from batch.runner import ChunkRunner
from batch.store import JobStore
from common.bundle import ModelBundle
from common.redis_server import RedisServer
from common.settings import Settings


class BrokenBackend:
    kind = "broken"
    precision = "fp32"
    streams = 1

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [[1] for _ in texts]

    def logits(self, batch_ids: list[list[int]]):  # type: ignore[no-untyped-def]
        raise RuntimeError("weights on fire")


def test_a_failing_chunk_fails_the_job_once(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    server = RedisServer("jobs", tmp_path / "redis").start()
    try:
        settings = Settings(redis_url=server.url, cache="off", k_sink=None)
        store = JobStore.from_url(server.url, ttl_s=600)
        bundle = ModelBundle(name="broken", version="0", labels=["A", "B"], lowercase=False,
                             max_tokens=8, path=tmp_path, manifest={}, engine=BrokenBackend())
        monkeypatch.setattr(celery_app, "_runner", ChunkRunner(bundle, store, settings))
        task = SimpleNamespace(app=SimpleNamespace(conf=SimpleNamespace(surge_settings=settings)))
        job, _ = store.create(["a", "b", "c"], chunk_size=2, model="broken", version="0")
        with pytest.raises(RuntimeError):
            celery_app.run_chunk(task, job["id"], 0)
        failed = store.get(job["id"])
        assert failed["status"] == "failed" and failed["error"] == "chunk 0: RuntimeError"
        from batch.api import _view

        assert _view(failed)["failed"] == 3  # no item got a result
        assert "weights on fire" not in failed["error"]  # the cause is logged, not stored
        # A later chunk of the failed job is skipped, not run.
        assert celery_app.run_chunk(task, job["id"], 1)["skipped"] is True
    finally:
        server.stop()


class CountingBackend:
    """A working engine: the first label wins; counts the texts it computed."""

    kind = "counting"
    precision = "fp32"
    streams = 1

    def __init__(self) -> None:
        self.computed = 0

    def encode(self, texts: list[str]) -> list[list[int]]:
        self.computed += len(texts)
        return [[1] * min(8, len(t)) for t in texts]

    def logits(self, batch_ids: list[list[int]]):  # type: ignore[no-untyped-def]
        import numpy as np

        return np.array([[2.0, 0.0] for _ in batch_ids], dtype=np.float32)


def test_chunks_share_one_loop_and_one_cache_pool_per_worker(tmp_path: Path) -> None:
    """A worker's chunks run on one event loop with one cache connection pool (not a loop
    and a pool per chunk, which reconnected to the cache Redis for every chunk), and go
    through the cached pipeline: texts cached by one chunk are not computed again."""
    jobs = RedisServer("jobs", tmp_path / "jobs").start()
    cache = RedisServer("cache", tmp_path / "cache").start()
    try:
        settings = Settings(redis_url=jobs.url, cache_url=cache.url, k_sink=None)
        store = JobStore.from_url(jobs.url, ttl_s=600)
        engine = CountingBackend()
        bundle = ModelBundle(name="counting", version="0", labels=["A", "B"], lowercase=False,
                             max_tokens=8, path=tmp_path, manifest={}, engine=engine)
        runner = ChunkRunner(bundle, store, settings)
        texts = [f"text {i}" for i in range(8)]
        job, _ = store.create(texts * 3, chunk_size=8, model="counting", version="0")
        cache_client = redis.Redis.from_url(cache.url)
        outcomes = [runner.run(job["id"], 0)]
        connections = cache_client.info("stats")["total_connections_received"]
        outcomes += [runner.run(job["id"], chunk) for chunk in (1, 2)]
        assert cache_client.info("stats")["total_connections_received"] == connections
        assert [(o.computed, o.cached) for o in outcomes] == [(8, 0), (0, 8), (0, 8)]
        assert engine.computed == 8 and outcomes[-1].finished_job
        assert store.get(job["id"])["status"] == "succeeded"
        runner.close()
        cache_client.close()
    finally:
        cache.stop()
        jobs.stop()

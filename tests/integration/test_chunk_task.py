"""The chunk task's logic, called directly (the real-worker tests are in test_jobs*.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

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

"""The sweeper on a real jobs Redis with real kombu messages (no worker: each place a chunk
message can be is set up by hand; the worker tests are in test_jobs_faults.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from batch.celery_app import RUN_CHUNK, create_celery, enqueue_chunk
from batch.store import JobStore
from batch.sweeper import BrokerKeys, ChunkSweeper, chunk_of
from common.metrics import WorkerMetrics
from common.redis_server import RedisServer
from common.settings import Settings


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Celery, Settings, JobStore]]:
    server = RedisServer("jobs", tmp_path / "redis").start()
    settings = Settings(redis_url=server.url, cache="off")
    app = create_celery(settings)
    store = JobStore.from_url(server.url, ttl_s=600)
    try:
        yield app, settings, store
    finally:
        store.redis.close()
        app.close()
        server.stop()


def sweeper_for(app: Celery, settings: Settings, store: JobStore, published: list[Any],
                **kwargs: Any) -> ChunkSweeper:
    def publish(job_id: str, chunk: int) -> None:
        published.append((job_id, chunk))
        enqueue_chunk(app, settings, job_id, chunk)

    return ChunkSweeper(store, BrokerKeys.from_celery(app, settings.job_queue), RUN_CHUNK,
                        publish, **({"interval_s": 10, "confirm_s": 0} | kwargs))


def submit(app: Celery, settings: Settings, store: JobStore, chunks: int) -> str:
    job, _ = store.create([f"text {i}" for i in range(chunks)], chunk_size=1, model="m",
                          version="1")
    for chunk in range(chunks):
        enqueue_chunk(app, settings, job["id"], chunk)
    return str(job["id"])


def test_only_a_chunk_that_is_nowhere_is_enqueued_again(broker) -> None:  # type: ignore[no-untyped-def]
    app, settings, store = broker
    job = submit(app, settings, store, 4)
    queue = settings.job_queue
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        running = channel.basic_get(queue, no_ack=False)  # chunk 0: a live worker holds it
        finished = channel.basic_get(queue, no_ack=False)  # chunk 1: run, written, acked
        store.write_chunk(job, 1, {1: {"label": "A"}}, 4)
        channel.basic_ack(finished.delivery_tag)
        store.redis.rpop(queue)  # chunk 2: taken by a worker that died before recording it
        # chunk 3 waits in the queue
        published: list[Any] = []
        metrics = WorkerMetrics()
        sweeper = sweeper_for(app, settings, store, published, metrics=metrics)
        assert sweeper.sweep(now=time.time()) == []  # the job is younger than the interval
        assert sweeper.sweep(now=time.time() + 11) == [(job, 2)]
        assert published == [(job, 2)]
        assert metrics.registry.get_sample_value("surge_job_chunks_total",
                                                 {"outcome": "recovered"}) == 1
        assert sweeper.sweep(now=time.time() + 11) == []  # now queued: not enqueued twice
        assert sorted(chunk_of(m, RUN_CHUNK)[1] for m in store.redis.lrange(queue, 0, -1)) \
            == [2, 3]
        channel.basic_ack(running.delivery_tag)


def test_a_message_back_in_place_before_the_confirmation_is_left_alone(broker) -> None:  # type: ignore[no-untyped-def]
    app, settings, store = broker
    job = submit(app, settings, store, 2)
    raw = store.redis.rpop(settings.job_queue)  # in flight: popped, not yet recorded
    threading.Timer(0.2, store.redis.rpush, (settings.job_queue, raw)).start()
    published: list[Any] = []
    sweeper = sweeper_for(app, settings, store, published, confirm_s=0.6)
    assert sweeper.sweep(now=time.time() + 11) == [] and published == []
    assert store.redis.llen(settings.job_queue) == 2
    assert chunk_of(raw, RUN_CHUNK) == (job, 0)


def test_ended_and_expired_jobs_leave_the_index(broker) -> None:  # type: ignore[no-untyped-def]
    app, settings, store = broker
    cancelled, expired, finished, running = (submit(app, settings, store, 1) for _ in range(4))
    store.cancel(cancelled)
    assert cancelled not in store.active()  # the cancel took it off at once
    store.redis.delete(f"surge:job:{expired}")  # its retention ran out
    store.write_chunk(finished, 0, {0: {"label": "A"}}, 1)
    assert finished not in store.active()  # the last chunk took it off
    store.redis.zadd("surge:jobs:active", {finished: 0})  # as if a finish had not removed it
    sweeper = sweeper_for(app, settings, store, [])
    assert sweeper.sweep(now=time.time() + 11) == []
    assert list(store.active()) == [running]


def test_chunk_of_reads_only_chunk_messages(broker) -> None:  # type: ignore[no-untyped-def]
    app, settings, store = broker
    job = submit(app, settings, store, 1)
    app.send_task("someone.else", args=[job, 0], queue=settings.job_queue)
    raw = store.redis.lrange(settings.job_queue, 0, -1)
    assert sorted(filter(None, (chunk_of(m, RUN_CHUNK) for m in raw))) == [(job, 0)]
    with app.connection_for_read() as conn:
        message = conn.default_channel.basic_get(settings.job_queue, no_ack=False)
        unacked = store.redis.hvals("unacked")
        conn.default_channel.basic_ack(message.delivery_tag)
    assert [chunk_of(m, RUN_CHUNK) for m in unacked] == [(job, 0)]  # [message, exchange, key]
    for junk in ("", "[]", "{}", "not json", '{"headers": {"task": "surgeserve.run_chunk"}}'):
        assert chunk_of(junk, RUN_CHUNK) is None

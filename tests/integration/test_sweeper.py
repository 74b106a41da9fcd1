"""The sweeper on a real jobs Redis with real kombu messages (no worker: each place a chunk
message can be is set up by hand; the worker tests are in test_jobs_faults.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from batch.celery_app import RUN_CHUNK, create_celery, enqueue_chunk
from batch.liveness import Heartbeat
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
    # back after 0.2 s, long before the 2 s confirmation (a slow thread start is no race)
    threading.Timer(0.2, store.redis.rpush, (settings.job_queue, raw)).start()
    published: list[Any] = []
    sweeper = sweeper_for(app, settings, store, published, confirm_s=2.0)
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


def test_the_broker_layout_is_the_pinned_one(broker) -> None:  # type: ignore[no-untyped-def]
    # The sweeper reads kombu's private layout; pyproject pins the versions it was tested on.
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    pins = {r.name: r.specifier for r in map(Requirement, pyproject["project"]["dependencies"])
            if r.name in ("celery", "kombu")}
    assert set(pins) == {"celery", "kombu"}
    for name, spec in pins.items():
        assert str(spec).startswith("=="), f"{name} is not pinned: {spec}"
        assert version(name) in spec, f"installed {name} {version(name)} is not {spec}"
    app, settings, _ = broker
    keys = BrokerKeys.from_celery(app, settings.job_queue)
    assert keys == BrokerKeys(("surgeserve.chunks", *(f"surgeserve.chunks\x06\x16{p}"
                                                      for p in (3, 6, 9))),
                              "unacked", "unacked_index")


def taken(app: Celery, settings: Settings, n: int) -> tuple[list[Any], Any]:
    """`n` messages taken by a consumer (in kombu's unacked hash and index), not acked, and
    the consumer's connection."""
    conn = app.connection_for_read()
    channel = conn.default_channel
    return [channel.basic_get(settings.job_queue, no_ack=False) for _ in range(n)], conn


def test_only_messages_no_live_worker_holds_are_put_back(broker) -> None:  # type: ignore[no-untyped-def]
    app, settings, store = broker
    job = submit(app, settings, store, 3)
    app.send_task("someone.else", args=[job, 9], queue=settings.job_queue)
    (live, dead, _nobody, other), conn = taken(app, settings, 4)
    alive = Heartbeat(store.redis, ttl_s=10)
    alive.hold(live.delivery_tag)
    gone = Heartbeat(store.redis, ttl_s=2)  # a worker that was SIGKILLed holding chunk 1
    gone.hold(dead.delivery_tag)
    time.sleep(2.1)  # its heartbeat expires; chunk 2's holder died before recording it
    sweeper = sweeper_for(app, settings, store, [], reclaim_grace_s=0, confirm_s=0.2)
    assert sorted(sweeper.reclaimer().reclaim()) == [(job, 1), (job, 2)]
    unacked = store.redis.hgetall("unacked")
    assert set(unacked) == {live.delivery_tag, other.delivery_tag}
    assert set(store.redis.zrange("unacked_index", 0, -1)) == set(unacked)  # kombu won't
    # restore them an hour later: they are back at the head of the queue, redelivered
    back = [chunk_of(m, RUN_CHUNK) for m in store.redis.lrange(settings.job_queue, 0, -1)]
    assert sorted(back) == [(job, 1), (job, 2)]
    again = conn.default_channel.basic_get(settings.job_queue, no_ack=False)
    assert again.delivery_info["redelivered"] is True
    assert json.loads(again.body)[0][1] in (1, 2)  # kombu and Celery read it as before
    assert gone.id not in store.redis.smembers("surge:workers")
    assert alive.id in store.redis.smembers("surge:workers")
    conn.release()


def test_a_young_or_acked_orphan_is_left_alone(broker) -> None:  # type: ignore[no-untyped-def]
    app, settings, store = broker
    submit(app, settings, store, 2)
    (first, _second), conn = taken(app, settings, 2)
    young = sweeper_for(app, settings, store, [], reclaim_grace_s=60, confirm_s=0)
    assert young.reclaimer().reclaim() == []  # a worker lists its message ms after kombu
    sweeper = sweeper_for(app, settings, store, [], reclaim_grace_s=0, confirm_s=2.0)
    # acked after 0.2 s, long before the 2 s confirmation
    threading.Timer(0.2, conn.default_channel.basic_ack, (first.delivery_tag,)).start()
    assert [c for _, c in sweeper.reclaimer().reclaim()] == [1]  # the acked one stays acked
    assert store.redis.hlen("unacked") == 0 and store.redis.llen(settings.job_queue) == 1
    conn.release()


def test_unreadable_broker_data_is_counted(broker) -> None:  # type: ignore[no-untyped-def]
    app, settings, store = broker
    store.redis.hset("unacked", "tag-1", "not a kombu entry")
    store.redis.zadd("unacked_index", {"tag-1": 0})
    metrics = WorkerMetrics()
    sweeper = sweeper_for(app, settings, store, [], metrics=metrics, reclaim_grace_s=0)
    sweeper.tick()
    assert metrics.registry.get_sample_value("surge_job_broker_parse_errors_total",
                                             {"what": "message"}) == 1
    assert store.redis.hget("unacked", "tag-1") == "not a kombu entry"  # left alone

    def renamed() -> BrokerKeys:
        raise AttributeError("'Channel' object has no attribute 'unacked_key'")

    broken = ChunkSweeper(store, renamed, RUN_CHUNK, lambda j, c: None, interval_s=10,
                          metrics=metrics, reclaim_grace_s=0)
    store.create(["x"], chunk_size=1, model="m", version="1")
    with pytest.raises(AttributeError):
        broken.tick()
    assert metrics.registry.get_sample_value("surge_job_broker_parse_errors_total",
                                             {"what": "layout"}) == 1

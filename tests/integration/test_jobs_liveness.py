"""Exactly once under the faults that break it, with DEFAULT timing settings (visibility
timeout 3600 s, sweep 5 s, heartbeat 10 s) and real worker processes: a worker SIGKILLed at a
random moment mid-job, a live worker's slow chunk, a SIGKILL right after a job's final write
(its end event), a jobs Redis filled to maxmemory mid-job and at the exact moment of kombu's
acknowledgement. Each checks every index once, one job, its end event, and the time to
recover (printed: `pytest -s` shows the figures)."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator

import pytest
import redis

from common.corpus import snippets
from tests.integration.event_sink import Sink
from tests.integration.fault_worker import holding_key, runs_key
from tests.integration.test_jobs import jobs_redis, start_worker, wait_done
from tests.integration.test_jobs_faults import results_of
from tests.integration.test_jobs_submit import jobs_only

__all__ = ["jobs_only", "jobs_redis", "start_worker"]  # fixtures used by name


@pytest.fixture
def broker(jobs_redis) -> Iterator[redis.Redis]:  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(jobs_redis.url, decode_responses=True)
    yield client
    client.close()


def runs(broker: redis.Redis, job_id: str, chunks: int) -> list[int]:
    return [int(broker.get(runs_key(job_id, c)) or 0) for c in range(chunks)]


def held_chunk(broker: redis.Redis, pid: int) -> int | None:
    """The chunk the worker process `pid` is running now (fault_worker records it)."""
    value = broker.get(holding_key(pid))
    return int(value) if value is not None else None


def every_index_once(url: str, job_id: str, total: int) -> None:
    assert sorted(int(i) for i in results_of(url, job_id)) == list(range(total))


def one_end_event(sink: Sink, job_id: str, kind: str) -> None:
    """The job's end event arrived, once."""
    sink.wait(1, timeout=30)
    time.sleep(6)  # a sweep later: nothing more
    assert [(e["id"], e["type"]) for e in sink.received] == [(f"{job_id}-ended", kind)]


@pytest.fixture
def sink() -> Iterator[Sink]:
    receiver = Sink()
    yield receiver
    receiver.close()


@pytest.mark.slow
def test_a_worker_sigkilled_at_a_random_moment_loses_nothing_with_defaults(
        jobs_only, jobs_redis, start_worker, broker, sink) -> None:  # type: ignore[no-untyped-def]
    client = jobs_only(job_chunk_size=256)
    workers = [start_worker(fault="", K_SINK=sink.url) for _ in range(2)]
    job_id = client.post("/v1/jobs", json={"texts": snippets(3000)}).json()["id"]
    chunks = 12
    # A random moment of the job, by its progress rather than by a clock (the job takes
    # 5-40 s, by machine and engine): after 1 to 9 of its 12 chunks are written, at least 3
    # are left, so both workers still hold one.
    after = random.randint(1, chunks - 3)
    started = time.monotonic()
    while client.get(f"/v1/jobs/{job_id}").json()["done"] < after * 256:
        time.sleep(0.02)
    pause = time.monotonic() - started
    deadline = time.monotonic() + 30
    while True:  # the kill lands on a worker holding a chunk: the case that stalled an hour
        holding = [(w, c) for w in workers if (c := held_chunk(broker, w.pid)) is not None]
        if holding:
            victim, chunk = random.choice(holding)
            # Frozen, it cannot finish the chunk between this look and the kill.
            victim.send_signal(signal.SIGSTOP)
            if (held_chunk(broker, victim.pid) == chunk
                    and not broker.sismember(f"surge:job:{job_id}:done", chunk)):
                break
            victim.send_signal(signal.SIGCONT)  # it had just finished: look again
        assert time.monotonic() < deadline, "no worker held a chunk"
        time.sleep(0.01)
    before = runs(broker, job_id, chunks)[chunk]
    victim.kill()  # SIGKILL: its chunk stays in kombu's unacked hash
    killed = time.monotonic()
    while runs(broker, job_id, chunks)[chunk] == before:
        assert time.monotonic() - killed < 60, "the dead worker's chunk never ran again"
        time.sleep(0.05)
    rerun_s = time.monotonic() - killed
    while not broker.sismember(f"surge:job:{job_id}:done", chunk):
        time.sleep(0.05)
    done_s = time.monotonic() - killed
    job = wait_done(client, job_id, timeout=180)
    print(f"\nSIGKILL {pause:.1f} s into the job ({after} chunks written), chunk {chunk}: "
          f"runs again after {rerun_s:.1f} s, written after {done_s:.1f} s")
    assert job["status"] == "succeeded" and job["done"] == 3000
    every_index_once(jobs_redis.url, job_id, 3000)
    counted = runs(broker, job_id, chunks)
    assert counted == [2 if c == chunk else 1 for c in range(chunks)], counted
    assert rerun_s < 30
    one_end_event(sink, job_id, "dev.surgeserve.job.completed")


@pytest.mark.slow
def test_a_live_workers_slow_chunk_is_never_run_twice(jobs_only, jobs_redis, start_worker,
                                                      broker) -> None:  # type: ignore[no-untyped-def]
    client = jobs_only()  # chunks of 100
    start_worker(fault="slow-chunk=0:35")  # 35 s: 3.5x the heartbeat TTL, 7 sweeps
    job_id = client.post("/v1/jobs", json={"texts": snippets(300)}).json()["id"]
    started = time.monotonic()
    while runs(broker, job_id, 3)[0] == 0:
        assert time.monotonic() - started < 60
        time.sleep(0.05)
    start_worker(fault="")  # idle after chunks 1 and 2: it would take a reclaimed chunk 0
    job = wait_done(client, job_id, timeout=120)
    assert time.monotonic() - started >= 35
    assert job["status"] == "succeeded" and job["done"] == 300
    assert runs(broker, job_id, 3) == [1, 1, 1]
    every_index_once(jobs_redis.url, job_id, 300)


@pytest.mark.slow
def test_sigkill_right_after_the_final_write_still_sends_the_end_event(
        jobs_only, jobs_redis, start_worker, broker) -> None:  # type: ignore[no-untyped-def]
    sink = Sink(fail_first=1)  # and the first send is refused: resent, same id
    try:
        client = jobs_only()
        first = start_worker(fault="kill-after-final-write", K_SINK=sink.url)
        job_id = client.post("/v1/jobs", json={"texts": snippets(150)}).json()["id"]
        assert first.wait(timeout=120) == -9  # killed between the final write and the send
        killed = time.monotonic()
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded" and job["done"] == 150
        assert sink.received == sink.refused == []  # nothing was sent
        start_worker(K_SINK=sink.url)
        sink.wait(1, timeout=90)
        print(f"\nend event delivered {time.monotonic() - killed:.1f} s after the SIGKILL "
              f"({len(sink.refused)} refused sends first)")
        time.sleep(6)  # one more sweep: nothing else is sent once K_SINK took it
        events = sink.refused + sink.received
        assert len(sink.received) == 1 and len(sink.refused) == 1
        assert {e["id"] for e in events} == {f"{job_id}-ended"}
        assert {e["type"] for e in events} == {"dev.surgeserve.job.completed"}
        assert sink.received[0]["data"]["status"] == "succeeded"
        assert sink.received[0]["data"]["done"] == 150
        assert not broker.hexists("surge:outbox", job_id)
        every_index_once(jobs_redis.url, job_id, 150)
    finally:
        sink.close()


def test_a_cancelled_job_sends_its_cancelled_event(jobs_only, jobs_redis, start_worker,
                                                   broker) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    try:
        client = jobs_only()
        start_worker(K_SINK=sink.url)
        job_id = client.post("/v1/jobs", json={"texts": snippets(3000)}).json()["id"]
        cancelled = client.delete(f"/v1/jobs/{job_id}").json()
        assert cancelled["status"] == "cancelled"
        assert not broker.exists(f"surge:job:{job_id}:texts")  # freed at once
        sink.wait(1, timeout=60)  # sent by a sweep (the API has no K_SINK)
        event = sink.received[0]
        assert event["type"] == "dev.surgeserve.job.cancelled"
        assert event["id"] == f"{job_id}-ended" and event["data"]["status"] == "cancelled"
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    finally:
        sink.close()


@pytest.mark.slow
def test_a_jobs_redis_full_mid_job_pauses_the_worker_and_the_job_finishes(
        jobs_only, jobs_redis, start_worker, broker, sink) -> None:  # type: ignore[no-untyped-def]
    client = jobs_only(job_chunk_size=256)
    worker = start_worker(fault="", K_SINK=sink.url)
    job_id = client.post("/v1/jobs", json={"texts": snippets(1500)}).json()["id"]
    while client.get(f"/v1/jobs/{job_id}").json()["done"] < 256:
        time.sleep(0.05)
    used = int(broker.info("memory")["used_memory"])
    # Full: noeviction refuses writes. Half of what is used, not just under it: used_memory
    # counts client buffers that Redis may shrink a moment later, making room again.
    broker.config_set("maxmemory", used // 2)
    try:
        time.sleep(3)
        stalled = client.get(f"/v1/jobs/{job_id}").json()["done"]
        refused = client.post("/v1/jobs", json={"texts": ["while full"]})
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        time.sleep(7)
        assert worker.poll() is None, "the worker died on a full jobs Redis"
        assert client.get(f"/v1/jobs/{job_id}").json()["done"] == stalled < 1500
    finally:
        broker.config_set("maxmemory", 0)
    freed = time.monotonic()
    while client.get(f"/v1/jobs/{job_id}").json()["done"] == stalled:
        assert time.monotonic() - freed < 60, "no progress after memory was freed"
        time.sleep(0.05)
    resumed_s = time.monotonic() - freed
    job = wait_done(client, job_id, timeout=180)
    print(f"\nfull jobs Redis: progress again {resumed_s:.1f} s after memory was freed, "
          f"finished after {time.monotonic() - freed:.1f} s")
    assert worker.poll() is None
    assert job["status"] == "succeeded" and job["done"] == 1500
    every_index_once(jobs_redis.url, job_id, 1500)
    assert runs(broker, job_id, 6) == [1] * 6
    one_end_event(sink, job_id, "dev.surgeserve.job.completed")


def test_a_jobs_redis_full_at_the_acknowledgement_does_not_kill_the_worker(
        jobs_only, jobs_redis, start_worker, broker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = jobs_only()  # chunks of 100
    worker = start_worker(fault="full-at-ack=1")
    job_id = client.post("/v1/jobs", json={"texts": snippets(300)}).json()["id"]
    while not broker.exists("test:full-done"):
        time.sleep(0.05)
    time.sleep(8)  # kombu's ack met a full Redis (it killed the worker before)
    assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    broker.config_set("maxmemory", 0)
    freed = time.monotonic()
    job = wait_done(client, job_id, timeout=120)
    print(f"\nfull at the ack: finished {time.monotonic() - freed:.1f} s after memory freed")
    assert worker.poll() is None
    assert job["status"] == "succeeded" and job["done"] == 300
    every_index_once(jobs_redis.url, job_id, 300)

"""Nothing lost on failure: a worker SIGKILLed mid-job, the jobs Redis restarted (AOF)."""

from __future__ import annotations

import json
import time

import redis

from batch.store import JobStore
from common.corpus import snippets
from common.redis_server import RedisServer
from tests.integration.test_jobs import jobs_api, jobs_redis, start_worker, wait_done, worker

__all__ = ["jobs_api", "jobs_redis", "start_worker", "worker"]  # fixtures used below


def results_of(url: str, job_id: str) -> dict[str, dict]:  # type: ignore[type-arg]
    raw = redis.Redis.from_url(url, decode_responses=True).hgetall(f"surge:job:{job_id}:results")
    return {k: json.loads(v) for k, v in raw.items()}


def test_worker_killed_mid_job_loses_and_duplicates_nothing(jobs_api, jobs_redis,
                                                            start_worker) -> None:
    texts = snippets(1500)
    # A kill in the ms after a chunk's ack can also lose the next message (kombu popped it,
    # had not recorded it): the sweeper enqueues that one again.
    first = start_worker(SURGE_VISIBILITY_TIMEOUT_S="4", SURGE_JOB_SWEEP_S="1")
    job_id = jobs_api.post("/v1/jobs", json={"texts": texts}).json()["id"]
    deadline = time.monotonic() + 60
    while jobs_api.get(f"/v1/jobs/{job_id}").json()["done"] == 0:
        assert time.monotonic() < deadline, "the worker never started the job"
        time.sleep(0.05)
    first.kill()  # SIGKILL: its current chunk is unacknowledged and must be redelivered
    first.wait()
    done_at_kill = jobs_api.get(f"/v1/jobs/{job_id}").json()["done"]
    assert 0 < done_at_kill < len(texts), "the kill did not land mid-job"
    start_worker(SURGE_VISIBILITY_TIMEOUT_S="4", SURGE_JOB_SWEEP_S="1")
    job = wait_done(jobs_api, job_id, timeout=120)
    assert job["status"] == "succeeded" and job["done"] == len(texts)
    stored = results_of(jobs_redis.url, job_id)
    assert sorted(int(i) for i in stored) == list(range(len(texts)))  # each index once
    page = jobs_api.get(f"/v1/jobs/{job_id}/results?offset=0&limit=1000").json()
    assert [r["index"] for r in page["results"]] == list(range(1000))


def test_a_chunk_message_the_broker_lost_is_run_again(jobs_api, jobs_redis, start_worker,
                                                      tmp_path) -> None:
    texts = snippets(300)
    job_id = jobs_api.post("/v1/jobs", json={"texts": texts}).json()["id"]
    broker = redis.Redis.from_url(jobs_redis.url)
    # What a worker killed between kombu's BRPOP and its unacked record leaves: no message.
    assert broker.rpop("surgeserve.chunks") is not None
    broker.close()
    start_worker(SURGE_JOB_SWEEP_S="1")
    job = wait_done(jobs_api, job_id, timeout=60)
    assert job["status"] == "succeeded" and job["done"] == len(texts)
    assert sorted(int(i) for i in results_of(jobs_redis.url, job_id)) == list(range(300))
    assert "chunk lost by the broker, enqueued again" in (tmp_path / "worker.log").read_text()


def test_a_job_stored_but_never_enqueued_still_runs(jobs_redis, start_worker) -> None:
    # The API stored the job and died (or lost the jobs Redis) before enqueuing its chunks;
    # a retry with the same idempotency key returns the stored job and enqueues nothing.
    store = JobStore.from_url(jobs_redis.url, ttl_s=600)
    job, _ = store.create(snippets(150), chunk_size=100, model="", version="pending")
    start_worker(SURGE_JOB_SWEEP_S="1")
    deadline = time.monotonic() + 60
    while (done := store.get(job["id"]))["status"] != "succeeded":
        assert time.monotonic() < deadline, f"still {done['status']} ({done['done']}/150)"
        time.sleep(0.2)
    assert done["done"] == 150
    store.redis.close()


def test_a_worker_started_before_its_jobs_redis_runs_jobs_once_it_is_up(start_worker,
                                                                         tmp_path) -> None:
    later = RedisServer("jobs", tmp_path / "redis-later")  # its port is chosen, not yet open
    worker = start_worker(SURGE_REDIS_URL=later.url, SURGE_JOB_SWEEP_S="1")
    log = tmp_path / "worker.log"
    deadline = time.monotonic() + 60
    while "sweep skipped" not in log.read_text():  # the sweeper met the missing Redis
        assert worker.poll() is None, "the worker died without its jobs Redis"
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)
    later.start()
    try:
        store = JobStore.from_url(later.url, ttl_s=600)
        job, _ = store.create(snippets(120), chunk_size=100, model="", version="pending")
        while (done := store.get(job["id"]))["status"] != "succeeded":  # found by a sweep
            assert time.monotonic() < deadline + 60, f"still {done['status']}"
            time.sleep(0.2)
        store.redis.close()
    finally:
        later.stop()


def test_jobs_redis_restart_keeps_a_queued_job(jobs_api, jobs_redis, start_worker) -> None:
    job_id = jobs_api.post("/v1/jobs", json={"texts": snippets(300)}).json()["id"]
    assert jobs_api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"  # no worker yet
    jobs_redis.stop()  # SIGTERM: AOF is flushed; the queue and the job record must survive
    down = jobs_api.get(f"/v1/jobs/{job_id}")
    assert down.status_code == 503 and down.json()["error"]["code"] == "jobs_unavailable"
    event = {"specversion": "1.0", "type": "dev.surgeserve.bulk.requested", "source": "/t",
             "id": "while-down", "data": {"texts": ["x"]}}
    refused = jobs_api.post("/events", json=event,
                            headers={"content-type": "application/cloudevents+json"})
    assert refused.status_code == 503  # the broker retries it later
    assert refused.headers["retry-after"] == "1"
    jobs_redis.start()
    start_worker()
    job = wait_done(jobs_api, job_id, timeout=120)
    assert job["status"] == "succeeded" and job["done"] == 300


"""Nothing lost on failure: a worker SIGKILLed mid-job, the jobs Redis restarted (AOF)."""

from __future__ import annotations

import json
import time

import redis

from common.corpus import snippets
from tests.integration.test_jobs import jobs_api, jobs_redis, start_worker, wait_done, worker

__all__ = ["jobs_api", "jobs_redis", "start_worker", "worker"]  # fixtures used below


def results_of(url: str, job_id: str) -> dict[str, dict]:  # type: ignore[type-arg]
    raw = redis.Redis.from_url(url, decode_responses=True).hgetall(f"surge:job:{job_id}:results")
    return {k: json.loads(v) for k, v in raw.items()}


def test_worker_killed_mid_job_loses_and_duplicates_nothing(jobs_api, jobs_redis,
                                                            start_worker) -> None:
    texts = snippets(1500)
    first = start_worker(SURGE_VISIBILITY_TIMEOUT_S="4")
    job_id = jobs_api.post("/v1/jobs", json={"texts": texts}).json()["id"]
    deadline = time.monotonic() + 60
    while jobs_api.get(f"/v1/jobs/{job_id}").json()["done"] == 0:
        assert time.monotonic() < deadline, "the worker never started the job"
        time.sleep(0.05)
    first.kill()  # SIGKILL: its current chunk is unacknowledged and must be redelivered
    first.wait()
    done_at_kill = jobs_api.get(f"/v1/jobs/{job_id}").json()["done"]
    assert 0 < done_at_kill < len(texts), "the kill did not land mid-job"
    start_worker(SURGE_VISIBILITY_TIMEOUT_S="4")
    job = wait_done(jobs_api, job_id, timeout=120)
    assert job["status"] == "succeeded" and job["done"] == len(texts)
    stored = results_of(jobs_redis.url, job_id)
    assert sorted(int(i) for i in stored) == list(range(len(texts)))  # each index once
    page = jobs_api.get(f"/v1/jobs/{job_id}/results?offset=0&limit=1000").json()
    assert [r["index"] for r in page["results"]] == list(range(1000))


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


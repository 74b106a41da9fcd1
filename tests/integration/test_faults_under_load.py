"""Faults under a real (short) load run: the cache Redis killed and restarted -> no failed
prediction; the jobs Redis restarted while a worker runs a job -> the job completes, every
result once; SIGTERM to the API under load -> no accepted request fails, exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from common.corpus import snippets
from common.redis_server import free_port
from loadtest.run import RunConfig, RunResult, constant, run
from loadtest.traffic import ZipfTexts
from tests.integration.test_jobs import jobs_api, jobs_redis, start_worker, wait_done
from tests.integration.test_sigterm import wait_ready

__all__ = ["jobs_api", "jobs_redis", "start_worker"]


def load_in_background(url: str, users: int, seconds: float) -> tuple[threading.Thread,
                                                                      list[RunResult]]:
    out: list[RunResult] = []
    config = RunConfig(url=url, stages=list(constant(users, seconds)),
                       texts=ZipfTexts(snippets(3000), 1.1), progress=False)
    thread = threading.Thread(target=lambda: out.append(run(config)), daemon=True)
    thread.start()
    return thread, out


def test_cache_redis_killed_and_restarted_under_load(make_app, live_server, cache_redis) -> None:
    app = make_app(cache_url=cache_redis.url, cache_backoff_max_s=0.3, lru_size=0)
    with live_server(app) as srv:
        thread, out = load_in_background(srv.url, users=8, seconds=6)
        time.sleep(1.5)
        cache_redis.stop(kill=True)
        time.sleep(2)
        cache_redis.start()
        thread.join(timeout=60)
    samples = out[0].samples
    during = [s for s in samples if 1.6 < s.start < 3.4]
    assert len(samples) > 100 and len(during) > 20
    assert {s.status for s in samples} == {200}  # not one failed prediction
    assert any(s.cached for s in samples if s.start > 4.5)  # the restarted cache serves again


def test_jobs_redis_restarted_while_a_worker_runs_a_job(jobs_api, jobs_redis,
                                                        start_worker) -> None:
    texts = snippets(1500)
    start_worker(SURGE_VISIBILITY_TIMEOUT_S="4")
    job_id = jobs_api.post("/v1/jobs", json={"texts": texts}).json()["id"]
    deadline = time.monotonic() + 60
    while jobs_api.get(f"/v1/jobs/{job_id}").json()["done"] == 0:
        assert time.monotonic() < deadline, "the worker never started the job"
        time.sleep(0.05)
    jobs_redis.stop()  # SIGTERM: Redis writes its AOF; the worker loses broker and store
    time.sleep(1.5)
    jobs_redis.start()
    job = wait_done(jobs_api, job_id, timeout=180)
    assert job["status"] == "succeeded" and job["done"] == len(texts)
    stored = redis.Redis.from_url(jobs_redis.url, decode_responses=True).hgetall(
        f"surge:job:{job_id}:results")
    assert sorted(int(i) for i in stored) == list(range(len(texts)))  # each index once
    assert all(json.loads(v)["label"] in ("POSITIVE", "NEGATIVE") for v in stored.values())


def test_sigterm_under_load_fails_no_accepted_request(default_model_dir: Path,
                                                      tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {"PORT": str(port), "SURGE_MODEL_DIR": str(default_model_dir),
                        "SURGE_DRAIN_DELAY_S": "1", "SURGE_SHUTDOWN_GRACE_S": "20",
                        "SURGE_ACCESS_LOG": "false"}
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "online.cli", "serve"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server)
        thread, out = load_in_background(url, users=16, seconds=6)
        time.sleep(2)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        thread.join(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    samples = out[0].samples
    answered = [s for s in samples if s.status != 0]
    assert len(answered) > 50
    assert {s.status for s in answered} == {200}  # no 5xx, no request cut off mid-way
    # during the drain delay the server still answered what came; refusals (status 0: the
    # listener closed, nothing accepted) only begin after it
    refused = [s for s in samples if s.status == 0]
    assert all(s.start >= 2 - 0.05 for s in refused), [s.start for s in refused][:5]
    assert any(s.status == 200 and s.start > 2.1 for s in samples)  # served while draining

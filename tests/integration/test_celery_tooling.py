"""Celery's own tools see surgeserve's workers and tasks: `celery -A batch.celery_app inspect
ping | active` answer from a real worker, and Flower (its HTTP API) lists the worker and a
chunk task that finished, from the task events the worker sends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.redis_server import RedisServer, free_port
from tests.integration.test_jobs import jobs_api, jobs_redis, start_worker, wait_done

__all__ = ["jobs_api", "jobs_redis", "start_worker"]  # fixtures used by name
pytestmark = pytest.mark.slow


def celery(redis_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celery", "-A", "batch.celery_app", *args],
                          env=os.environ | {"SURGE_REDIS_URL": redis_url}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def flower(jobs_redis: RedisServer, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "flower.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "batch.celery_app", "flower",
         f"--port={port}", "--address=127.0.0.1", "--persistent=False"],
        env=os.environ | {"SURGE_REDIS_URL": jobs_redis.url,
                          # Flower 2 serves its API only with auth set up, or when told to.
                          "FLOWER_UNAUTHENTICATED_API": "true"},
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "flower.log").read_text()
            try:
                if httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "flower did not start"
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def poll(fetch: Any, ok: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ok(value):
            return value
        assert time.monotonic() < deadline, value
        time.sleep(0.5)


def test_inspect_and_flower_see_the_worker_and_its_tasks(jobs_api, jobs_redis, start_worker,
                                                         flower) -> None:
    start_worker()
    ping = poll(lambda: celery(jobs_redis.url, "inspect", "ping", "--timeout", "5"),
                lambda done: done.returncode == 0)
    assert "pong" in ping.stdout, ping.stdout + ping.stderr
    active = celery(jobs_redis.url, "inspect", "active", "--timeout", "5")
    assert active.returncode == 0 and "OK" in active.stdout, active.stdout + active.stderr

    job = jobs_api.post("/v1/jobs", json={"texts": [f"review {i}" for i in range(30)]})
    assert job.status_code == 202
    assert wait_done(jobs_api, job.json()["id"])["status"] == "succeeded"

    tasks = poll(lambda: httpx.get(f"{flower}/api/tasks", timeout=10).json(),
                 lambda found: any(t["state"] == "SUCCESS" for t in found.values()))
    done = [t for t in tasks.values() if t["state"] == "SUCCESS"]
    assert done[0]["name"] == "surgeserve.run_chunk"
    assert job.json()["id"] in done[0]["args"]
    workers = poll(lambda: httpx.get(f"{flower}/api/workers", params={"refresh": "1"},
                                     timeout=30).json(), bool)
    (name,) = workers
    assert name in ping.stdout  # the same worker inspect answered for

"""Completion events to K_SINK (Knative SinkBinding) and result expiry."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from batch.store import JobStore
from common.corpus import snippets
from common.redis_server import RedisServer
from tests.integration.test_jobs import jobs_api, jobs_redis, start_worker, wait_done

__all__ = ["jobs_api", "jobs_redis", "start_worker"]  # fixtures used below


class Sink:
    """A real HTTP endpoint that records the CloudEvents POSTed to it."""

    def __init__(self) -> None:
        received: list[tuple[dict[str, str], bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_completion_event_goes_to_k_sink(jobs_api, start_worker, sink: Sink) -> None:
    start_worker(K_SINK=sink.url)
    job_id = jobs_api.post("/v1/jobs", json={"texts": snippets(150)}).json()["id"]
    assert wait_done(jobs_api, job_id)["status"] == "succeeded"
    deadline = time.monotonic() + 10
    while not sink.received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(sink.received) == 1  # sent once, by the chunk that finished the job
    headers, body = sink.received[0]
    event = json.loads(body)
    assert headers["content-type"].startswith("application/cloudevents+json")
    assert event["type"] == "dev.surgeserve.job.completed" and event["specversion"] == "1.0"
    assert event["subject"] == job_id
    assert event["data"]["status"] == "succeeded" and event["data"]["done"] == 150


def test_job_records_and_results_expire(tmp_path: Path) -> None:
    server = RedisServer("jobs", tmp_path / "redis").start()
    try:
        store = JobStore.from_url(server.url, ttl_s=1)
        job, created = store.create(["a", "b", "c"], chunk_size=2, model="m", version="1",
                                    idempotency_key="k")
        assert created and store.get(job["id"])["chunks"] == 2
        store.write_chunk(job["id"], 0, {0: {"label": "X"}, 1: {"label": "Y"}}, chunks=2)
        time.sleep(2.2)
        assert store.get(job["id"]) is None
        # texts, results, done set, idempotency key: all gone; the unfinished job's entry in
        # the index stays until the next sweep takes it off (test_sweeper)
        assert store.redis.keys("surge:*") == ["surge:jobs:active"]
        assert list(store.active()) == [job["id"]]
    finally:
        server.stop()

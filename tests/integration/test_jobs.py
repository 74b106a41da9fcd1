"""Bulk jobs end to end: real jobs Redis, real cache Redis, a real `surgeserve worker` process,
the API on real uvicorn; CloudEvents built with the CloudEvents SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from common.corpus import snippets
from common.redis_server import RedisServer

CHUNK = 100
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def jobs_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer("jobs", tmp_path / "redis-jobs").start()
    yield server
    server.stop()


@pytest.fixture
def start_worker(jobs_redis, cache_redis, default_model_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Factory: a real `surgeserve worker` process (several may run; all stopped at the end)."""
    processes: list[subprocess.Popen[bytes]] = []
    log = (tmp_path / "worker.log").open("ab")

    def start(fault: str | None = None, **env: str) -> subprocess.Popen[bytes]:
        """A worker; with `fault`, tests/integration/fault_worker.py injecting it ("" for
        none, but chunk runs counted)."""
        full = os.environ | {"SURGE_REDIS_URL": jobs_redis.url,
                             "SURGE_CACHE_URL": cache_redis.url,
                             "SURGE_MODEL_DIR": str(default_model_dir),
                             "SURGE_WORKER_METRICS_PORT": "0",
                             "SURGE_LOG_JSON": "false"} | env
        command = ["-m", "online.cli", "worker"]
        if fault is not None:
            command, full = ["-m", "tests.integration.fault_worker"], full | {"FAULT": fault}
        process = subprocess.Popen([sys.executable, *command], env=full, cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    log.close()


@pytest.fixture
def worker(start_worker):  # type: ignore[no-untyped-def]
    return start_worker()


@pytest.fixture
def jobs_api(make_app, live_server, jobs_redis, cache_redis):  # type: ignore[no-untyped-def]
    app = make_app(redis_url=jobs_redis.url, cache_url=cache_redis.url, job_chunk_size=CHUNK)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client


def wait_done(client: httpx.Client, job_id: str, timeout: float = 90) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return dict(job)
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job['status']} ({job['done']}/{job['total']})")


def job_count(url: str) -> int:
    client = redis.Redis.from_url(url)
    return sum(1 for key in client.scan_iter("surge:job:*") if key.count(b":") == 2)


def test_http_job_end_to_end(jobs_api, worker) -> None:
    texts = snippets(250)
    submitted = jobs_api.post("/v1/jobs", json={"texts": texts})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.headers["location"] == f"/v1/jobs/{job_id}" and len(job_id) >= 20
    job = wait_done(jobs_api, job_id)
    assert job["status"] == "succeeded" and job["done"] == job["total"] == 250
    assert job["model"] == "surge-sentiment-minilm" and job["version"] != "pending"
    seen, url = [], f"/v1/jobs/{job_id}/results?limit=100"
    while url:
        page = jobs_api.get(url).json()
        seen += page["results"]
        url = page["next"]
    assert [r["index"] for r in seen] == list(range(250))
    for index in (0, 117, 249):  # the batch path agrees with the online path
        online = jobs_api.post("/v1/predict", json={"text": texts[index]}).json()
        assert online["label"] == seen[index]["label"]
        assert online["cached"] is True  # the worker wrote back to the shared cache
    stream = jobs_api.get(f"/v1/jobs/{job_id}/results",
                          headers={"accept": "application/x-ndjson"})
    assert stream.headers["content-type"].startswith("application/x-ndjson")
    assert len(stream.text.splitlines()) == 250


def test_ndjson_upload_and_idempotency_key(jobs_api, worker) -> None:
    body = b'"first text"\n{"text": "second text"}\nthird as a bare line\n\n'
    headers = {"content-type": "application/x-ndjson", "idempotency-key": "upload-42"}
    first = jobs_api.post("/v1/jobs", content=body, headers=headers)
    again = jobs_api.post("/v1/jobs", content=body, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"] and first.json()["total"] == 3
    assert wait_done(jobs_api, first.json()["id"])["done"] == 3


def event(i: int = 1) -> CloudEvent:
    return CloudEvent(attributes={"type": "dev.surgeserve.bulk.requested",
                                  "source": "/tests/producer", "id": f"evt-{i}",
                                  "datacontenttype": "application/json"},
                      data={"texts": snippets(30)})


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_cloudevent_redelivered_ten_times_makes_one_job(jobs_api, worker, jobs_redis,
                                                        mode: str) -> None:
    encode = to_binary if mode == "binary" else to_structured
    message = encode(event(), JSONFormat())
    replies = [jobs_api.post("/events", content=message.body, headers=message.headers)
               for _ in range(10)]
    assert {r.status_code for r in replies} == {202}
    if mode == "binary":
        assert replies[0].headers["ce-type"] == "dev.surgeserve.job.accepted"
        job_id = replies[0].json()["job_id"]
    else:
        assert replies[0].headers["content-type"].startswith("application/cloudevents+json")
        assert replies[0].json()["type"] == "dev.surgeserve.job.accepted"
        job_id = replies[0].json()["data"]["job_id"]
    ids = {(r.json()["data"] if mode == "structured" else r.json())["job_id"] for r in replies}
    assert ids == {job_id}
    assert job_count(jobs_redis.url) == 1
    assert wait_done(jobs_api, job_id)["done"] == 30


def test_cancel_skips_chunks_not_yet_run(jobs_api, worker) -> None:
    job_id = jobs_api.post("/v1/jobs", json={"texts": snippets(3000)}).json()["id"]
    cancelled = jobs_api.delete(f"/v1/jobs/{job_id}").json()
    assert cancelled["status"] == "cancelled"
    time.sleep(3)
    job = jobs_api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["done"] < 3000
    assert jobs_api.get("/v1/jobs/no-such-job").status_code == 404


@pytest.mark.parametrize("kwargs,status,code", [
    ({"content": b"texts", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ({"json": {"texts": []}}, 422, "invalid_input"),
    ({"json": {"texts": ["fine", "  "]}}, 422, "empty_text"),
    ({"json": {"texts": "not a list"}}, 422, "invalid_input"),
    ({"content": b"\xff\xfe", "headers": {"content-type": "application/x-ndjson"}}, 422,
     "invalid_input"),
])
def test_bad_jobs_are_refused_and_nothing_is_enqueued(jobs_api, jobs_redis, kwargs, status,
                                                      code) -> None:
    response = jobs_api.post("/v1/jobs", **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert job_count(jobs_redis.url) == 0
    assert redis.Redis.from_url(jobs_redis.url).llen("surgeserve.chunks") == 0


@pytest.mark.parametrize("headers,body,code", [
    ({"ce-specversion": "1.0", "ce-type": "com.example.other", "ce-source": "/x",
      "ce-id": "1", "content-type": "application/json"}, b'{"texts": ["a"]}',
     "unknown_event_type"),
    ({"ce-specversion": "0.3", "ce-type": "dev.surgeserve.bulk.requested", "ce-source": "/x",
      "ce-id": "1", "content-type": "application/json"}, b'{"texts": ["a"]}', "invalid_input"),
    ({"content-type": "application/cloudevents+json"}, b'{"not": "an event"}', "invalid_input"),
    ({"ce-specversion": "1.0", "ce-type": "dev.surgeserve.bulk.requested", "ce-source": "/x",
      "ce-id": "1", "content-type": "application/json"}, b'{"texts": "nope"}',
     "invalid_input"),
    ({"content-type": "application/json"}, b'{"texts": ["a"]}', "unsupported_media_type"),
])
def test_bad_events_get_4xx_and_enqueue_nothing(jobs_api, jobs_redis, headers, body,
                                                code) -> None:
    response = jobs_api.post("/events", content=body, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["code"] == code
    assert job_count(jobs_redis.url) == 0


def test_cli_submit_waits_and_downloads(jobs_api, worker, tmp_path: Path) -> None:
    source = tmp_path / "reviews.csv"
    source.write_text("id,text\n1,a delight from start to finish\n2,dull and far too long\n"
                      "3,an instant classic\n")
    out = tmp_path / "results.ndjson"
    url = str(jobs_api.base_url).rstrip("/")
    done = subprocess.run([sys.executable, "-m", "online.cli", "submit", str(source), "--wait",
                           "--out", str(out), "--url", url], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "100%|" in done.stderr  # the progress bar ran to completion
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert [r["label"] for r in rows] == ["POSITIVE", "NEGATIVE", "POSITIVE"]


def test_jobs_role_serves_jobs_without_a_model(live_server, jobs_redis, worker) -> None:
    from common.metrics import Metrics
    from common.settings import Settings
    from online.app import create_app

    app = create_app(Settings(role="jobs", redis_url=jobs_redis.url, access_log=False),
                     metrics=Metrics())
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        assert app.state.runtime.bundle is None
        assert client.post("/v1/predict", json={"text": "x"}).status_code == 404
        job_id = client.post("/v1/jobs", json={"texts": ["loved it"]}).json()["id"]
        assert wait_done(client, job_id)["done"] == 1


def test_job_size_limits(make_app, live_server, jobs_redis) -> None:
    app = make_app(redis_url=jobs_redis.url, job_max_items=3, job_max_bytes=2048)
    with live_server(app) as srv, httpx.Client(base_url=srv.url) as client:
        many = client.post("/v1/jobs", json={"texts": ["a", "b", "c", "d"]})
        big = client.post("/v1/jobs", json={"texts": ["x" * 3000]})
    assert many.status_code == 422 and many.json()["error"]["code"] == "too_many_items"
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
    assert job_count(jobs_redis.url) == 0

"""Hostile input against the real server: each is refused with a 4xx in the one error shape,
nothing reaches the job queue, and the process keeps answering."""

from __future__ import annotations

import json

import httpx
import pytest
import redis

from tests.integration.test_jobs import jobs_redis

__all__ = ["jobs_redis"]

QUEUE = "surgeserve.chunks"
JSON = {"content-type": "application/json"}


@pytest.fixture
def hostile(make_app, live_server, jobs_redis):  # type: ignore[no-untyped-def]
    app = make_app(redis_url=jobs_redis.url)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        yield client, redis.Redis.from_url(jobs_redis.url)


def refused(reply: httpx.Response, *statuses: int) -> str:
    assert reply.status_code in statuses, (reply.status_code, reply.text[:300])
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}
    assert "Traceback" not in reply.text
    return str(body["error"]["code"])


def test_hostile_bodies_are_refused_cleanly(hostile) -> None:
    client, jobs = hostile
    cases: list[tuple[str, bytes, dict[str, str], tuple[int, ...]]] = [
        ("/v1/predict", b'{"text": "\xff\xfe broken utf-8"}', JSON, (400, 422)),
        ("/v1/predict", json.dumps({"text": "a\x00b"}).encode(), JSON, (200, 422)),
        ("/v1/predict", json.dumps({"text": "x" * 1_000_000}).encode(), JSON, (413, 422)),
        ("/v1/bulk-predict", json.dumps({"texts": ["x"] * 100_000}).encode(), JSON,
         (413, 422)),
        ("/v1/predict", b'{"text": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", JSON, (413, 422)),
        ("/v1/predict", b"text=hello", {"content-type": "application/x-www-form-urlencoded"},
         (415,)),
        ("/v1/predict", b'{"text": "no content type"}', {}, (415,)),
        ("/v1/predict", b"{not json", JSON, (422,)),
        ("/v1/predict", json.dumps({"text": "x", "extra": 1}).encode(), JSON, (422,)),
        ("/v1/jobs", b'{"texts": "\xff"}', JSON, (422,)),
        ("/v1/jobs", b"\xff\xfe\n", {"content-type": "application/x-ndjson"}, (422,)),
        ("/v1/jobs", json.dumps({"texts": ["x"] * 100_001}).encode(), JSON, (413, 422)),
        ("/v1/jobs", json.dumps({"texts": [["nested"]]}).encode(), JSON, (422,)),
        ("/v1/jobs", b"<xml/>", {"content-type": "application/xml"}, (415,)),
        ("/v2/models/x/infer", b"\xff\x00", JSON, (400, 404)),
    ]
    for path, body, headers, statuses in cases:
        reply = client.post(path, content=body, headers=headers)
        if reply.status_code == 200:  # NUL is an ordinary character to the model
            assert reply.json()["label"] in ("POSITIVE", "NEGATIVE")
            continue
        if path.startswith("/v2"):
            assert reply.status_code in statuses and "error" in reply.json()
            continue
        refused(reply, *statuses)
    assert jobs.llen(QUEUE) == 0 and not list(jobs.scan_iter("surge:job:*"))
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/predict", json={"text": "still fine"}).status_code == 200


def test_hostile_cloudevents_are_refused_cleanly(hostile) -> None:
    client, jobs = hostile
    good = {"ce-specversion": "1.0", "ce-type": "dev.surgeserve.bulk.requested",
            "ce-source": "/t", "ce-id": "1", "content-type": "application/json"}
    structured = {"content-type": "application/cloudevents+json"}
    cases: list[tuple[bytes, dict[str, str], tuple[int, ...]]] = [
        (b'{"texts": ["a"]}', good | {"ce-specversion": "0.3"}, (400, 422)),
        (b'{"texts": ["a"]}', good | {"ce-specversion": "9.9"}, (400, 422)),
        (b'{"texts": ["a"]}', {k: v for k, v in good.items() if k != "ce-id"}, (400, 422)),
        (b'{"texts": ["a"]}', good | {"ce-type": "com.example.other"}, (400, 422)),
        (b'{"texts": "nope"}', good, (400, 422)),
        (b"\xff\xfe", good, (400, 422)),
        (b"{broken", structured, (400, 422)),
        (json.dumps({"specversion": "2.0", "type": "dev.surgeserve.bulk.requested",
                     "source": "/t", "id": "2", "data": {"texts": ["a"]}}).encode(),
         structured, (400, 422)),
        (json.dumps({"specversion": "1.0", "source": "/t", "id": "3",
                     "data": {"texts": ["a"]}}).encode(), structured, (400, 422)),
        (b'{"texts": ["a"]}', {"content-type": "text/plain"}, (415,)),
        (json.dumps({"texts": ["x" * 100] * 400_000}).encode(), good, (413,)),
    ]
    for body, headers, statuses in cases:
        refused(client.post("/events", content=body, headers=headers), *statuses)
    assert jobs.llen(QUEUE) == 0 and not list(jobs.scan_iter("surge:job:*"))
    assert client.get("/healthz").status_code == 200

"""Hostile text and structure against the real server (uvicorn, real jobs Redis): lone
surrogates on every text route, JSON nested far past the parser's recursion limit, malformed
Open Inference Protocol requests and lying lengths. Each is a 4xx in its route's error shape
({"error": {code, message, detail}}; OIP: {"error": "..."}), nothing is enqueued, /metrics
keeps answering and the server keeps serving others."""

from __future__ import annotations

import json
import struct
from typing import Any

import httpx
import pytest
import redis

from tests.integration.test_hostile import QUEUE, refused
from tests.integration.test_jobs import jobs_redis

__all__ = ["jobs_redis"]

JSON = {"content-type": "application/json"}
NDJSON = {"content-type": "application/x-ndjson"}
STRUCTURED = {"content-type": "application/cloudevents+json"}
BINARY_CE = {"ce-specversion": "1.0", "ce-type": "dev.surgeserve.bulk.requested",
             "ce-source": "/t", "ce-id": "1", "content-type": "application/json"}
LONE = "ok \ud800 and \udfff"  # lone UTF-16 surrogates: valid JSON escapes, not Unicode text
DEEP = 150_000


def body(obj: Any) -> bytes:
    """JSON with the surrogates written as \\uXXXX escapes (what an attacker sends)."""
    return json.dumps(obj).encode()


def deep(depth: int = DEEP) -> bytes:
    return b"[" * depth + b"]" * depth


def structured(**over: Any) -> bytes:
    envelope = {"specversion": "1.0", "type": "dev.surgeserve.bulk.requested", "source": "/t",
                "id": "s1", "datacontenttype": "application/json", "data": {"texts": ["a"]}}
    return body(envelope | over)


@pytest.fixture
def hostile(make_app, live_server, jobs_redis, default_bundle):  # type: ignore[no-untyped-def]
    app = make_app(redis_url=jobs_redis.url)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        yield client, redis.Redis.from_url(jobs_redis.url), default_bundle.name


def still_serving(client: httpx.Client, jobs: redis.Redis) -> None:
    assert jobs.llen(QUEUE) == 0 and not list(jobs.scan_iter("surge:job:*"))
    metrics = client.get("/metrics")
    assert metrics.status_code == 200, metrics.text[:200]
    assert "surge_requests_total" in metrics.text
    assert 'status="500"' not in metrics.text, "a hostile request was answered 500"
    assert client.post("/v1/predict", json={"text": "still fine"}).status_code == 200


def test_lone_surrogates_are_refused_on_every_text_route(hostile) -> None:
    client, jobs, model = hostile
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("/v1/predict", body({"text": LONE}), JSON),  # the fast path
        ("/v1/predict", body({"text": "x", "\ud800": 1}), JSON),  # in a field name
        (f"/v1/models/{model}/predict", body({"text": LONE}), JSON),
        ("/v1/bulk-predict", body({"texts": ["fine", LONE]}), JSON),
        (f"/v1/models/{model}/bulk-predict", body({"texts": [LONE]}), JSON),
        ("/v1/jobs", body({"texts": ["fine", LONE]}), JSON),
        ("/v1/jobs", body({"texts": ["fine"], "model": "\ud800"}), JSON),
        ("/v1/jobs", b"fine\n" + body(LONE) + b"\n", NDJSON),
        ("/v1/jobs", body({"text": LONE}) + b"\n", NDJSON),
        ("/events", body({"texts": [LONE]}), BINARY_CE),
        ("/events", structured(data={"texts": [LONE]}), STRUCTURED),
        ("/events", structured(source="/\ud800"), STRUCTURED),
        ("/events", structured(id="\udfff"), STRUCTURED),
        ("/events", structured(type="\ud800"), STRUCTURED),
    ]
    for path, content, headers in cases:
        reply = client.post(path, content=content, headers=headers)
        code = refused(reply, 422)
        assert code in ("invalid_text", "invalid_input", "unknown_event_type",
                        "unknown_model_input"), (path, code)
    detail = client.post("/v1/bulk-predict", content=body({"texts": ["fine", LONE]}),
                         headers=JSON).json()["error"]
    assert detail["code"] == "invalid_text" and detail["detail"]["index"] == 1
    still_serving(client, jobs)


def test_lone_surrogates_on_the_inference_protocol(hostile) -> None:
    client, jobs, model = hostile
    tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": [LONE]}
    for request in ({"inputs": [tensor]},
                    {"id": "\ud800", "inputs": [tensor | {"data": ["fine"]}]}):
        reply = client.post(f"/v2/models/{model}/infer", content=body(request), headers=JSON)
        assert reply.status_code == 400, reply.text[:300]
        assert isinstance(reply.json()["error"], str)
    still_serving(client, jobs)


def test_deep_nesting_is_refused(hostile) -> None:
    client, jobs, model = hostile
    cases: list[tuple[str, bytes, dict[str, str], int]] = [
        ("/v1/predict", b'{"text": ' + deep() + b"}", JSON, 422),
        ("/v1/jobs", deep(), JSON, 422),
        ("/v1/jobs", b'{"texts": ' + deep() + b"}", JSON, 422),
        ("/v1/jobs", b"fine\n" + deep() + b"\n", NDJSON, 422),
        ("/events", deep(), STRUCTURED, 422),
        ("/events", b'{"texts": ' + deep() + b"}", BINARY_CE, 422),
        ("/events/dead-letter", deep(), STRUCTURED, 422),
    ]
    for path, content, headers, status in cases:
        refused(client.post(path, content=content, headers=headers), status)
    for content in (deep(), b'{"inputs": ' + deep() + b"}"):
        reply = client.post(f"/v2/models/{model}/infer", content=content, headers=JSON)
        assert reply.status_code == 400 and isinstance(reply.json()["error"], str)
    # data nested 2,000 deep (past the JSON parser's recursion limit) and 980 deep (within
    # it: the old code then recursed through it and hit Python's limit)
    tensor = body({"name": "text", "shape": [1], "datatype": "BYTES", "data": "X"})
    for depth in (2_000, 980):
        nested = tensor.replace(b'"X"', b"[" * depth + b'"a"' + b"]" * depth)
        reply = client.post(f"/v2/models/{model}/infer", headers=JSON,
                            content=b'{"inputs": [' + nested + b"]}")
        assert reply.status_code == 400 and isinstance(reply.json()["error"], str), depth
    still_serving(client, jobs)


def binary_request(header: dict[str, Any], payload: bytes,
                   length: str | None = None) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + payload, {"inference-header-content-length": length or str(len(head)),
                            "content-type": "application/octet-stream"}


def test_malformed_inference_requests_answer_400(hostile) -> None:
    client, jobs, model = hostile
    url = f"/v2/models/{model}/infer"
    tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["fine"]}
    json_cases: list[dict[str, Any]] = [
        {"inputs": [tensor | {"parameters": "binary"}]},
        {"inputs": [tensor | {"parameters": [1, 2]}]},
        {"inputs": [tensor], "parameters": "x"},
        {"inputs": [tensor], "parameters": [1]},
        {"inputs": [tensor], "outputs": "label"},
        {"inputs": [tensor], "outputs": {"name": "label"}},
        {"inputs": [tensor], "outputs": 5},
        {"inputs": [tensor], "outputs": [{"name": "label", "parameters": "x"}]},
        {"inputs": [tensor], "id": 5},
        {"inputs": [tensor | {"data": [["a", "b"]]}]},
    ]
    for request in json_cases:
        reply = client.post(url, content=body(request), headers=JSON)
        assert reply.status_code == 400, (request, reply.status_code, reply.text[:300])
        assert isinstance(reply.json()["error"], str) and reply.json()["error"]
    payload = struct.pack("<I", 4) + b"abcd"  # one BYTES element: 8 bytes
    binary = {"name": "text", "shape": [1], "datatype": "BYTES"}
    ok, headers = binary_request({"inputs": [binary | {"parameters": {
        "binary_data_size": 8}}]}, payload)
    assert client.post(url, content=ok, headers=headers).status_code == 200
    for size in ("abc", [8], 8.5, 10**6, 7, -1, True, None):
        content, headers = binary_request(
            {"inputs": [binary | {"parameters": {"binary_data_size": size}}]}, payload)
        reply = client.post(url, content=content, headers=headers)
        assert reply.status_code == 400, (size, reply.status_code, reply.text[:300])
        assert isinstance(reply.json()["error"], str)
    for length in ("abc", "-5", "1000000", "1.5"):
        content, headers = binary_request(
            {"inputs": [binary | {"parameters": {"binary_data_size": 8}}]}, payload, length)
        reply = client.post(url, content=content, headers=headers)
        assert reply.status_code == 400, (length, reply.status_code, reply.text[:300])
    still_serving(client, jobs)


def test_dead_letter_types_never_become_metric_labels(hostile) -> None:
    client, jobs, _ = hostile
    huge = "com.example." + "x" * 100_000
    for kind in ("\ud800", huge, *(f"{huge}.{i}" for i in range(20))):
        reply = client.post("/events/dead-letter", headers=STRUCTURED,
                            content=structured(type=kind, id=kind[-8:]))
        assert reply.status_code == 202, reply.text[:300]
    reply = client.post("/events/dead-letter", headers=STRUCTURED, content=structured())
    assert reply.status_code == 202
    for ours in ("dev.surgeserve.job.cancelled", "dev.surgeserve.prediction"):  # our types
        reply = client.post("/events/dead-letter", headers=STRUCTURED,
                            content=structured(type=ours, id=ours[-8:]))
        assert reply.status_code == 202
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert len(metrics.content) < 100_000, len(metrics.content)
    lines = [line for line in metrics.text.splitlines()
             if line.startswith("surge_events_dead_lettered_total{")]
    assert sorted(lines) == sorted([
        'surge_events_dead_lettered_total{type="dev.surgeserve.bulk.requested"} 1.0',
        'surge_events_dead_lettered_total{type="dev.surgeserve.job.cancelled"} 1.0',
        'surge_events_dead_lettered_total{type="dev.surgeserve.prediction"} 1.0',
        'surge_events_dead_lettered_total{type="other"} 22.0'])
    kept = jobs.lrange("surge:deadletter", 0, -1)
    assert len(kept) == 25 and max(len(entry) for entry in kept) < 20_000  # attributes cut
    assert 0 < jobs.ttl("surge:deadletter") <= 7 * 24 * 3600
    assert client.post("/v1/predict", json={"text": "still fine"}).status_code == 200

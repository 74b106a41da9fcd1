"""Exhaustion with bounded sizes, real parts (uvicorn, a real jobs Redis with a maxmemory):
an anonymous CloudEvent flood stops at its quota, job admission keeps the jobs Redis below
its memory threshold, dead letters are bounded in size, count and time, concurrent large
uploads are bounded, the rate limit counts texts, keys reach /events from a Trigger's URI."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
import redis

from common.auth import hash_key
from tests.integration.test_jobs import jobs_redis

__all__ = ["jobs_redis"]

ALICE, BOB = "sk_alice_0123456789", "sk_bob_9876543210"
KEYS = f"alice:{hash_key(ALICE)},bob:{hash_key(BOB)}"
STRUCTURED = {"content-type": "application/cloudevents+json"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def binary_event(i: int, texts: list[str]) -> tuple[bytes, dict[str, str]]:
    return json.dumps({"texts": texts}).encode(), {
        "ce-specversion": "1.0", "ce-type": "dev.surgeserve.bulk.requested",
        "ce-source": "/flood", "ce-id": f"flood-{i}", "content-type": "application/json"}


def used_fraction(client: redis.Redis) -> float:
    info = client.info("memory")
    return int(info["used_memory"]) / int(info["maxmemory"])


def test_anonymous_event_flood_stops_at_its_quota(make_app, live_server, jobs_redis) -> None:
    """Defaults (keys set, the sink open): one address gets its burst of 10,000 texts, then
    429 with Retry-After; keyed clients are not held back; the jobs Redis stays low."""
    jobs = redis.Redis.from_url(jobs_redis.url)
    jobs.config_set("maxmemory", 64 * 1024 * 1024)
    app = make_app(api_keys=KEYS, redis_url=jobs_redis.url)
    texts = [f"{i} " + "flooding text " * 70 for i in range(1_000)]  # ~1 MB per event
    accepted, refused = 0, []
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        started = time.monotonic()
        for i in range(30):
            content, headers = binary_event(i, texts)
            reply = client.post("/events", content=content, headers=headers)
            assert reply.status_code in (202, 429), reply.text[:300]
            if reply.status_code == 202:
                accepted += len(texts)
            else:
                refused.append(reply)
        elapsed = time.monotonic() - started
        keyed = client.post("/v1/jobs", json={"texts": ["a keyed job"]}, headers=bearer(ALICE))
        metrics = client.get("/metrics")
    assert 5_000 <= accepted <= 10_000 + 100 * elapsed + 1_000, (accepted, elapsed)
    assert len(refused) >= 15
    error = refused[0].json()["error"]
    assert error["code"] == "rate_limited" and "anonymous" in error["message"]
    assert int(refused[0].headers["retry-after"]) >= 1
    assert keyed.status_code == 202
    assert metrics.status_code == 200
    assert used_fraction(jobs) < 0.8


def test_admission_keeps_the_jobs_redis_below_its_threshold(make_app, live_server,
                                                            jobs_redis) -> None:
    jobs = redis.Redis.from_url(jobs_redis.url)
    jobs.config_set("maxmemory", 40 * 1024 * 1024)
    app = make_app(redis_url=jobs_redis.url, job_max_items=5_000)
    texts = [f"{i} " + "a job that fills the store " * 40 for i in range(2_000)]  # ~2 MB
    codes = []
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        for _ in range(40):
            reply = client.post("/v1/jobs", json={"texts": texts})
            codes.append(reply.status_code)
            if reply.status_code == 503:
                break
            assert reply.status_code == 202, reply.text[:300]
        assert reply.status_code == 503, codes
        assert reply.json()["error"]["code"] == "jobs_full"
        assert reply.headers["retry-after"] == "30"
        letter = client.post("/events/dead-letter", headers=STRUCTURED, content=json.dumps({
            "specversion": "1.0", "type": "t", "source": "/s", "id": "1",
            "data": "x" * 200_000}).encode())
        small = client.post("/v1/predict", json={"text": "predictions still answer"})
    assert codes.count(202) >= 5
    assert used_fraction(jobs) < 0.8
    assert letter.status_code in (202, 503)  # admitted only while it fits
    assert small.status_code == 200


def test_dead_letters_are_bounded_in_size_count_and_time(make_app, live_server,
                                                         jobs_redis) -> None:
    jobs = redis.Redis.from_url(jobs_redis.url)
    app = make_app(redis_url=jobs_redis.url, dead_letter_keep=3, dead_letter_ttl_s=2,
                   dead_letter_max_bytes=4096)

    def letter(i: int, data_bytes: int = 1_000_000) -> bytes:
        return json.dumps({"specversion": "1.0", "type": "dev.surgeserve.bulk.requested",
                           "source": "/broker", "id": f"dl-{i}", "bigext": "e" * 10_000,
                           "data": {"texts": ["x" * data_bytes]}}).encode()

    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        for i in range(5):
            assert client.post("/events/dead-letter", content=letter(i),
                               headers=STRUCTURED).status_code == 202
        kept = [json.loads(e) for e in jobs.lrange("surge:deadletter", 0, -1)]
        assert [e["attributes"]["id"] for e in kept] == ["dl-4", "dl-3", "dl-2"]  # newest 3
        sizes = [len(e) for e in jobs.lrange("surge:deadletter", 0, -1)]
        assert max(sizes) < 8_000, sizes  # data and attributes cut, not 1 MB each
        assert kept[0]["data_truncated"] and kept[0]["data_bytes"] > 1_000_000
        assert len(kept[0]["attributes"]["bigext"]) == 1024
        assert 0 < jobs.ttl("surge:deadletter") <= 2
        time.sleep(1.5)
        client.post("/events/dead-letter", content=letter(5, 10), headers=STRUCTURED)
        time.sleep(0.7)  # dl-2..dl-4 are now older than the TTL, dl-5 is not
        client.post("/events/dead-letter", content=letter(6, 10), headers=STRUCTURED)
        ids = [json.loads(e)["attributes"]["id"] for e in jobs.lrange("surge:deadletter", 0, -1)]
        assert ids == ["dl-6", "dl-5"]
        time.sleep(2.2)
        assert not jobs.exists("surge:deadletter")


def test_concurrent_large_uploads_are_bounded(make_app, live_server, jobs_redis) -> None:
    app = make_app(redis_url=jobs_redis.url, large_body_bytes=64 * 1024,
                   large_body_concurrency=1)
    body = json.dumps({"texts": ["a large upload text " * 10] * 1_000}).encode()  # ~200 KB
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        slow = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        slow.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
                     + f"content-length: {len(body)}\r\n\r\n".encode() + body[:1000])
        time.sleep(1.0)  # the slow upload holds the one large-body slot (taken at its head)
        busy = client.post("/v1/jobs", content=body,
                           headers={"content-type": "application/json"})
        small = client.post("/v1/jobs", json={"texts": ["small"]})
        slow.sendall(body[1000:])
        answer = slow.recv(4096)
        slow.close()
        after = client.post("/v1/jobs", content=body,
                            headers={"content-type": "application/json"})
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "overloaded"
    assert int(busy.headers["retry-after"]) >= 1
    assert small.status_code == 202
    assert answer.startswith(b"HTTP/1.1 202")
    assert after.status_code == 202


def test_rate_limit_counts_texts_not_requests(make_app, live_server, default_bundle) -> None:
    app = make_app(rate_limit_rps=1.0, rate_limit_burst=10)
    tensor = {"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a", "b", "c"]}
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        first = client.post("/v1/bulk-predict", json={"texts": [f"t{i}" for i in range(8)]})
        second = client.post("/v1/bulk-predict", json={"texts": [f"u{i}" for i in range(8)]})
        one = client.post("/v1/predict", json={"text": "one text"})
        oip = client.post(f"/v2/models/{default_bundle.name}/infer", json={"inputs": [tensor]})
    assert first.status_code == 200
    assert second.status_code == 429, "a bulk request of 8 texts cost one token"
    assert second.json()["error"]["code"] == "rate_limited"
    assert int(second.headers["retry-after"]) >= 5  # 8 texts at 1/s with ~2 left
    assert one.status_code == 200
    assert oip.status_code == 429


def test_empty_api_key_header_does_not_hide_a_bearer_key(make_app, live_server) -> None:
    app = make_app(api_keys=KEYS)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        reply = client.post("/v1/predict", json={"text": "hi"},
                            headers={"X-API-Key": ""} | bearer(ALICE))
        assert reply.status_code == 200, reply.text
        assert client.post("/v1/predict", json={"text": "hi"},
                           headers={"X-API-Key": ""}).status_code == 401


@pytest.mark.parametrize("path", ["/events", "/events/dead-letter"])
def test_events_take_a_key_from_the_subscriber_uri(make_app, live_server, jobs_redis,
                                                   path: str) -> None:
    app = make_app(api_keys=KEYS, events_auth="keyed", redis_url=jobs_redis.url,
                   events_anon_burst=1)
    content, headers = binary_event(1, ["a text from the broker"])
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        assert client.post(path, content=content, headers=headers).status_code == 401
        wrong = client.post(f"{path}?api_key=sk_nope", content=content, headers=headers)
        assert wrong.status_code == 401
        for _ in range(3):  # keyed: the anonymous quota (1 text here) does not apply
            reply = client.post(f"{path}?api_key={ALICE}", content=content, headers=headers)
            assert reply.status_code == 202, reply.text
        if path == "/events":
            job = json.loads(reply.content)["job_id"]
            assert client.get(f"/v1/jobs/{job}", headers=bearer(ALICE)).status_code == 200
            assert client.get(f"/v1/jobs/{job}", headers=bearer(BOB)).status_code == 404


def test_quota_applies_per_address_to_anonymous_dead_letters(make_app, live_server,
                                                              jobs_redis) -> None:
    app = make_app(redis_url=jobs_redis.url, events_anon_rate=0.5, events_anon_burst=3)
    letter = json.dumps({"specversion": "1.0", "type": "x", "source": "/s", "id": "1"})
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        codes = [client.post("/events/dead-letter", content=letter,
                             headers=STRUCTURED).status_code for _ in range(5)]
    assert codes == [202, 202, 202, 429, 429]


def test_big_job_bodies_under_a_quota_are_charged_after_parsing(make_app, live_server,
                                                               jobs_redis) -> None:
    """An event bigger than the whole burst still gets in once (a full bucket), then the
    address waits until the debt is paid back."""
    app = make_app(redis_url=jobs_redis.url, events_anon_rate=1.0, events_anon_burst=10)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        content, headers = binary_event(1, [f"text {i}" for i in range(50)])
        first = client.post("/events", content=content, headers=headers)
        content, headers = binary_event(2, ["one more"])
        second = client.post("/events", content=content, headers=headers)
    assert first.status_code == 202
    assert second.status_code == 429 and int(second.headers["retry-after"]) >= 40

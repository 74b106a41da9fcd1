"""Caller ids through jobs (JSON, NDJSON, CloudEvents in; result pages and the NDJSON stream
out), `GET /v1/jobs` (per key, newest first, paged, bounded with a TTL) and `GET /v1/limits`:
real jobs Redis, real worker process, the API on real uvicorn."""

from __future__ import annotations

import json

import httpx
import pytest
import redis
from cloudevents.core.bindings.http import to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from batch import store as job_store
from common.auth import hash_key
from tests.integration.test_jobs import jobs_redis, start_worker, wait_done, worker

__all__ = ["jobs_redis", "start_worker", "worker"]

ALICE, BOB = "sk_alice_0123456789", "sk_bob_9876543210"
KEYS = f"alice:{hash_key(ALICE)},bob:{hash_key(BOB)}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def all_results(client: httpx.Client, job_id: str, limit: int = 2) -> list[dict]:  # type: ignore[type-arg]
    seen, url = [], f"/v1/jobs/{job_id}/results?limit={limit}"
    while url:
        page = client.get(url).json()
        seen += page["results"]
        url = page["next"]
    return seen


def test_ids_come_back_on_pages_and_the_stream(make_app, live_server, jobs_redis, cache_redis,
                                               worker) -> None:
    app = make_app(redis_url=jobs_redis.url, cache_url=cache_redis.url, job_chunk_size=2)
    items = [{"id": "a", "text": "I loved every minute"}, "no id here",
             {"id": 7, "text": "Terrible, boring"}, {"text": "an object without id"},
             {"id": "é\u2028", "text": "a, quoted, one"}]
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        job_id = client.post("/v1/jobs", json={"texts": items}).json()["id"]
        assert wait_done(client, job_id)["status"] == "succeeded"
        paged = all_results(client, job_id)
        stream = client.get(f"/v1/jobs/{job_id}/results",
                            headers={"accept": "application/x-ndjson"})
        streamed = [json.loads(line) for line in stream.text.splitlines()]
        body = (b'{"id": "n1", "text": "loved it"}\n"plain"\n'
                b'{"id": "n\\u2028x", "text": "a line\xe2\x80\xa8with U+2028 raw"}\n')
        ndjson = client.post("/v1/jobs", content=body,
                             headers={"content-type": "application/x-ndjson"}).json()
        assert wait_done(client, ndjson["id"])["status"] == "succeeded"
        from_ndjson = all_results(client, ndjson["id"])
        event = to_binary(CloudEvent(attributes={
            "type": "dev.surgeserve.bulk.requested", "source": "/tests", "id": "ids-1",
            "datacontenttype": "application/json"},
            data={"texts": [{"id": "e1", "text": "loved it"}, "plain"]}), JSONFormat())
        reply = client.post("/events", content=event.body, headers=event.headers).json()
        assert wait_done(client, reply["job_id"])["status"] == "succeeded"
        from_event = all_results(client, reply["job_id"])
    expected = ["a", None, 7, None, "é\u2028"]
    assert [r["id"] for r in paged] == [r["id"] for r in streamed] == expected
    assert [r["index"] for r in paged] == list(range(5))
    assert [r["label"] for r in paged[:3:2]] == ["POSITIVE", "NEGATIVE"]
    assert ndjson["total"] == 3  # U+2028 inside a line did not split it
    assert [r["id"] for r in from_ndjson] == ["n1", None, "n\u2028x"]
    assert [r["id"] for r in from_event] == ["e1", None]
    ids_key = f"surge:job:{job_id}:ids"
    ttl = redis.Redis.from_url(jobs_redis.url).ttl(ids_key)
    assert 0 < ttl <= 7 * 24 * 3600  # the ids expire with the job


@pytest.mark.parametrize("item,code", [
    ({"id": "x" * 257, "text": "t"}, "invalid_id"),
    ({"id": True, "text": "t"}, "invalid_id"),
    ({"id": 2**64, "text": "t"}, "invalid_id"),
    ({"id": "\ud800", "text": "t"}, "invalid_id"),
    ({"id": "k", "body": "no text"}, "invalid_input"),
    (["a list"], "invalid_input"),
])
def test_bad_items_are_refused_naming_the_item(make_app, live_server, jobs_redis, item,
                                               code) -> None:
    app = make_app(redis_url=jobs_redis.url)
    with live_server(app) as srv, httpx.Client(base_url=srv.url) as client:
        body = json.dumps({"texts": ["fine", item]})  # a lone surrogate as a JSON escape
        response = client.post("/v1/jobs", content=body,
                               headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["detail"] == {"index": 1}


def test_jobs_are_listed_per_key_newest_first_paged_and_bounded(make_app, live_server,
                                                                jobs_redis, monkeypatch) -> None:
    monkeypatch.setattr(job_store, "OWNER_INDEX_KEEP", 4)
    app = make_app(redis_url=jobs_redis.url, api_keys=KEYS)
    with live_server(app) as srv, httpx.Client(base_url=srv.url) as client:
        mine = [client.post("/v1/jobs", json={"texts": [f"text {k}"]},
                            headers=bearer(ALICE)).json()["id"] for k in range(6)]
        theirs = client.post("/v1/jobs", json={"texts": ["x"]}, headers=bearer(BOB)).json()
        again = client.post("/v1/jobs", json={"texts": ["text 0"]},
                            headers=bearer(ALICE) | {"idempotency-key": "k1"}).json()["id"]
        replay = client.post("/v1/jobs", json={"texts": ["text 0"]},
                             headers=bearer(ALICE) | {"idempotency-key": "k1"})
        first = client.get("/v1/jobs?limit=3", headers=bearer(ALICE)).json()
        second = client.get(first["next"], headers=bearer(ALICE)).json()
        bobs = client.get("/v1/jobs", headers=bearer(BOB)).json()
        anonymous = client.get("/v1/jobs")
    assert replay.status_code == 200 and replay.json()["id"] == again
    newest = [again, *reversed(mine)][:4]  # the index keeps the newest 4; a replay adds none
    assert [j["id"] for j in first["jobs"] + second["jobs"]] == newest
    assert first["next_offset"] == 3 and second["next_offset"] is None
    assert first["jobs"][0]["status"] == "queued" and first["jobs"][0]["total"] == 1
    assert [j["id"] for j in bobs["jobs"]] == [theirs["id"]]
    assert anonymous.status_code == 401
    r = redis.Redis.from_url(jobs_redis.url)
    keys = [k for k in r.scan_iter("surge:jobs:owner:*")]
    assert len(keys) == 2 and all(0 < r.ttl(k) <= 7 * 24 * 3600 for k in keys)
    assert b"alice" not in b"".join(keys)  # the owner is hashed into the key name


def test_listing_without_keys_is_off_unless_asked(make_app, live_server, jobs_redis) -> None:
    closed = make_app(redis_url=jobs_redis.url)
    with live_server(closed) as srv, httpx.Client(base_url=srv.url) as client:
        client.post("/v1/jobs", json={"texts": ["a"]})
        refused = client.get("/v1/jobs")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "listing_needs_key"
    opened = make_app(redis_url=jobs_redis.url, jobs_list_anonymous=True)
    with live_server(opened) as srv, httpx.Client(base_url=srv.url) as client:
        job_id = client.post("/v1/jobs", json={"texts": ["b"]}).json()["id"]
        listed = client.get("/v1/jobs").json()
    assert [j["id"] for j in listed["jobs"]] == [job_id]  # jobs from before were not indexed


def test_limits_are_published(make_app, live_server, jobs_redis) -> None:
    app = make_app(redis_url=jobs_redis.url, job_max_items=3, job_max_bytes=4096,
                   api_keys=KEYS)
    with live_server(app) as srv, httpx.Client(base_url=srv.url) as client:
        assert client.get("/v1/limits").status_code == 401
        limits = client.get("/v1/limits", headers=bearer(ALICE)).json()
    assert limits["job_max_items"] == 3 and limits["job_max_bytes"] == 4096
    assert limits["bulk_max_items"] == 256 and limits["max_text_chars"] == 5000


def test_ids_are_part_of_the_body_an_idempotency_key_names(make_app, live_server,
                                                          jobs_redis) -> None:
    app = make_app(redis_url=jobs_redis.url)
    key = {"idempotency-key": "with-ids"}
    with live_server(app) as srv, httpx.Client(base_url=srv.url) as client:
        first = client.post("/v1/jobs", json={"texts": [{"id": "a", "text": "x"}]},
                            headers=key)
        again = client.post("/v1/jobs", json={"texts": [{"id": "a", "text": "x"}]},
                            headers=key)
        other = client.post("/v1/jobs", json={"texts": [{"id": "b", "text": "x"}]},
                            headers=key)
        plain = client.post("/v1/jobs", json={"texts": ["x"]}, headers=key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    for refused in (other, plain):
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "idempotency_key_reused"

"""Submitting jobs under real concurrency, on a real jobs Redis and real uvicorn (the jobs role:
no model, no worker, so the queue shows exactly what was enqueued): concurrent duplicates make
one job, a reused key with another body is refused, CloudEvent keys are scoped by owner, NDJSON
splits on newlines only, and a full jobs Redis answers 503."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from batch.api import _ndjson_items
from common.auth import hash_key
from common.corpus import snippets
from common.metrics import Metrics
from common.settings import Settings
from online.app import create_app
from tests.integration.event_sink import Sink
from tests.integration.test_jobs import job_count, jobs_redis, start_worker, wait_done

__all__ = ["jobs_redis", "start_worker"]  # fixtures used by name

QUEUE = "surgeserve.chunks"
ALICE = "sk_alice_0123456789"


@pytest.fixture
def jobs_only(live_server, jobs_redis) -> Iterator[Callable[..., httpx.Client]]:  # type: ignore[no-untyped-def]
    """Factory: a client of the jobs role (no model) on real uvicorn, with settings."""
    stack: list[Any] = []

    def start(**overrides: Any) -> httpx.Client:
        settings = Settings(**{"role": "jobs", "redis_url": jobs_redis.url,
                               "access_log": False, "job_chunk_size": 100} | overrides)
        server = live_server(create_app(settings, metrics=Metrics())).__enter__()
        client = httpx.Client(base_url=server.url, timeout=120)
        stack.append((server, client))
        return client

    yield start
    for server, client in reversed(stack):
        client.close()
        server.__exit__(None, None, None)


def at_once(n: int, send: Callable[[httpx.Client], httpx.Response],
            base_url: str) -> list[httpx.Response]:
    """`n` requests released together from `n` threads, each on its own connection."""
    barrier = threading.Barrier(n)
    replies: list[httpx.Response | BaseException] = [RuntimeError("not sent")] * n

    def one(k: int) -> None:
        with httpx.Client(base_url=base_url, timeout=300) as client:
            barrier.wait()
            try:
                replies[k] = send(client)
            except BaseException as exc:  # reported below
                replies[k] = exc

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return [r for r in replies if isinstance(r, httpx.Response)]


def ce_message(texts: list[str], event_id: str, *, binary: bool = True,
               source: str = "/tests/duplicates") -> Any:
    event = CloudEvent(attributes={"type": "dev.surgeserve.bulk.requested", "source": source,
                                   "id": event_id, "datacontenttype": "application/json"},
                       data={"texts": texts})
    return (to_binary if binary else to_structured)(event, JSONFormat())


def job_id_of(reply: httpx.Response) -> str:
    body = reply.json()
    return str(body.get("job_id") or body.get("data", {}).get("job_id") or body["id"])


def one_job_enqueued_once(url: str, job_id: str, texts: int) -> None:
    """Exactly one job exists, with its texts stored once and its chunks enqueued once."""
    broker = redis.Redis.from_url(url, decode_responses=True)
    assert job_count(url) == 1
    assert broker.llen(f"surge:job:{job_id}:texts") == texts
    assert [k for k in broker.scan_iter("surge:job:*:texts")] == [
        f"surge:job:{job_id}:texts"]  # the duplicates' texts were removed
    assert broker.llen(QUEUE) == (texts + 99) // 100  # only the creator enqueued
    broker.close()


def test_sixteen_concurrent_posts_with_one_key_make_one_job(jobs_only, jobs_redis,
                                                            start_worker) -> None:  # type: ignore[no-untyped-def]
    client = jobs_only()
    replies = at_once(16, lambda c: c.post("/v1/jobs", json={"texts": ["loved it", "dull"]},
                                           headers={"idempotency-key": "nightly-1"}),
                      str(client.base_url))
    assert sorted(r.status_code for r in replies) == [200] * 15 + [202]
    ids = {r.json()["id"] for r in replies}
    assert len(ids) == 1
    job_id = ids.pop()
    assert {r.headers["location"] for r in replies} == {f"/v1/jobs/{job_id}"}
    one_job_enqueued_once(jobs_redis.url, job_id, 2)
    sink = Sink()
    try:  # and it ends once, with one end event
        start_worker(K_SINK=sink.url)
        assert wait_done(client, job_id)["status"] == "succeeded"
        sink.wait(1, timeout=30)
        time.sleep(6)  # a sweep later: nothing more
        assert [e["id"] for e in sink.received] == [f"{job_id}-ended"]
    finally:
        sink.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "structured"])
def test_sixteen_concurrent_deliveries_of_one_event_make_one_job(jobs_only, jobs_redis,
                                                                 binary: bool) -> None:
    # 16 x 2,000 texts at once is past the anonymous-events quota (its own tests are in
    # test_exhaustion.py): off here, where idempotency under concurrency is the subject.
    client = jobs_only(events_anon_rate=0)
    message = ce_message(snippets(2000), "order-17", binary=binary)
    replies = at_once(16, lambda c: c.post("/events", content=message.body,
                                           headers=message.headers), str(client.base_url))
    assert {r.status_code for r in replies} == {202}
    ids = {job_id_of(r) for r in replies}
    assert len(ids) == 1
    one_job_enqueued_once(jobs_redis.url, ids.pop(), 2000)


@pytest.mark.slow
def test_concurrent_deliveries_of_a_job_limit_sized_event_make_one_job(jobs_only,
                                                                       jobs_redis) -> None:
    # The default job limit (100,000 texts; ~6 MB of JSON here), delivered 8 times at once.
    # The anonymous quota is off (its own tests are in test_exhaustion.py); at most
    # large_body_concurrency (2) bodies this big are taken at once, the rest answer 503 +
    # Retry-After, which the Broker retries: so do we, until every delivery is answered.
    client = jobs_only(max_body_bytes=64 * 1_048_576, events_anon_rate=0)
    corpus = snippets()
    texts = [f"{corpus[i % len(corpus)]} ({i})" for i in range(100_000)]
    message = ce_message(texts, "bulk-upload-1")
    replies = at_once(8, lambda c: c.post("/events", content=message.body,
                                          headers=message.headers), str(client.base_url))
    assert {r.status_code for r in replies} <= {202, 503}, replies[0].text
    assert all("retry-after" in r.headers for r in replies if r.status_code == 503)
    for k, reply in enumerate(replies):
        while reply.status_code == 503:
            time.sleep(0.2)
            reply = client.post("/events", content=message.body, headers=message.headers)
        replies[k] = reply
    assert {r.status_code for r in replies} == {202}, replies[0].text
    ids = {job_id_of(r) for r in replies}
    assert len(ids) == 1
    one_job_enqueued_once(jobs_redis.url, ids.pop(), 100_000)


def test_a_reused_key_with_another_body_is_refused(jobs_only, jobs_redis) -> None:
    client = jobs_only()
    key = {"idempotency-key": "k-1"}
    first = client.post("/v1/jobs", json={"texts": ["a", "b"]}, headers=key)
    assert first.status_code == 202
    assert client.post("/v1/jobs", json={"texts": ["a", "b"]}, headers=key).status_code == 200
    for body in ({"texts": ["a", "c"]}, {"texts": ["b", "a"]}, {"texts": ["a", "b", "c"]},
                 {"texts": ["a", "b"], "model": "another"}):
        refused = client.post("/v1/jobs", json=body, headers=key)
        assert refused.status_code == 422, body
        assert refused.json()["error"]["code"] == "idempotency_key_reused"
        assert refused.json()["error"]["detail"] == {"job_id": first.json()["id"]}
    message = ce_message(["x"], "e-1")
    assert client.post("/events", content=message.body, headers=message.headers
                       ).status_code == 202
    other = ce_message(["y"], "e-1")
    refused = client.post("/events", content=other.body, headers=other.headers)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "idempotency_key_reused"
    assert job_count(jobs_redis.url) == 2


def test_event_keys_are_scoped_by_owner_and_apart_from_http_keys(jobs_only,
                                                                 jobs_redis) -> None:
    # Keys configured, events open (the Knative Trigger sends no key): an anonymous event
    # cannot claim the (source, id) a keyed client sends later with its own data.
    client = jobs_only(api_keys=f"alice:{hash_key(ALICE)}")
    anonymous = ce_message(["anonymous text"], "order-9")
    first = client.post("/events", content=anonymous.body, headers=anonymous.headers)
    keyed = ce_message(["alice's own text"], "order-9")
    mine = client.post("/events", content=keyed.body,
                       headers=keyed.headers | {"authorization": f"Bearer {ALICE}"})
    assert first.status_code == mine.status_code == 202
    assert job_id_of(first) != job_id_of(mine)
    job = client.get(f"/v1/jobs/{job_id_of(mine)}", headers={"x-api-key": ALICE})
    assert job.status_code == 200 and job.json()["total"] == 1
    again = client.post("/events", content=keyed.body,
                        headers=keyed.headers | {"x-api-key": ALICE})
    assert job_id_of(again) == job_id_of(mine)
    wrong = client.post("/events", content=keyed.body,
                        headers=keyed.headers | {"x-api-key": "sk_not_a_key"})
    assert wrong.status_code == 401  # a key that is sent must be a real one
    assert job_count(jobs_redis.url) == 2


def test_http_keys_cannot_claim_an_event(jobs_only, jobs_redis) -> None:
    client = jobs_only()
    claimed = client.post("/v1/jobs", json={"texts": ["squatter"]},
                          headers={"idempotency-key": "ce:/shop:order-1"})
    message = ce_message(["the real order"], "order-1", source="/shop")
    reply = client.post("/events", content=message.body, headers=message.headers)
    assert reply.status_code == 202 and job_id_of(reply) != claimed.json()["id"]
    assert job_count(jobs_redis.url) == 2


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85", "\f", "\v", "\x1c", "\x1d",
                                  "\x1e"], ids=["U+2028", "U+2029", "U+0085", "FF", "VT",
                                                "FS", "GS", "RS"])
def test_ndjson_splits_records_on_newlines_only(jobs_only, char: str) -> None:
    # json.dumps leaves U+2028, U+2029, U+0085 raw and escapes the control characters (raw,
    # they are not JSON); the bare line carries each raw.
    body = (json.dumps(f"raw {char} inside a JSON string", ensure_ascii=False) + "\n"
            + json.dumps({"text": f"in an object {char} too"}, ensure_ascii=False) + "\r\n"
            + f"a bare line {char} of text\n").encode()
    assert _ndjson_items(body) == ([f"raw {char} inside a JSON string",
                                    f"in an object {char} too", f"a bare line {char} of text"],
                                   None)
    reply = jobs_only().post("/v1/jobs", content=body,
                             headers={"content-type": "application/x-ndjson"})
    assert reply.status_code == 202 and reply.json()["total"] == 3


def test_a_full_jobs_redis_answers_503_and_cancel_frees_texts(jobs_only, jobs_redis) -> None:
    client = jobs_only()
    kept = client.post("/v1/jobs", json={"texts": snippets(3000)},
                       headers={"idempotency-key": "before"})
    assert kept.status_code == 202
    broker = redis.Redis.from_url(jobs_redis.url, decode_responses=True)
    used = int(broker.info("memory")["used_memory"])
    # full: noeviction refuses every write that needs memory. Half of what is used now, not
    # just under it: used_memory also counts client buffers that Redis shrinks a moment later
    # (the 3,000-text upload's query buffer), which would make room again under the test.
    broker.config_set("maxmemory", used // 2)
    try:
        refused = client.post("/v1/jobs", json={"texts": ["one more"]})
        assert refused.status_code == 503, refused.text
        # jobs_unavailable: the write was refused (an admission gate may answer jobs_full
        # first, before the server is full); either way a 503 to retry, never a 500
        assert refused.json()["error"]["code"] in ("jobs_unavailable", "jobs_full")
        assert int(refused.headers["retry-after"]) >= 1
        message = ce_message(["an event"], "while-full")
        event = client.post("/events", content=message.body, headers=message.headers)
        assert event.status_code == 503 and int(event.headers["retry-after"]) >= 1
        replay = client.post("/v1/jobs", json={"texts": snippets(3000)},
                             headers={"idempotency-key": "before"})
        assert replay.status_code == 200  # an existing job is still found
        job_id = kept.json()["id"]
        texts = f"surge:job:{job_id}:texts"
        assert broker.exists(texts)
        cancelled = client.delete(f"/v1/jobs/{job_id}")  # works on a full Redis, frees room
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert not broker.exists(texts)
        assert json.loads(broker.hget("surge:outbox", job_id))["type"] == "cancelled"
        assert job_count(jobs_redis.url) == 1
    finally:
        broker.config_set("maxmemory", 0)
        broker.close()
    assert client.post("/v1/jobs", json={"texts": ["room again"]}).status_code == 202


def test_a_read_only_jobs_redis_answers_503_not_500(jobs_only, jobs_redis) -> None:
    """A jobs Redis demoted to a replica (a failover in progress) refuses writes with
    READONLY: translated at the boundary into 503 jobs_unavailable, never a 500."""
    client = jobs_only()
    broker = redis.Redis.from_url(jobs_redis.url, decode_responses=True)
    broker.replicaof("127.0.0.1", "1")  # a primary that never answers: read-only from now on
    try:
        refused = client.post("/v1/jobs", json={"texts": ["one"]})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "jobs_unavailable"
        assert int(refused.headers["retry-after"]) >= 1
        assert "READONLY" not in refused.text
    finally:
        broker.replicaof("NO", "ONE")
        broker.close()
    assert client.post("/v1/jobs", json={"texts": ["writable again"]}).status_code == 202

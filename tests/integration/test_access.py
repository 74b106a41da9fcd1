"""Access control with real parts: API keys (hashed in settings; Bearer or X-API-Key), jobs
owned by their key, open health/metrics, and per-key rate limits shared by two replicas
through a real cache Redis."""

from __future__ import annotations

import time

import httpx
import pytest

from common.auth import KeyRing, hash_key
from common.settings import Settings
from tests.integration.test_jobs import jobs_redis

__all__ = ["jobs_redis"]

ALICE, BOB = "sk_alice_0123456789", "sk_bob_9876543210"
KEYS = f"alice:{hash_key(ALICE)},bob:{hash_key(BOB)}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keyring_hashes_and_compares() -> None:
    ring = KeyRing(KEYS)
    assert ring.identify(ALICE) == "alice" and ring.identify(BOB) == "bob"
    assert ring.identify("sk_alice_012345678") is None
    assert ring.principal({"x-api-key": BOB}) == "bob"
    assert ring.principal({"authorization": f"bearer {ALICE}"}) == "alice"
    with pytest.raises(ValueError, match="64 hex"):
        Settings(api_keys=f"alice:{ALICE}")  # a raw key instead of its hash is refused
    assert Settings(api_keys=KEYS).masked()["api_keys"] == ["alice", "bob"]


def test_keys_guard_predictions_and_jobs_but_not_health(make_app, live_server,
                                                        jobs_redis) -> None:
    app = make_app(api_keys=KEYS, redis_url=jobs_redis.url)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        refused = client.post("/v1/predict", json={"text": "hello"})
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert refused.json()["error"]["code"] == "unauthorized"
        wrong = client.post("/v1/predict", json={"text": "hello"}, headers=bearer("sk_nope"))
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "unknown API key"
        assert ALICE not in wrong.text
        assert client.post("/v1/predict", json={"text": "hi"}, headers=bearer(ALICE)).is_success
        assert client.post("/v1/predict", json={"text": "hi"},
                           headers={"X-API-Key": BOB}).is_success
        assert client.post("/v2/models/x/infer", json={}).status_code == 401
        for open_path in ("/healthz", "/readyz", "/metrics", "/"):
            assert client.get(open_path).status_code == 200, open_path

        # jobs belong to the key that made them: another key gets 404, like a wrong id
        job = client.post("/v1/jobs", json={"texts": ["a", "b"]}, headers=bearer(ALICE))
        assert job.status_code == 202
        path = f"/v1/jobs/{job.json()['id']}"
        assert client.get(path, headers=bearer(ALICE)).status_code == 200
        for method, sub in (("GET", ""), ("GET", "/results"), ("DELETE", "")):
            other = client.request(method, path + sub, headers=bearer(BOB))
            assert other.status_code == 404, (method, sub)
            assert other.json()["error"]["code"] == "not_found"
        stream = client.get(path + "/results", headers=bearer(BOB) | {
            "accept": "application/x-ndjson"})
        assert stream.status_code == 404
        assert client.get(path).status_code == 401
        # the same Idempotency-Key from two keys makes two jobs
        first = client.post("/v1/jobs", json={"texts": ["x"]},
                            headers=bearer(ALICE) | {"idempotency-key": "k1"}).json()["id"]
        second = client.post("/v1/jobs", json={"texts": ["x"]},
                             headers=bearer(BOB) | {"idempotency-key": "k1"}).json()["id"]
        assert first != second


def test_predict_can_be_open_while_jobs_stay_keyed(make_app, live_server, jobs_redis) -> None:
    app = make_app(api_keys=KEYS, predict_auth="open", redis_url=jobs_redis.url)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        assert client.post("/v1/predict", json={"text": "open"}).status_code == 200
        assert client.post("/v1/jobs", json={"texts": ["x"]}).status_code == 401


def test_rate_limit_is_per_key_and_shared_by_replicas(make_app, live_server,
                                                      cache_redis) -> None:
    # A token back every 4 s: the six requests below need not fit in one second.
    settings = {"api_keys": KEYS, "cache_url": cache_redis.url, "rate_limit_rps": 0.25,
                "rate_limit_burst": 3}
    with live_server(make_app(**settings)) as one, live_server(make_app(**settings)) as two:
        codes = []
        for i in range(6):  # alternate replicas: one shared bucket of 3
            url = (one if i % 2 == 0 else two).url
            reply = httpx.post(f"{url}/v1/predict", json={"text": f"r{i}"},
                               headers=bearer(ALICE), timeout=30)
            codes.append(reply.status_code)
            if reply.status_code == 429:
                limited = reply
        assert codes.count(200) == 3 and codes.count(429) == 3, codes
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        # another key has its own bucket
        assert httpx.post(f"{one.url}/v1/predict", json={"text": "bob"}, headers=bearer(BOB),
                          timeout=30).status_code == 200
        time.sleep(4.1)  # a token comes back every 4 s
        assert httpx.post(f"{two.url}/v1/predict", json={"text": "later"},
                          headers=bearer(ALICE), timeout=30).status_code == 200
        assert httpx.get(f"{one.url}/metrics").status_code == 200  # never limited


def test_rate_limit_falls_back_per_replica_without_redis(make_app, live_server) -> None:
    app = make_app(rate_limit_rps=0.5, rate_limit_burst=2, cache_url="redis://127.0.0.1:1/0")
    with live_server(app) as srv:
        codes = [httpx.post(f"{srv.url}/v1/predict", json={"text": f"t{i}"},
                            timeout=30).status_code for i in range(4)]
    assert codes == [200, 200, 429, 429]  # by client address, limits still apply

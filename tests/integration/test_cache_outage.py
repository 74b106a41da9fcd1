"""The cache Redis dies and comes back: every request still answers 200 from the model."""

from __future__ import annotations

import time

import httpx

from tests.integration.test_api import metric


def test_cache_redis_killed_mid_run_then_restarted(make_app, live_server, cache_redis) -> None:
    app = make_app(cache_url=cache_redis.url, cache_backoff_max_s=0.3, lru_size=0)
    statuses: list[int] = []
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        def burst(tag: str, n: int = 10) -> None:
            for i in range(n):
                statuses.append(client.post("/v1/predict",
                                            json={"text": f"{tag} review number {i}"}).status_code)

        burst("before")
        assert metric(client, "surge_cache_up") == 1
        cache_redis.stop(kill=True)
        burst("during")
        errors = metric(client, "surge_cache_errors_total", operation="get")
        assert metric(client, "surge_cache_up") == 0
        cache_redis.start()  # same port, empty (cache role has no persistence)
        time.sleep(0.5)  # longer than the backoff cap
        burst("after")
        time.sleep(0.2)  # write-back is asynchronous
        hit = client.post("/v1/predict", json={"text": "after review number 3"}).json()
        assert metric(client, "surge_cache_up") == 1
    assert statuses == [200] * 30
    assert errors >= 1
    assert hit["cached"] is True  # written to, and read back from, the restarted Redis

"""Overload, deadlines and single-flight over real HTTP, with a deliberately slow model.

The model is a real ModelBundle whose backend sleeps: the queue, the deadlines and the
single-flight map are exercised exactly as with the real model, only slower and countable.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from common.bundle import ModelBundle
from common.metrics import Metrics
from common.settings import Settings
from online.app import create_app

EXPIRED = re.compile(r'surge_rejected_total\{model="[^"]+",reason="expired"\} [1-9]')


class SlowBackend:
    """Sleeps `delay` per forward pass and counts the texts it was asked for."""

    kind = "slow-fake"
    precision = "fp32"
    streams = 1

    def __init__(self, delay: float):
        self.delay = delay
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> list[list[int]]:
        with self._lock:
            self.seen.extend(texts)
        return [[1] * max(1, len(t.split())) for t in texts]

    def logits(self, batch_ids: list[list[int]]) -> np.ndarray:
        time.sleep(self.delay)
        return np.tile(np.array([[0.0, 1.0]]), (len(batch_ids), 1))


def slow_app(delay: float, **settings: object):  # type: ignore[no-untyped-def]
    backend = SlowBackend(delay)
    bundle = ModelBundle(name="slow", version="1", labels=["NO", "YES"], lowercase=False,
                         max_tokens=16, path=Path("."), manifest={}, engine=backend)
    config = Settings(access_log=False, model_workers=1, **settings)  # type: ignore[arg-type]
    return create_app(config, bundle=bundle, metrics=Metrics()), backend


def fire(url: str, texts: list[str]) -> list[httpx.Response]:
    """One request per text, all at once: each thread's client is made first (a new client
    costs ~15 ms of CPU for its TLS context, enough to spread 12 requests past a 0.3 s pass),
    then a barrier lets them go together."""
    clients = [httpx.Client(base_url=url, timeout=30) for _ in texts]
    start = threading.Barrier(len(texts))

    def one(client: httpx.Client, text: str) -> httpx.Response:
        start.wait()
        return client.post("/v1/predict", json={"text": text})

    try:
        with ThreadPoolExecutor(len(texts)) as pool:
            return list(pool.map(one, clients, texts))
    finally:
        for client in clients:
            client.close()


def test_concurrent_identical_misses_run_the_model_once(live_server) -> None:
    app, backend = slow_app(0.3, cache="off")
    with live_server(app) as srv:
        responses = fire(srv.url, ["the same review"] * 12)
    assert [r.status_code for r in responses] == [200] * 12
    assert backend.seen == ["the same review"]
    assert {r.json()["label"] for r in responses} == {"YES"}


def test_full_queue_answers_503_with_retry_after(live_server) -> None:
    app, _ = slow_app(0.4, cache="off", max_batch_size=1, max_queue=2, retry_after_s=3)
    with live_server(app) as srv:
        responses = fire(srv.url, [f"review {i}" for i in range(10)])
    refused = [r for r in responses if r.status_code == 503]
    assert refused, [r.status_code for r in responses]
    assert {r.status_code for r in responses} == {200, 503}
    for response in refused:
        assert response.headers["retry-after"] == "3"
        assert response.json()["error"]["code"] == "overloaded"


def test_request_past_its_deadline_answers_504(live_server) -> None:
    app, backend = slow_app(0.5, cache="off", max_batch_size=1, request_timeout_s=0.3)
    with live_server(app) as srv:
        responses = fire(srv.url, [f"slow {i}" for i in range(4)])
        # Queued items expire when the batcher next looks at them (after the running pass).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            after = httpx.get(f"{srv.url}/metrics").text
            if EXPIRED.search(after):
                break
            time.sleep(0.1)
    codes = sorted(r.status_code for r in responses)
    assert 504 in codes, codes
    late = [r for r in responses if r.status_code == 504]
    assert all(r.json()["error"]["code"] == "deadline_exceeded" for r in late)
    # Items that expired while queued never reached the model.
    assert len(backend.seen) < 4
    assert EXPIRED.search(after)


class BrokenBackend(SlowBackend):
    """Fails every forward pass (a model that crashes on its input)."""

    def logits(self, batch_ids: list[list[int]]) -> np.ndarray:
        raise RuntimeError("the engine failed")


def test_a_model_failure_is_a_logged_500_on_the_fast_path_too(live_server, caplog) -> None:  # type: ignore[no-untyped-def]
    bundle = ModelBundle(name="broken", version="1", labels=["NO", "YES"], lowercase=False,
                         max_tokens=16, path=Path("."), manifest={},
                         engine=BrokenBackend(0.0))
    config = Settings(access_log=False, model_workers=1, cache="off")  # type: ignore[call-arg]
    with live_server(create_app(config, bundle=bundle, metrics=Metrics())) as srv:
        caplog.clear()
        reply = httpx.post(f"{srv.url}/v1/predict", json={"text": "a"}, timeout=30)  # fast path
        assert reply.status_code == 500 and reply.json()["error"]["code"] == "model_error"
        assert "RuntimeError" not in reply.text  # the cause is logged, never sent
        reply = httpx.post(f"{srv.url}/v1/bulk-predict", json={"texts": ["b"]}, timeout=30)
        assert reply.status_code == 500 and reply.json()["error"]["code"] == "model_error"
    logged = [r for r in caplog.records if r.name == "online.app" and "model_error" in r.message]
    assert len(logged) == 2, [r.message for r in caplog.records]

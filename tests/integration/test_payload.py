"""Prediction events (common/payload.py) against real HTTP sinks on real sockets: a receiver
that records what arrives, one that refuses connections, one that accepts and never answers.
The events are parsed with the CloudEvents SDK; the app runs on real uvicorn."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat

from common.metrics import PAYLOAD_OUTCOMES, Metrics
from common.payload import EVENT_TYPE, SEND_TIMEOUT_S, SOURCE_JOBS, SOURCE_ONLINE
from common.redis_server import free_port
from common.settings import Settings
from common.sinkclient import SinkClient
from online.app import create_app
from tests.integration.test_jobs import jobs_api, jobs_redis, start_worker, wait_done

__all__ = ["jobs_api", "jobs_redis", "start_worker"]  # fixtures used by name

POSITIVE = "A wonderful, moving film with superb acting."


class Receiver:
    """A real HTTP sink on a free port: records every request, answers `status`."""

    def __init__(self, status: int = 202, idle_close_s: float | None = None):
        self.requests: list[tuple[dict[str, str], bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a Broker ingress does
            timeout = idle_close_s  # closes a connection idle this long

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[Any]:
        """Every request parsed by the CloudEvents SDK."""
        return [from_http(HTTPMessage(headers=h, body=b), JSONFormat())
                for h, b in list(self.requests)]

    def records(self) -> list[dict[str, Any]]:
        return [r for event in self.events() for r in _data(event)["predictions"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _data(event: Any) -> dict[str, Any]:
    data = event.get_data()
    return dict(json.loads(data) if isinstance(data, bytes | str) else data)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    sink = Receiver()
    yield sink
    sink.close()


@pytest.fixture
def hanging_sink() -> Iterator[str]:
    """A socket that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    sock.close()


@contextmanager
def predictor(live_server, bundle, **settings: Any) -> Iterator[tuple[httpx.Client, Metrics]]:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    app = create_app(Settings(access_log=False, **settings), bundle=bundle, metrics=metrics)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client, metrics


def outcomes(metrics: Metrics) -> dict[str, float]:
    return {name: metrics.registry.get_sample_value("surge_payload_events_total",
                                                    {"outcome": name}) or 0.0
            for name in PAYLOAD_OUTCOMES}


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def text_hash(text: str) -> str:
    """The cache key's hash of an (already normalised, cased) text."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def test_events_arrive_as_cloudevents_the_sdk_parses(live_server, default_bundle,
                                                     receiver) -> None:
    with predictor(live_server, default_bundle, payload_sink=receiver.url) as (client, m):
        replies = [client.post("/v1/predict", json={"text": POSITIVE},
                               headers={"X-Request-ID": f"req-{i}"}) for i in range(2)]
        bulk = client.post("/v1/bulk-predict", json={"texts": ["Dull and far too long.",
                                                               POSITIVE]},
                           headers={"X-Request-ID": "req-bulk"})
        assert [r.status_code for r in [*replies, bulk]] == [200, 200, 200]
        wait_for(lambda: len(receiver.records()) == 4)
        # The sender counts an event once the sink's reply is in, just after the sink has it.
        wait_for(lambda: outcomes(m)["sent"] >= 4, timeout=5)
        assert outcomes(m)["sent"] == 4

    for headers, body in receiver.requests:  # binary mode, JSON data, no raw text anywhere
        assert headers["ce-specversion"] == "1.0" and headers["ce-type"] == EVENT_TYPE
        assert headers["content-type"] == "application/json"
        assert b"wonderful" not in body and b"Dull" not in body
    events = receiver.events()
    assert {e.get_type() for e in events} == {EVENT_TYPE}
    assert {e.get_source() for e in events} == {SOURCE_ONLINE}
    assert len({e.get_id() for e in events}) == len(events)
    records = {(r["request_id"], r["hash"]): r for r in receiver.records()}
    first, second = records[("req-0", text_hash(POSITIVE.lower()))], records[
        ("req-1", text_hash(POSITIVE.lower()))]
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["label"] == replies[0].json()["label"] == "POSITIVE"
    assert first["scores"] == pytest.approx({s["label"]: s["score"]
                                             for s in replies[0].json()["scores"]})
    assert first["model"] == default_bundle.name and first["version"] == default_bundle.version
    assert first["engine"] == default_bundle.engine.kind
    assert first["precision"] == default_bundle.precision
    assert first["latency_ms"] > 0 and first["chars"] == len(POSITIVE)
    assert abs(first["time"] - time.time()) < 60
    dull = records[("req-bulk", text_hash("dull and far too long."))]
    assert dull["label"] == bulk.json()["results"][0]["label"] == "NEGATIVE"
    assert "text" not in dull


@pytest.mark.parametrize("mode", ["request", "response"])
def test_mode_and_text_decide_the_record(live_server, default_bundle, receiver,
                                         mode: str) -> None:
    with predictor(live_server, default_bundle, payload_sink=receiver.url, payload_mode=mode,
                   payload_text=True) as (client, _):
        assert client.post("/v1/predict", json={"text": POSITIVE}).status_code == 200
        wait_for(lambda: len(receiver.records()) == 1)
    (record,) = receiver.records()
    common = {"model", "version", "engine", "precision", "request_id", "time", "hash"}
    if mode == "request":  # the input side: the text only when configured (here it is)
        assert set(record) == common | {"chars", "text"} and record["text"] == POSITIVE
    else:  # the output side: never the text
        assert set(record) == common | {"label", "scores", "cached", "latency_ms"}


def test_sampling_holds_within_binomial_bounds(live_server, default_bundle, receiver) -> None:
    n, p = 1000, 0.3
    with predictor(live_server, default_bundle, payload_sink=receiver.url,
                   payload_sample=p) as (client, m):
        for i in range(n):
            assert client.post("/v1/predict", json={"text": f"fine film {i % 50}"}
                               ).status_code == 200
    sampled = len(receiver.records())
    sd = math.sqrt(n * p * (1 - p))  # 14.5: 5 sd puts a false failure near 1 in 3 million
    assert abs(sampled - n * p) < 5 * sd, sampled
    assert outcomes(m)["sent"] == sampled
    assert len({r["request_id"] for r in receiver.records()}) == sampled  # one per request


def load(client: httpx.Client, requests: int, threads: int = 8) -> list[tuple[int, float]]:
    """Concurrent predictions: (status, seconds) each."""
    def one(i: int) -> tuple[int, float]:
        started = time.perf_counter()
        status = client.post("/v1/predict", json={"text": f"a decent film {i % 40}"}
                             ).status_code
        return status, time.perf_counter() - started

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(requests)))


def test_a_refusing_sink_costs_no_request(live_server, default_bundle) -> None:
    """Default queue and batch; nothing listens on the sink's port."""
    dead = f"http://127.0.0.1:{free_port()}/"
    with predictor(live_server, default_bundle, payload_sink=dead) as (client, m):
        results = load(client, 300)
        assert [s for s, _ in results] == [200] * 300
        wait_for(lambda: outcomes(m)["failed"] > 0)
    counts = outcomes(m)
    assert counts["sent"] == 0 and counts["dropped_full"] == 0
    assert counts["failed"] + counts["dropped_closed"] == 300  # every prediction accounted


def test_a_hanging_sink_costs_no_request_and_drops_past_the_bound(live_server, default_bundle,
                                                                  hanging_sink) -> None:
    started = time.monotonic()
    with predictor(live_server, default_bundle, payload_sink=hanging_sink, payload_queue=50,
                   payload_batch=10) as (client, m):
        loading = time.monotonic()
        results = load(client, 400)
        load_s = time.monotonic() - loading
        assert [s for s, _ in results] == [200] * 400
        slow = sorted(seconds for _, seconds in results)[int(0.9 * len(results))]
        assert slow < SEND_TIMEOUT_S / 2, slow  # a reply that waited on the sink takes 2 s
        # The bound held: 50 queued, plus one batch of 10 taken per send, and a send to a
        # hanging sink takes SEND_TIMEOUT_S, then at least 0.25 s of backoff.
        sends = 1 + int(load_s / (SEND_TIMEOUT_S + 0.25))
        assert outcomes(m)["dropped_full"] >= 400 - 50 - 10 * sends, (load_s, outcomes(m))
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 10  # shutdown waits for the sink a bounded time
    wait_for(lambda: sum(outcomes(m).values()) == 400, timeout=SEND_TIMEOUT_S * 3)
    assert outcomes(m)["sent"] == 0 and outcomes(m)["failed"] >= 1
    assert time.monotonic() - started < 60


async def test_a_connection_the_sink_closed_while_idle_is_reopened() -> None:
    """Servers close idle keep-alive connections (uvicorn after 5 s): the next event goes on a
    new connection instead of failing (make bench lost 1.5% of events before this)."""
    sink = Receiver(idle_close_s=0.2)
    client = SinkClient(sink.url, timeout=SEND_TIMEOUT_S)
    try:
        assert await client.post({"content-type": "application/json"}, b"{}") == 202
        await asyncio.sleep(0.6)  # the sink has closed the connection by now
        assert await client.post({"content-type": "application/json"}, b"{}") == 202
        assert len(sink.requests) == 2
    finally:
        client.close()
        sink.close()


@pytest.mark.slow
def test_jobs_send_one_event_per_chunk(jobs_api, start_worker, receiver) -> None:
    start_worker(SURGE_PAYLOAD_SINK=receiver.url)
    texts = [f"review {i}: a fine, moving film" for i in range(250)]
    job = jobs_api.post("/v1/jobs", json={"texts": texts})
    assert job.status_code == 202
    job_id = job.json()["id"]
    assert wait_done(jobs_api, job_id)["status"] == "succeeded"
    wait_for(lambda: len(receiver.events()) == 3)
    events = receiver.events()
    assert {e.get_source() for e in events} == {SOURCE_JOBS}
    by_chunk = {_data(e)["predictions"][0]["request_id"]: _data(e)["predictions"]
                for e in events}
    assert sorted(by_chunk) == [f"{job_id}:{c}" for c in range(3)]
    assert [len(by_chunk[f"{job_id}:{c}"]) for c in range(3)] == [100, 100, 50]
    hashes = [r["hash"] for c in range(3) for r in by_chunk[f"{job_id}:{c}"]]
    assert hashes == [text_hash(t.lower()) for t in texts]
    results = jobs_api.get(f"/v1/jobs/{job_id}/results?limit=250").json()
    assert [r["label"] for c in range(3) for r in by_chunk[f"{job_id}:{c}"]] == [
        r["label"] for r in results["results"]]

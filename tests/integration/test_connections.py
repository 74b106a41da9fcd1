"""Slow, idle and too many connections against the real server (uvicorn with the production
configuration, online/server.py): idle, partial-header and body-trickling connections are
closed after their timeouts while another client keeps getting 200s; past the connection
cap other clients are still served; a client gone mid-body is a 499, never a 500; while
draining, responses say Connection: close."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from common.settings import Settings
from online.connections import connection_cap, raise_fd_limit
from tests.integration.test_jobs import jobs_redis

__all__ = ["jobs_redis"]

PREDICT = b"POST /v1/predict HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"


def connect(port: int, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if first:
        sock.sendall(first)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed its end (EOF or reset); False while it is open."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def serve_while(url: str, stop: threading.Event, codes: list[int]) -> None:
    """A well-behaved client: a kept-alive connection, a request every 50 ms."""
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            codes.append(client.post("/v1/predict", json={"text": "still served"}).status_code)
            time.sleep(0.05)


@pytest.fixture
def many_fds() -> int:
    limit = raise_fd_limit()
    if limit < 6_000:
        pytest.skip(f"needs ~5,000 file descriptors, the limit is {limit}")
    return limit


def test_idle_partial_and_trickling_connections_are_closed(make_app, live_server,
                                                           many_fds) -> None:
    app = make_app(header_timeout_s=1.0, body_timeout_s=1.0, keep_alive_s=1)
    with live_server(app) as srv:
        stop, codes = threading.Event(), []
        client = threading.Thread(target=serve_while, args=(srv.url, stop, codes))
        client.start()
        idle = [connect(srv.port) for _ in range(2_000)]
        partial = [connect(srv.port, PREDICT + b"x-partial: 1\r\n") for _ in range(200)]
        trickle = [connect(srv.port, PREDICT + b"content-length: 1000\r\n\r\n{\"text\": \"")
                   for _ in range(200)]
        started = time.monotonic()
        while time.monotonic() - started < 6:  # one byte each per 0.2 s: far below the rate
            for sock in trickle:
                with contextlib.suppress(OSError):
                    sock.send(b"a")
            open_now = sum(not closed_by_server(s) for s in idle + partial + trickle)
            if open_now == 0:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        stop.set()
        client.join()
        metrics = httpx.get(f"{srv.url}/metrics").text
        for sock in idle + partial + trickle:
            sock.close()
    assert open_now == 0, f"{open_now} slow connections still open after {elapsed:.1f} s"
    assert elapsed >= 0.9  # closed by the timeouts, not at once
    assert codes and set(codes) == {200}, codes
    assert metric(metrics, "surge_connections_closed_total", 'reason="headers_timeout"') >= 2_200
    assert metric(metrics, "surge_connections_closed_total", 'reason="body_timeout"') >= 200
    assert 'status="500"' not in metrics  # the trickled requests' app side saw a disconnect


def test_past_the_cap_other_clients_are_still_served(make_app, live_server, many_fds) -> None:
    app = make_app(max_connections=200)
    with live_server(app) as srv:
        flood: list[socket.socket] = []

        def open_many() -> None:
            for _ in range(1_000):
                with contextlib.suppress(OSError):
                    flood.append(connect(srv.port))

        attacker = threading.Thread(target=open_many)
        attacker.start()
        codes = []
        while attacker.is_alive() or len(codes) < 20:
            # a new connection each time: it must get in past the cap
            codes.append(httpx.post(f"{srv.url}/v1/predict", json={"text": "in"},
                                    timeout=10).status_code)
        attacker.join()
        metrics = httpx.get(f"{srv.url}/metrics", timeout=10).text
        still_open = sum(not closed_by_server(s) for s in flood)
        for sock in flood:
            sock.close()
    assert set(codes) == {200}, codes
    assert metric(metrics, "surge_connections_open") <= 200
    assert metric(metrics, "surge_connections_closed_total", 'reason="evicted"') >= 790
    assert still_open <= 200


def test_idle_connection_is_closed_at_the_default_timeout(make_app, live_server) -> None:
    defaults = Settings()
    app = make_app()
    with live_server(app) as srv:
        quiet, partial = connect(srv.port), connect(srv.port, PREDICT)
        time.sleep(defaults.header_timeout_s - 1)
        assert not closed_by_server(quiet) and not closed_by_server(partial)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not (closed_by_server(quiet)
                                                   and closed_by_server(partial)):
            time.sleep(0.1)
        assert closed_by_server(quiet) and closed_by_server(partial)
        quiet.close()
        partial.close()


def test_defaults_are_the_documented_ones() -> None:
    from online.app import create_app
    from online.server import server_config

    operations = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    documented = {
        "SURGE_HEADER_TIMEOUT_S": "10", "SURGE_BODY_TIMEOUT_S`, `SURGE_BODY_MIN_RATE": "30, 16384",
        "SURGE_KEEP_ALIVE_S": "60", "SURGE_MAX_CONNECTIONS": "4096",
        "SURGE_LARGE_BODY_BYTES`, `SURGE_LARGE_BODY_CONCURRENCY": "1048576, 2",
        "SURGE_EVENTS_ANON_RATE`, `SURGE_EVENTS_ANON_BURST": "100, 10000",
        "SURGE_JOBS_MEMORY_FRACTION": "0.8",
        "SURGE_DEAD_LETTER_KEEP`, `SURGE_DEAD_LETTER_MAX_BYTES`, `SURGE_DEAD_LETTER_TTL_S":
            "1000, 16384, 604800"}
    for names, default in documented.items():
        assert f"| `{names}` | {default} |" in operations, names
    s = Settings()
    assert (s.header_timeout_s, s.body_timeout_s, s.body_min_rate, s.keep_alive_s) == (
        10, 30, 16384, 60)
    assert (s.max_connections, s.large_body_bytes, s.large_body_concurrency) == (
        4096, 1_048_576, 2)
    assert (s.events_anon_rate, s.events_anon_burst, s.jobs_memory_fraction) == (
        100, 10_000, 0.8)
    assert (s.dead_letter_keep, s.dead_letter_max_bytes, s.dead_letter_ttl_s) == (
        1000, 16384, 604800)
    # and the server really runs with them (serve() raises the fd limit first, as here)
    soft = raise_fd_limit()
    config = server_config(create_app(Settings()), s)
    config.load()
    limits = config.http_protocol_class.limits  # type: ignore[attr-defined]
    assert config.timeout_keep_alive == 60
    assert (limits.header_timeout_s, limits.body_timeout_s, limits.body_min_rate) == (
        10, 30, 16384)
    assert limits.max_connections == connection_cap(4096, soft) <= soft - 64


def test_client_gone_mid_body_is_not_a_server_error(make_app, live_server, jobs_redis,
                                                    default_bundle) -> None:
    app = make_app(redis_url=jobs_redis.url)
    paths = ["/v1/predict", "/v1/bulk-predict", f"/v1/models/{default_bundle.name}/predict",
             "/v1/jobs", "/events", f"/v2/models/{default_bundle.name}/infer"]
    with live_server(app) as srv:
        for path in paths:
            sock = connect(srv.port, f"POST {path} HTTP/1.1\r\nHost: t\r\n".encode()
                           + b"content-type: application/json\r\nce-specversion: 1.0\r\n"
                           + b"content-length: 100000\r\n\r\n{\"texts\": [\"half")
            time.sleep(0.1)
            sock.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            metrics = httpx.get(f"{srv.url}/metrics").text
            if metrics.count('status="499"') >= len(paths):
                break
            time.sleep(0.1)
    assert metrics.count('status="499"') >= len(paths), metrics
    assert 'status="500"' not in metrics


def test_draining_answers_with_connection_close(make_app, live_server) -> None:
    app = make_app()
    with live_server(app) as srv, httpx.Client(base_url=srv.url) as client:
        before = client.post("/v1/predict", json={"text": "kept alive"})
        assert before.status_code == 200 and before.headers.get("connection") != "close"
        app.state.runtime.begin_drain()
        during = client.post("/v1/predict", json={"text": "last on this connection"})
        assert during.status_code == 200 and during.headers["connection"] == "close"
        assert client.get("/readyz").status_code == 503


def test_oversized_headers_are_refused(make_app, live_server) -> None:
    app = make_app()
    with live_server(app) as srv:
        sock = connect(srv.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
        try:
            for _ in range(64):  # 4 MiB of one header, without end
                sock.sendall(b"a" * 65_536)
        except OSError:
            pass  # closed by the server: what is wanted
        sock.settimeout(5)
        try:
            answer = sock.recv(4096)
        except OSError:
            answer = b""
        sock.close()
        assert answer.startswith(b"HTTP/1.1 431") or answer == b""
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert metric(metrics, "surge_connections_closed_total",
                      'reason="headers_too_large"') == 1
        assert httpx.get(f"{srv.url}/healthz").status_code == 200

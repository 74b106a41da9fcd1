"""`surgeserve up` (what `make up` runs): the whole stack starts, answers, and Ctrl-C stops
every process it started, even when Ctrl-C is pressed twice; its Prometheus scrapes the API
and the worker with the project's rules, and an alert fires on a real outage."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from common.redis_server import free_port
from online.localprom import prometheus_binary

PROMETHEUS_LINE = r"prometheus\s+http://127\.0\.0\.1:(\d+)"


def _lines(process: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return lines, thread


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Up:
    """A running `surgeserve up`: its banner, then what it printed after."""

    def __init__(self, process: subprocess.Popen[str], lines: queue.Queue[str],
                 banner: str) -> None:
        self.process, self.lines, self.banner = process, lines, banner
        self.rest = ""

    def port(self, pattern: str) -> int:
        found = re.search(pattern, self.banner)
        assert found is not None, self.banner
        return int(found.group(1))


@contextmanager
def running_up(tmp_path: Path, port: int, *args: str) -> Iterator[Up]:
    process = subprocess.Popen(
        [sys.executable, "-m", "online.cli", "up", *args], cwd=tmp_path, text=True,
        env=os.environ | {"PORT": str(port), "SURGE_LOG_LEVEL": "WARNING"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, pump = _lines(process)
    seen: list[str] = []
    up = None
    try:
        deadline = time.monotonic() + 180  # the model loads in both the API and the worker
        while not any("Ctrl-C stops everything" in line for line in seen):
            assert time.monotonic() < deadline, "".join(seen[-30:])
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                assert process.poll() is None, "".join(seen[-30:])
        up = Up(process, lines, "".join(seen))
        yield up
    finally:
        if process.poll() is None:  # a failed assertion: `up` still stops what it started
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        pump.join(timeout=10)  # EOF once every process that shared the pipe is gone
        assert process.stdout is not None
        if not pump.is_alive():  # closing under a blocked reader would hang
            process.stdout.close()
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    up.rest = "".join(rest)


def test_up_answers_and_a_double_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    with running_up(tmp_path, port) as up:
        redis_ports = [int(p) for p in re.findall(r"Redis\s+redis://127\.0\.0\.1:(\d+)",
                                                  up.banner)]
        worker_port = up.port(r"metrics http://127\.0\.0\.1:(\d+)")
        assert len(redis_ports) == 2
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"text": "a fine film"})
        assert reply.status_code == 200 and reply.json()["label"] in ("POSITIVE", "NEGATIVE")
        started = [port, worker_port, *redis_ports]
        if prometheus_binary():
            started.append(up.port(PROMETHEUS_LINE))
        assert all(_listening(p) for p in started)

        up.process.send_signal(signal.SIGINT)
        time.sleep(0.5)  # the drain has begun: an impatient second Ctrl-C
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(timeout=60) is not None
    assert "stopped: API, worker, cache Redis, jobs Redis" in up.rest, up.rest
    assert not [p for p in started if _listening(p)]


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert reply["status"] == "success", reply
    return list(reply["data"]["result"])


def _eventually(prometheus: str, expr: str, timeout: float = 90) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while not (found := _query(prometheus, expr)):
        assert time.monotonic() < deadline, f"nothing for {expr}"
        time.sleep(1)
    return found


def test_up_prometheus_records_rules_and_alerts_on_the_cache_going_down(tmp_path: Path) -> None:
    if prometheus_binary() is None:
        pytest.skip("no prometheus binary (make install unpacks Debian's package into .venv)")
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    with running_up(tmp_path, port, "--scrape-interval", "1") as up:
        prometheus = f"http://127.0.0.1:{up.port(PROMETHEUS_LINE)}"
        assert "rules and alerts loaded" in up.banner
        for component in ("predictor", "worker"):  # both scraped, with the cluster's labels
            _eventually(prometheus, f'up{{namespace="local", component="{component}"}} == 1')
        for i in range(40):  # traffic: the request-rate recording rule sees it
            assert httpx.post(f"{api}/v1/predict", json={"text": f"film {i % 8}"}).is_success
            time.sleep(0.05)
        (rate,) = _eventually(prometheus, 'namespace_route_status:surge_requests:rate5m'
                                          '{namespace="local", route="/v1/predict"} > 0')
        assert rate["metric"]["status"] == "200" and float(rate["value"][1]) > 0

        cache_port = int(re.findall(r"cache Redis\s+redis://127\.0\.0\.1:(\d+)", up.banner)[0])
        # The server closes the connection as it goes: that error is expected.
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis(port=cache_port).shutdown(nosave=True)
        for i in range(5):  # new texts miss the LRU and find the cache Redis gone
            reply = httpx.post(f"{api}/v1/predict", json={"text": f"unseen review {i}"})
            assert reply.status_code == 200  # still answered: the cache is only for speed
        (alert,) = _eventually(prometheus, 'ALERTS{alertname="SurgeCacheDown"}')
        # `for: 5m` keeps it pending this soon; promtool's unit tests cover the firing.
        assert alert["metric"]["alertstate"] in ("pending", "firing")
        assert alert["metric"]["namespace"] == "local"
        assert alert["metric"]["severity"] == "warning"
        up.process.send_signal(signal.SIGINT)
        up.process.wait(timeout=60)
    assert "Prometheus" in up.rest

"""`surgeserve up` (what `make up` runs): the whole stack starts, answers, and Ctrl-C stops
every process it started, even when Ctrl-C is pressed twice."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from common.redis_server import free_port


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


def test_up_answers_and_a_double_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "online.cli", "up"], cwd=tmp_path, text=True,
        env=os.environ | {"PORT": str(port), "SURGE_LOG_LEVEL": "WARNING"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, pump = _lines(process)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any("Ctrl-C stops everything" in line for line in seen):
            assert time.monotonic() < deadline, "".join(seen[-30:])
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                assert process.poll() is None, "".join(seen[-30:])
        banner = "".join(seen)
        redis_ports = [int(p) for p in re.findall(r"Redis\s+redis://127\.0\.0\.1:(\d+)", banner)]
        found = re.search(r"metrics http://127\.0\.0\.1:(\d+)", banner)
        assert found is not None, banner
        worker_port = int(found.group(1))
        assert len(redis_ports) == 2
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"text": "a fine film"})
        assert reply.status_code == 200 and reply.json()["label"] in ("POSITIVE", "NEGATIVE")
        started = [port, worker_port, *redis_ports]
        assert all(_listening(p) for p in started)

        process.send_signal(signal.SIGINT)
        time.sleep(0.5)  # the drain has begun: an impatient second Ctrl-C
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) is not None
    finally:
        if process.poll() is None:
            process.kill()
        pump.join(timeout=10)  # EOF once every process that shared the pipe is gone
        assert process.stdout is not None
        process.stdout.close()
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    assert "stopped: API, worker, cache Redis, jobs Redis" in "".join(rest), "".join(rest)
    assert not [p for p in started if _listening(p)]

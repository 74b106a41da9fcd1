"""Knative runtime contract: SIGTERM with 32 requests in flight → readiness 503, all 32 finish,
exit 0. The server is a real `surgeserve serve` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from common.redis_server import free_port


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "server exited during startup"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("server never became ready")


def test_sigterm_drains_in_flight_requests(default_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {"PORT": str(port), "SURGE_MODEL_DIR": str(default_model_dir),
                        "SURGE_CACHE": "off", "SURGE_MAX_BATCH_SIZE": "1",
                        # One worker, one thread, 512-token texts: 32 requests take seconds,
                        # so they are surely in flight when SIGTERM lands.
                        "SURGE_MODEL_WORKERS": "1", "SURGE_TORCH_THREADS": "1",
                        "SURGE_MAX_TOKENS": "512", "SURGE_DRAIN_DELAY_S": "1",
                        "SURGE_SHUTDOWN_GRACE_S": "30", "SURGE_ACCESS_LOG": "false"}
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "online.cli", "serve"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server)
        long_text = "an ambitious, sprawling and sometimes baffling epic " * 80

        def call(i: int) -> int:
            with httpx.Client(timeout=60) as client:
                return client.post(f"{url}/v1/predict",
                                   json={"text": f"{i} {long_text}"}).status_code

        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(call, i) for i in range(32)]
            time.sleep(0.5)
            done_at_signal = sum(f.done() for f in futures)
            server.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            readiness = httpx.get(f"{url}/readyz", timeout=5)
            statuses = [f.result() for f in futures]
        assert done_at_signal < 32, "requests finished before SIGTERM: the test proves nothing"
        assert readiness.status_code == 503 and readiness.json()["status"] == "draining"
        assert statuses == [200] * 32
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
        log.close()

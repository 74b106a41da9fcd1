"""`surgeserve up`: the whole stack on one machine. Ctrl-C (or SIGTERM) stops all it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from common.redis_server import RedisServer, free_port
from common.training import ensure_default_model


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _shut_down(children: tuple[subprocess.Popen[bytes], ...], grace_s: float = 40) -> None:
    """SIGTERM each child and let it drain; a second Ctrl-C (or SIGTERM) kills them at once.
    Either way this returns, so the Redis servers are stopped too (an impatient second
    Ctrl-C used to interrupt this and leave them running)."""
    hurry = False

    def again(*_: object) -> None:
        nonlocal hurry
        hurry = True

    signal.signal(signal.SIGINT, again)
    signal.signal(signal.SIGTERM, again)
    running = [p for p in children if p.poll() is None]
    if running:
        print("stopping: letting in-flight work finish (Ctrl-C again to stop at once)",
              flush=True)
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (not hurry and time.monotonic() < deadline
           and any(p.poll() is None for p in running)):
        time.sleep(0.1)
    for process in running:
        if process.poll() is None:
            process.kill()
            process.wait()


def up(api_port: int | None = None, run_dir: Path = Path(".run")) -> int:
    """Start cache Redis, jobs Redis (AOF) and the API; block until interrupted."""
    model_dir = ensure_default_model()
    port = api_port or int(os.environ.get("PORT", "8080"))
    cache = RedisServer("cache", run_dir / "redis-cache", port=free_port()).start()
    jobs = RedisServer("jobs", run_dir / "redis-jobs", port=free_port()).start()
    worker_metrics = free_port()
    env = os.environ | {
        "SURGE_WORKER_METRICS_PORT": str(worker_metrics),
        "PORT": str(port), "SURGE_CACHE_URL": cache.url, "SURGE_REDIS_URL": jobs.url,
        "SURGE_MODEL_DIR": str(model_dir), "SURGE_LOG_JSON": os.environ.get("SURGE_LOG_JSON",
                                                                           "false")}
    # Own sessions: Ctrl-C reaches only this process, which sends each child one SIGTERM (a
    # second signal would cut the API's graceful drain short).
    api = subprocess.Popen([sys.executable, "-m", "online.cli", "serve"], env=env,
                           start_new_session=True)
    worker = subprocess.Popen([sys.executable, "-m", "online.cli", "worker"], env=env,
                              start_new_session=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        base = f"http://127.0.0.1:{port}"
        if _wait_ready(base, api):
            print(f"""
surgeserve is up
  API          {base}          (POST /v1/predict, /v1/bulk-predict, /v1/jobs, /events)
  worker       Celery, pid {worker.pid}, queue surgeserve.chunks
               metrics http://127.0.0.1:{worker_metrics}/metrics
  docs         {base}/docs
  metrics      {base}/metrics
  readiness    {base}/readyz
  cache Redis  {cache.url}   (allkeys-lru, no persistence)
  jobs Redis   {jobs.url}   (noeviction, AOF in {jobs.data_dir})
  try:  curl -s {base}/v1/predict -H 'content-type: application/json' \\
          -d '{{"text": "a warm, funny and moving film"}}'
Ctrl-C stops everything.
""", flush=True)
        while api.poll() is None and not stopping:
            time.sleep(0.3)
    except KeyboardInterrupt:
        pass
    finally:
        _shut_down((api, worker))
        jobs.stop()
        cache.stop()
        print("stopped: API, worker, cache Redis, jobs Redis", flush=True)
    return 0 if api.returncode in (0, -signal.SIGTERM, None) else int(api.returncode)

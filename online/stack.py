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
from common.settings import Settings
from common.training import ensure_default_model


def wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> bool:
    """True once `url` answers 200; False if the process exits or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
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


def _start_prometheus(run_dir: Path, api_port: int, worker_port: int,
                      interval_s: float | None) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Prometheus if its binary is here (and not turned off): (process, banner line)."""
    from online import localprom

    binary = localprom.prometheus_binary()
    if interval_s is None or binary is None:
        why = "off (--scrape-interval 0)" if interval_s is None else (
            "not found (make install unpacks Debian's prometheus package into .venv)")
        return None, f"  prometheus   {why}"
    port = free_port()
    try:
        process = localprom.start(binary, run_dir / "prometheus", port,
                                  f"127.0.0.1:{api_port}", f"127.0.0.1:{worker_port}",
                                  interval_s)
    except RuntimeError as exc:
        return None, f"  prometheus   failed to start: {exc}"
    rules = "rules and alerts loaded" if localprom.RULES.is_file() else "no rule file here"
    return process, (f"  prometheus   http://127.0.0.1:{port}   (API + worker every "
                     f"{interval_s:g} s; {rules}; /alerts)")


def up(api_port: int | None = None, run_dir: Path = Path(".run"),
       scrape_interval_s: float | None = 15.0) -> int:
    """Start cache Redis, jobs Redis, the API, a worker and (when installed) Prometheus;
    block until interrupted."""
    model_dir = ensure_default_model(home=Settings().model_home)
    port = api_port or int(os.environ.get("PORT", "8080"))
    cache = RedisServer("cache", run_dir / "redis-cache", port=free_port()).start()
    jobs = RedisServer("jobs", run_dir / "redis-jobs", port=free_port()).start()
    worker_metrics = free_port()
    env = os.environ | {
        "SURGE_WORKER_METRICS_PORT": str(worker_metrics),
        "PORT": str(port), "SURGE_CACHE_URL": cache.url, "SURGE_REDIS_URL": jobs.url,
        "SURGE_MODEL_DIR": str(model_dir),
        "SURGE_LOG_JSON": os.environ.get("SURGE_LOG_JSON", "false"),
        # one person's machine: `ssc list` lists the (anonymous) jobs unless told otherwise
        "SURGE_JOBS_LIST_ANONYMOUS": os.environ.get("SURGE_JOBS_LIST_ANONYMOUS", "true")}
    # Own sessions: Ctrl-C reaches only this process, which sends each child one SIGTERM (a
    # second signal would cut the API's graceful drain short).
    api = subprocess.Popen([sys.executable, "-m", "online.cli", "serve"], env=env,
                           start_new_session=True)
    worker = subprocess.Popen([sys.executable, "-m", "online.cli", "worker"], env=env,
                              start_new_session=True)
    prometheus, prometheus_line = _start_prometheus(run_dir, port, worker_metrics,
                                                    scrape_interval_s)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        base = f"http://127.0.0.1:{port}"
        if wait_http(f"{base}/readyz", api):
            print(_banner(base, worker.pid, worker_metrics, cache, jobs, prometheus_line),
                  flush=True)
        while api.poll() is None and not stopping:
            time.sleep(0.3)
    except KeyboardInterrupt:
        pass
    finally:
        _shut_down((api, worker) + ((prometheus,) if prometheus else ()))
        jobs.stop()
        cache.stop()
        print("stopped: API, worker, cache Redis, jobs Redis"
              + (", Prometheus" if prometheus else ""), flush=True)
    return 0 if api.returncode in (0, -signal.SIGTERM, None) else int(api.returncode)


def _banner(base: str, worker_pid: int, worker_metrics: int, cache: RedisServer,
            jobs: RedisServer, prometheus_line: str) -> str:
    return f"""
surgeserve is up
  API          {base}          (POST /v1/predict, /v1/bulk-predict, /v1/jobs, /events)
  worker       Celery, pid {worker_pid}, queue surgeserve.chunks
               metrics http://127.0.0.1:{worker_metrics}/metrics
  docs         {base}/docs
  metrics      {base}/metrics
  readiness    {base}/readyz
  cache Redis  {cache.url}   (allkeys-lru, no persistence)
  jobs Redis   {jobs.url}   (noeviction, AOF in {jobs.data_dir})
{prometheus_line}
  try:  curl -s {base}/v1/predict -H 'content-type: application/json' \\
          -d '{{"text": "a warm, funny and moving film"}}'
Ctrl-C stops everything.
"""

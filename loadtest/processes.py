"""The processes a benchmark measures: a server or worker started as `python -m ...` with its
own settings and log, waited for, stopped; and their memory. One place, so every benchmark
starts, times and stops them the same way."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.redis_server import RedisServer, free_port
from loadtest.client import Connection

SERVE = ("online.cli", "serve")  # `python -m` these: the service
NAIVE = ("loadtest.naive",)  # the naive baseline (loadtest/naive.py)
WORKER = ("online.cli", "worker")  # a Celery worker for jobs


@contextmanager
def redis_server(role: Literal["cache", "jobs"], directory: Path) -> Iterator[RedisServer]:
    """A Redis server for one role ("cache" or "jobs"), its files under `directory`."""
    started = RedisServer(role, directory).start()
    try:
        yield started
    finally:
        started.stop()


def rss_mb(pid: int) -> float:
    """Resident set size of a process (Linux /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def launched(command: Sequence[str], env: Mapping[str, str], log: Path,
             stop_timeout: float = 30) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m <command>` with `env` over this process's environment, stdout and stderr
    appended to `log`; terminated (killed after `stop_timeout` s) on the way out."""
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", *command], env=os.environ | env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(process: subprocess.Popen[bytes], ready: Callable[[], bool], what: str,
               timeout: float = 60, interval: float = 0.1) -> None:
    """Poll `ready()` until it is true; raise if the process exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start; see the bench log")
        time.sleep(interval)


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    cold_start_s: float

    def rss_mb(self) -> float:
        """Resident memory of the server process now."""
        return rss_mb(self.process.pid)


@contextmanager
def server(env: dict[str, str], log: Path, command: tuple[str, ...] = SERVE,
           probe: str = "/v1/predict") -> Iterator[Server]:
    """A `surgeserve serve` process (or `python -m <command>`: NAIVE); cold start timed from
    exec to the first 200 from `probe`."""
    port = free_port()
    full_env = {"PORT": str(port), "SURGE_ACCESS_LOG": "false",
                "SURGE_LOG_LEVEL": "WARNING"} | env
    started = time.perf_counter()
    with launched(command, full_env, log) as process:
        url = f"http://127.0.0.1:{port}"
        cold = asyncio.run(_first_ok(url, process, started, probe))
        yield Server(url, process, cold)


async def _first_ok(url: str, process: subprocess.Popen[bytes], started: float,
                    probe: str) -> float:
    # Async on one kept-alive connection, polled every 10 ms: the cold start is a figure.
    conn = Connection(url)
    while time.perf_counter() - started < 120:
        if process.poll() is not None:
            raise RuntimeError("server exited during startup; see the bench log")
        try:
            reply = await (conn.post_json(probe, {"text": "cold start probe"})
                           if probe == "/v1/predict" else conn.get(probe))
            if reply.status == 200:
                await conn.close()
                return time.perf_counter() - started
        except OSError:
            await conn.close()
        await asyncio.sleep(0.01)
    raise TimeoutError("no 200 within 120 s")

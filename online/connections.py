"""Connection limits uvicorn lacks: read deadlines for headers and bodies, and a cap on open
connections below the file-descriptor limit.

uvicorn closes a kept-alive connection after `timeout_keep_alive`, but only once it has
answered a request on it: a connection that never sends a request, or sends its headers or
body a byte at a time, stays open for ever, and enough of them take the process to its fd
limit (then every other client fails to connect). `GuardedHttpTools` is uvicorn's httptools
protocol with, per connection, one timer for the read under way:

- headers: from the connection's start (first request) or the request's first byte, the
  headers must be complete within `header_timeout_s`;
- body: within `body_timeout_s`, plus one second per `body_min_rate` bytes received (a large
  upload on a slow link finishes; a trickle does not);
- idle: between requests, uvicorn's own keep-alive timer (`timeout_keep_alive`);

and headers bounded in size (MAX_HEADER_BYTES; httptools would buffer them without limit).

On expiry the connection is closed; an application still waiting for the body receives
`http.disconnect` (answered as 499, never a 500). Past `max_connections`, a new connection
displaces an idle one (one that never sent a request first, else one kept alive between
requests) or, when every connection is busy, is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from common.metrics import Metrics

log = logging.getLogger(__name__)
# File descriptors kept back from connections: Redis pools, model files, logs, threads.
FD_RESERVE_MIN = 64
# Connections looked at to find one to displace (the set holds thousands under a flood).
EVICT_SCAN = 256
# A request's headers at most (nginx: 4 x 8 KiB buffers; h11: 16 KiB): beyond, 431 and close.
MAX_HEADER_BYTES = 64 * 1024
TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
             b"connection: close\r\n\r\n")
FRESH_S = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    body_min_rate: int
    max_connections: int
    metrics: Metrics | None = None


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d: %s", soft, exc)
    return soft


def connection_cap(wanted: int, fd_limit: int) -> int:
    """`wanted`, lowered to leave FD_RESERVE_MIN (or an eighth) of the fd limit free."""
    return max(1, min(wanted, fd_limit - max(FD_RESERVE_MIN, fd_limit // 8)))


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpTools]:
    """The protocol class to pass to uvicorn.Config(http=...), bound to these limits."""
    return type("GuardedHttpToolsBound", (GuardedHttpTools,), {"limits": limits})


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body read deadlines and a connection
    cap (see the module docstring)."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._reading: str | None = None  # "headers" or "body" while a deadline runs
        self._body_deadline = 0.0
        self._served = 0  # requests answered on this connection
        self._since = time.monotonic()  # opened, or last answered: the oldest idle goes first
        self._header_bytes = 0  # of the request being read (httptools buffers them unbounded)

    # -- connection ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._count_open()
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            self._close("refused")
            return
        self._start("headers", self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        super().connection_lost(exc)
        self._count_open()

    def data_received(self, data: bytes) -> None:
        counted = self._reading == "headers"
        super().data_received(data)  # the parser's callbacks below run in here
        if counted and self._reading == "headers":  # all of it was headers, still unfinished
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self.transport.write(TOO_LARGE)
                self._close("headers_too_large")
                return
        if (self._reading is None and self._idle() and self.timeout_keep_alive_task is None
                and not self.transport.is_closing()):
            # bytes between requests that started none (stray CRLFs): uvicorn dropped its
            # keep-alive timer on them, so a headers deadline takes over
            self._start("headers", self.limits.header_timeout_s)

    # -- parser callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._reading != "headers":  # the first request keeps its connection's deadline
            self._start("headers", self.limits.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._stop()
        super().on_headers_complete()
        self._body_deadline = time.monotonic() + self.limits.body_timeout_s
        self._start("body", self.limits.body_timeout_s)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._body_deadline += len(body) / self.limits.body_min_rate

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._reading == "body":
            self._stop()

    def on_response_complete(self) -> None:
        self._served += 1
        self._since = time.monotonic()
        super().on_response_complete()

    def timeout_keep_alive_handler(self) -> None:
        self._close("idle")

    # -- deadlines ---------------------------------------------------------------------
    def _start(self, reading: str, after_s: float) -> None:
        self._stop()
        self._reading = reading
        self._timer = self.loop.call_later(after_s, self._expired)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._reading = None, None

    def _expired(self) -> None:
        self._timer = None
        if self._reading == "body":
            if self.flow.read_paused:  # our application is not reading: not the client's fault
                self._body_deadline = time.monotonic() + self.limits.body_timeout_s
            left = self._body_deadline - time.monotonic()
            if left > 0:  # data came in since (or we paused reading): the deadline moved on
                self._timer = self.loop.call_later(left, self._expired)
                return
        self._close(f"{self._reading}_timeout")

    def _close(self, reason: str) -> None:
        self._reading = None
        if self.limits.metrics is not None:
            self.limits.metrics.connections_closed.labels(reason).inc()
        if not self.transport.is_closing():
            self.transport.close()

    # -- the cap ---------------------------------------------------------------------
    def _idle(self) -> bool:
        """No request being read or answered."""
        return self._reading != "body" and (self.cycle is None or self.cycle.response_complete)

    def _make_room(self) -> bool:
        """Close the idle connection that has waited longest, preferring one that never sent
        a request (a client that just connected is never the one); False when none of the
        first EVICT_SCAN looked at is idle."""
        now = time.monotonic()
        victim: GuardedHttpTools | None = None
        best: tuple[bool, bool, float] | None = None
        for scanned, other in enumerate(self.connections):
            if scanned >= EVICT_SCAN:
                break
            if other is self or not isinstance(other, GuardedHttpTools) or not other._idle():
                continue
            # a connection younger than FRESH_S that has sent nothing yet is a client about
            # to send its request: the last choice
            fresh = other._served == 0 and now - other._since < FRESH_S
            key = (fresh, other._served > 0, other._since)
            if best is None or key < best:
                victim, best = other, key
        if victim is None:
            return False
        victim._close("evicted")
        return True

    def _count_open(self) -> None:
        if self.limits.metrics is not None:
            self.limits.metrics.connections_open.set(len(self.connections))

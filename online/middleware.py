"""Pure-ASGI middleware (no BaseHTTPMiddleware overhead): request id, metrics, access log,
body-size limit."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import Overloaded, PayloadTooLarge, SurgeError
from common.logs import request_id
from common.metrics import Metrics

access_log = logging.getLogger("surgeserve.access")
# nginx's status for "client closed the request": counted, never answered, never a 5xx.
CLIENT_GONE = 499
# Probes and scrapes arrive every few seconds from Knative and Prometheus: metrics, no log line.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


class ObservabilityMiddleware:
    """Request id (X-Request-ID in and out), request metrics by route template, access log.
    While draining, every response says `Connection: close`, so kept-alive clients open
    their next request elsewhere instead of on a connection about to close."""

    def __init__(self, app: ASGIApp, metrics: Metrics, *, log_requests: bool,
                 draining: Callable[[], bool] = lambda: False):
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _header(scope, b"x-request-id") or uuid.uuid4().hex
        token = request_id.set(rid)
        status = 500
        started = time.perf_counter()
        gone = False

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(b"x-request-id", rid.encode())]
                if self.draining():
                    extra.append((b"connection", b"close"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        async def watch() -> Message:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, watch, send_with_id)
        finally:
            if gone and status == 500:
                status = CLIENT_GONE  # the client left before an answer: not a server error
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.request_seconds.labels(route, method).observe(elapsed)
            if self.log_requests and route not in _QUIET_ROUTES:
                access_log.info("%s %s %d", method, scope["path"], status, extra={
                    "route": route, "status": status, "ms": round(elapsed * 1000, 2)})
            request_id.reset(token)


class BodyLimitMiddleware:
    """413 for bodies over the limit, by Content-Length up front or by counting the stream.
    Bodies over `big_bytes` (bulk job uploads) cost about three times their size in memory
    while read, parsed and stored: at most `big_slots` such requests run at once, the others
    get 503 overloaded with Retry-After before their body is read."""

    def __init__(self, app: ASGIApp, max_bytes: int, large: dict[str, int] | None = None, *,
                 big_bytes: int | None = None, big_slots: int = 2, retry_after_s: int = 1):
        self.app = app
        self.default_max = max_bytes
        self.large = large or {}  # path prefix -> limit (bulk job uploads)
        self.big_bytes = big_bytes
        self.big_slots = big_slots
        self.retry_after_s = retry_after_s
        self.big_running = 0  # one event loop: a plain counter is enough

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = next((n for prefix, n in self.large.items() if scope["path"].startswith(prefix)),
                     self.default_max)
        declared = _header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await _send_error(send, _too_large(limit, int(declared)))
            return
        if declared is not None or scope["method"] in ("GET", "HEAD"):
            size = int(declared) if declared and declared.isdigit() else 0
            await self._run(scope, receive, send, size)
            return
        # Chunked body: read it here (at most max_bytes) so an oversized one gets a clean 413;
        # FastAPI would turn an error raised mid-read into a generic 400.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_error(send, _too_large(limit))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self._run(scope, replay_body(b"".join(chunks), receive), send, size)

    async def _run(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        if self.big_bytes is None or size <= self.big_bytes:
            await self.app(scope, receive, send)
            return
        if self.big_running >= self.big_slots:
            await _send_error(send, Overloaded(
                f"{self.big_slots} large uploads are being processed; retry shortly",
                {"large_body_bytes": self.big_bytes, "concurrent": self.big_slots},
                retry_after=self.retry_after_s))
            return
        self.big_running += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.big_running -= 1


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive that yields a body already read, then whatever the client sends next (the
    disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _too_large(limit: int, got: int | None = None) -> PayloadTooLarge:
    detail = {"max_bytes": limit} | ({"got": got} if got is not None else {})
    return PayloadTooLarge(f"request body is larger than {limit} bytes", detail)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"  # bounded label set: never the raw path


async def _send_error(send: Send, error: SurgeError) -> None:
    import json

    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""Pure-ASGI middleware (no BaseHTTPMiddleware overhead): request id, metrics, access log,
body-size limit."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import PayloadTooLarge
from common.logs import request_id
from common.metrics import Metrics

access_log = logging.getLogger("surgeserve.access")
# Probes and scrapes arrive every few seconds from Knative and Prometheus: metrics, no log line.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


class ObservabilityMiddleware:
    """Request id (X-Request-ID in and out), request metrics by route template, access log."""

    def __init__(self, app: ASGIApp, metrics: Metrics, *, log_requests: bool):
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _header(scope, b"x-request-id") or uuid.uuid4().hex
        token = request_id.set(rid)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
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
    """413 for bodies over the limit, by Content-Length up front or by counting the stream."""

    def __init__(self, app: ASGIApp, max_bytes: int, large: dict[str, int] | None = None):
        self.app = app
        self.default_max = max_bytes
        self.large = large or {}  # path prefix -> limit (bulk job uploads)

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
            await self.app(scope, receive, send)
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
        await self.app(scope, replay_body(b"".join(chunks), receive), send)


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


async def _send_error(send: Send, error: PayloadTooLarge) -> None:
    import json

    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

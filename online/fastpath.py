"""`POST /v1/predict` without the framework's per-request machinery.

That route is most of the traffic and, answered from the cache, almost no work: measured on
these machines a cache hit spent ~0.44 ms in the app, more than half of it in FastAPI's routing
and dependency resolution (docs/benchmarks.md). This ASGI layer answers the ordinary case of
that one route itself, with the functions the FastAPI route uses (access guard, service,
response, error response), and hands everything else to FastAPI untouched: a content type that
is not JSON, a body that is not JSON or does not match the schema (a client gone mid-body gets
no answer). So every input error still comes from one place with one shape, and the OpenAPI
document still describes the route. `SURGE_FAST_PATH=false` turns it off.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from common.errors import SurgeError
from common.schemas import PredictRequest, media_type
from online.middleware import replay_body
from online.routes import predict_reply, router

PATH = "/v1/predict"


class FastPredict:
    """Serve well-formed `POST /v1/predict` requests directly; pass the rest to `app`."""

    def __init__(self, app: ASGIApp, guard: Callable[[Request], Awaitable[None]],
                 respond_error: Callable[[SurgeError], Response]):
        self.app = app
        self.guard = guard
        self.respond_error = respond_error
        # Metrics and access logs label requests by the route's path template, as FastAPI's
        # routing would have left it in the scope.
        self.route = next(r for r in router.routes if getattr(r, "path", None) == PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST"
                or not _is_json(scope)):
            await self.app(scope, receive, send)
            return
        body, complete = await _read(receive)
        if not complete:
            return  # the client went away mid-body: nobody to answer (counted as 499)
        replay = replay_body(body, receive)
        parsed = _parse(body)
        if parsed is None:
            await self.app(scope, replay, send)  # FastAPI gives the usual answer
            return
        scope["route"] = self.route
        try:
            # The same order as the route's dependencies: access first, then the model.
            await self.guard(Request(scope, replay))
            response = await predict_reply(scope["app"].state.runtime.require_service(), parsed)
        except SurgeError as exc:
            response = self.respond_error(exc)
        await response(scope, replay, send)


def _is_json(scope: Scope) -> bool:
    for key, value in scope["headers"]:
        if key == b"content-type":
            ctype = media_type(value.decode("latin-1"))
            return ctype == "application/json" or ctype.endswith("+json")
    return False


async def _read(receive: Receive) -> tuple[bytes, bool]:
    """The whole body (BodyLimitMiddleware, outside, has bounded it); False if the client
    went away before the end."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _parse(body: bytes) -> PredictRequest | None:
    """The body read as FastAPI reads it (json.loads, then the model in Python mode), or None
    where FastAPI would refuse it: FastAPI then says why."""
    try:
        return PredictRequest.model_validate(json.loads(body))
    except (ValueError, RecursionError):  # ValidationError, JSONDecodeError: ValueErrors
        return None

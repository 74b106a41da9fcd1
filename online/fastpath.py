"""`POST /v1/predict`'s well-formed requests, first in the app's one router.

That route is most of the traffic and, answered from the cache, almost no work: measured on
these machines a cache hit spent ~0.44 ms in the app, more than half of it in FastAPI's
dependency resolution and body handling (docs/benchmarks.md). So a plain Starlette route,
placed first in the app's router (every middleware and exception handler applies as to any
route), takes a JSON-typed POST whose body is a valid `PredictRequest`: it runs the predict
routes' access dependencies (the same list the FastAPI routes are included with) and the
route's own reply. Any other body is routed again as if this route were absent, so the FastAPI
route gives its usual answer (every input error from one place, with one shape), and the
OpenAPI document still describes that route. `SURGE_FAST_PATH=false` leaves it out.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from common.schemas import PredictRequest, is_json
from online.middleware import replay_body
from online.routes import predict_reply

PATH = "/v1/predict"
_DECLINED = "surge.fast_path.declined"  # scope key: this request is FastAPI's route's


class FastPredictRoute(Route):
    """The fast route for `POST /v1/predict`; `checks` are the predict routes' access
    dependencies, run in their order before the model (as FastAPI runs them)."""

    def __init__(self, checks: Sequence[Callable[[Request], Awaitable[None]]]):
        super().__init__(PATH, self._serve, methods=["POST"], include_in_schema=False)
        self.app = self._serve  # a bare ASGI app: no Request/Response wrapping per call
        self.checks = tuple(checks)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """Only JSON-typed POSTs; the rest (405s, 415s) are the FastAPI route's."""
        if (scope["type"] != "http" or scope["method"] != "POST" or _DECLINED in scope
                or not is_json(_content_type(scope))):
            return Match.NONE, {}
        match, child = super().matches(scope)
        # the route's template labels metrics and access logs (FastAPI's routes do the same)
        return match, {**child, "route": self}

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, complete = await _read(receive)
        if not complete:
            return  # the client went away mid-body: nobody to answer (counted as 499)
        replay = replay_body(body, receive)
        parsed = _parse(body)
        if parsed is None:  # FastAPI's route says why, in its words
            scope[_DECLINED] = True
            await scope["router"](scope, replay, send)
            return
        request = Request(scope, replay)
        for check in self.checks:
            await check(request)
        response = await predict_reply(scope["app"].state.runtime.require_service(), parsed)
        await response(scope, replay, send)


def _content_type(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"content-type":
            return str(value.decode("latin-1"))
    return None


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

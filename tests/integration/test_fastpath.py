"""online/fastpath.py: POST /v1/predict answered by the fast route (first in the app's router)
must answer exactly as the FastAPI route does, and must leave every request it does not fully
understand to it."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.routing import Match

from common.auth import hash_key
from common.errors import NotReady, SurgeError, Unauthorized
from online.fastpath import FastPredictRoute
from tests.integration.test_api import metric

KEY = "sk_fastpath_0123456789"
JSON = {"content-type": "application/json"}


# (description, request kwargs): valid and invalid inputs in the forms clients send them.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("valid", {"json": {"text": "A warm, funny and moving film."}}),
    ("valid again (cache hit)", {"json": {"text": "a warm,  funny and moving film."}}),
    ("charset", {"content": b'{"text": "dull"}',
                 "headers": {"content-type": "application/json; charset=utf-8"}}),
    ("+json", {"content": b'{"text": "dull"}',
               "headers": {"content-type": "application/vnd.surge+json"}}),
    # A list of chunks is sent as a chunked body (no Content-Length).
    ("chunked body", {"content": [b'{"text": ', b'"a chunked request"}'], "headers": JSON}),
    ("escaped emoji", {"content": b'{"text": "great \\ud83d\\ude00"}', "headers": JSON}),
    ("empty text", {"json": {"text": "  \n "}}),
    ("too long", {"json": {"text": "x" * 101}}),
    ("extra field", {"json": {"text": "ok", "lang": "en"}}),
    ("text not a string", {"json": {"text": 5}}),
    ("not an object", {"json": ["ok"]}),
    ("null", {"content": b"null", "headers": JSON}),
    ("broken JSON", {"content": b'{"text": "ok"', "headers": JSON}),
    ("empty body", {"content": b"", "headers": JSON}),
    ("not UTF-8", {"content": b'{"text": "\xff\xfe"}', "headers": JSON}),
    ("nested too deep", {"content": b"[" * 100_000 + b"]" * 100_000, "headers": JSON}),
    ("text/plain", {"content": b'{"text": "ok"}', "headers": {"content-type": "text/plain"}}),
    ("no content type", {"content": b'{"text": "ok"}'}),
    ("wrong method", {"method": "GET"}),
]


def _exchange(client: httpx.Client, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    kwargs = dict(kwargs)
    method = kwargs.pop("method", "POST")
    if isinstance(kwargs.get("content"), list):
        kwargs["content"] = iter(kwargs["content"])
    reply = client.request(method, "/v1/predict", **kwargs)
    try:
        body: Any = reply.json()
    except json.JSONDecodeError:
        body = reply.text
    headers = {k: reply.headers.get(k) for k in ("content-type", "retry-after",
                                                  "www-authenticate", "allow")}
    return reply.status_code, body, headers


def _answers(app: Any, live_server: Any, cases: list[tuple[str, dict[str, Any]]],
             **client_kw: Any) -> list[tuple[Any, ...]]:
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30,
                                               **client_kw) as client:
        return [_exchange(client, kwargs) for _, kwargs in cases]


def test_fast_path_answers_exactly_as_the_fastapi_route(make_app, live_server) -> None:
    fast_app, slow_app = make_app(max_text_chars=100), make_app(max_text_chars=100,
                                                                fast_path=False)
    assert isinstance(fast_app.router.routes[0], FastPredictRoute)
    assert not any(isinstance(r, FastPredictRoute) for r in slow_app.router.routes)
    fast = _answers(fast_app, live_server, CASES)
    slow = _answers(slow_app, live_server, CASES)
    for (name, _), got, want in zip(CASES, fast, slow, strict=True):
        assert got == want, name
    statuses = {name: answer[0] for (name, _), answer in zip(CASES, fast, strict=True)}
    assert statuses["valid"] == statuses["chunked body"] == statuses["+json"] == 200
    assert fast[1][1]["cached"] is True
    assert statuses["empty text"] == statuses["broken JSON"] == statuses["nested too deep"] == 422
    assert statuses["text/plain"] == 415 and statuses["wrong method"] == 405


def test_fast_path_applies_keys_and_rate_limits_like_the_route(make_app, live_server) -> None:
    settings = {"api_keys": f"me:{hash_key(KEY)}", "rate_limit_rps": 0.01,
                "rate_limit_burst": 3}
    cases = [("no key", {"json": {"text": "ok"}}),
             ("no key, bad body", {"content": b"{", "headers": JSON}),
             *[("keyed", {"json": {"text": "ok"}, "headers": {"x-api-key": KEY}})] * 4]
    fast = _answers(make_app(**settings), live_server, cases)
    slow = _answers(make_app(fast_path=False, **settings), live_server, cases)
    assert fast[:-1] == slow[:-1]
    # FastAPI reads the body before it runs dependencies: broken JSON is a 422 even keyless.
    assert [answer[0] for answer in fast] == [401, 422, 200, 200, 200, 429]
    # The 429 says how long to wait: the same up to the milliseconds between the two runs.
    (_, limited, headers), (_, limited_slow, headers_slow) = fast[-1], slow[-1]
    assert headers == headers_slow and headers["retry-after"] == "100"
    assert limited["error"]["code"] == limited_slow["error"]["code"] == "rate_limited"
    assert limited["error"]["detail"]["retry_after_s"] == pytest.approx(
        limited_slow["error"]["detail"]["retry_after_s"], abs=5)


def test_fast_path_requests_are_counted_under_the_route(make_app, live_server) -> None:
    with live_server(make_app()) as srv, httpx.Client(base_url=srv.url) as client:
        for _ in range(3):
            assert client.post("/v1/predict", json={"text": "counted"}).status_code == 200
        assert client.post("/v1/predict", json={"text": ""}).status_code == 422
        assert metric(client, "surge_requests_total", route="/v1/predict", status="200") == 3
        assert metric(client, "surge_requests_total", route="/v1/predict", status="422") == 1
        assert metric(client, "surge_cache_lookups_total", tier="lru", result="hit") == 2


class _Recorder:
    """An inner app that records what reaches it (the FastAPI app's place)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message["body"], message["more_body"]
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _call(route: FastPredictRoute, inner: _Recorder, body: bytes,
                ctype: bytes = b"application/json", path: str = "/v1/predict") -> int:
    """The route as the app's router runs it: `inner` is the rest of the router (FastAPI's
    routes), reached when the route does not match or declines the body."""
    runtime = SimpleNamespace(require_service=_not_ready)
    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-type", ctype)],
             "app": SimpleNamespace(state=SimpleNamespace(runtime=runtime,
                                                          security=None)), "client": None,
             "router": inner}
    chunks = [{"type": "http.request", "body": body[:3], "more_body": True},
              {"type": "http.request", "body": body[3:], "more_body": False}]
    sent: list[Any] = []

    async def receive() -> Any:
        return chunks.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    match, child = route.matches(scope)
    if match == Match.FULL:
        try:
            await route.handle(scope | child, receive, send)
        except SurgeError as exc:  # the app's exception handler answers it
            return exc.status
    else:
        await inner(scope, receive, send)
    return int(sent[0]["status"])


def _not_ready() -> Any:
    raise NotReady("loading")


async def _open(request: Any) -> None:
    return None


async def _deny(request: Any) -> None:
    raise Unauthorized("no key")


@pytest.mark.parametrize(("body", "ctype", "path"), [
    (b'{"text": 1}', b"application/json", "/v1/predict"),
    (b'{"text": "ok"', b"application/json", "/v1/predict"),
    (b'{"text": "ok"}', b"text/plain", "/v1/predict"),
    (b'{"text": "ok"}', b"application/json", "/v1/bulk-predict"),
])
async def test_what_the_fast_path_does_not_serve_reaches_fastapi_whole(
        body: bytes, ctype: bytes, path: str) -> None:
    inner = _Recorder()
    assert await _call(FastPredictRoute([_open]), inner, body, ctype, path) == 299
    assert inner.bodies == [body]  # the body read by the fast path is replayed intact


async def test_a_well_formed_request_never_reaches_fastapi() -> None:
    inner = _Recorder()
    status = await _call(FastPredictRoute([_open]), inner, b'{"text": "ok"}')
    assert status == 503 and inner.bodies == []  # answered by the service's own error
    # The guard runs before the model (401/429 before 503), as the route's dependencies do.
    assert await _call(FastPredictRoute([_open, _deny]), inner, b'{"text": "ok"}') == 401
    assert inner.bodies == []


def test_a_dependency_added_to_the_route_is_not_silently_skipped() -> None:
    """The fast route runs the guards the predict routes are included with (one list in
    online/app.py) and stands in for the route's own dependencies: the JSON check (it only
    matches JSON) and the runtime (it reads the app's). A dependency added to the route
    fails this test until the fast route does its work too."""
    from fastapi.routing import APIRoute

    from online.routes import require_json, router, runtime

    route = next(r for r in router.routes if isinstance(r, APIRoute) and r.path == "/v1/predict")
    assert [d.call for d in route.dependant.dependencies] == [require_json, runtime]

"""Schema fuzzing of every documented operation (schemathesis, against the app served in this
process): no 5xx, every response matches its documented schema and content type, and every
status the API returns is one the OpenAPI document lists."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from common.auth import hash_key
from common.metrics import Metrics
from common.redis_server import RedisServer
from common.settings import Settings
from online.app import create_app
from tests.conftest import LiveServer

KEY = "sk_fuzz_key_123456"
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance]


@pytest.fixture(scope="module")
def served(default_bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = Path(tmp_path_factory.mktemp("fuzz"))
    jobs = RedisServer("jobs", base / "jobs").start()
    cache = RedisServer("cache", base / "cache").start()
    app = create_app(Settings(access_log=False, redis_url=jobs.url, cache_url=cache.url,
                              api_keys=f"fuzz:{hash_key(KEY)}", bulk_max_items=16,
                              job_max_items=64),
                     bundle=default_bundle, metrics=Metrics())
    try:
        with LiveServer(app) as srv:
            yield srv.url
    finally:
        jobs.stop()
        cache.stop()


def operations(served: str) -> list[Any]:
    """Every documented operation of the served app."""
    loaded = schemathesis.openapi.from_url(f"{served}/openapi.json")
    return [result.ok() for result in loaded.get_all_operations()]


def test_every_operation(served: str) -> None:
    """Hypothesis-generated cases for each operation (schemathesis strategies), each call
    validated by the checks above. One test over all operations: schemathesis's pytest
    plugin does not run on this pytest version."""
    ops = operations(served)
    assert len(ops) >= 15  # v1, jobs, events, v2, health: the whole API is covered
    headers = {"Authorization": f"Bearer {KEY}"}
    for operation in ops:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            case.call_and_validate(base_url=served, headers=headers, checks=CHECKS)

        run()


def test_fuzzing_also_runs_without_a_key(served: str) -> None:
    """The 401 answers are documented too (the guard's responses are in the schema)."""
    loaded = schemathesis.openapi.from_url(f"{served}/openapi.json")
    operation = loaded["/v1/predict"]["POST"]
    case = operation.Case(body={"text": "no key"}, media_type="application/json")
    response = case.call(base_url=served)
    assert response.status_code == 401
    case.validate_response(response, checks=CHECKS)


# What schemathesis does not send: lone UTF-16 surrogates (valid JSON escapes, not Unicode
# text) inside otherwise ordinary texts, and JSON nested past the parser's recursion limit.
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
HOSTILE_TEXT = st.lists(st.one_of(st.text(max_size=8), SURROGATE), min_size=1,
                        max_size=6).map("".join)
EVENT = {"ce-specversion": "1.0", "ce-type": "dev.surgeserve.bulk.requested",
         "ce-source": "/fuzz", "content-type": "application/json"}


def text_requests(name: str, text: str, n: int) -> list[tuple[str, bytes, dict[str, str]]]:
    """One request per text route carrying `text` (JSON-escaped, as a client sends it)."""
    one, many = json.dumps({"text": text}).encode(), json.dumps({"texts": [text]}).encode()
    tensor = {"name": "t", "shape": [1], "datatype": "BYTES", "data": [text]}
    plain = {"content-type": "application/json"}
    return [("/v1/predict", one, plain), (f"/v1/models/{name}/predict", one, plain),
            ("/v1/bulk-predict", many, plain), (f"/v1/models/{name}/bulk-predict", many, plain),
            ("/v1/jobs", many, plain),
            ("/v1/jobs", json.dumps(text).encode(), {"content-type": "application/x-ndjson"}),
            ("/events", many, EVENT | {"ce-id": f"fuzz-{n}"}),
            (f"/v2/models/{name}/infer", json.dumps({"inputs": [tensor]}).encode(), plain)]


def assert_clean(reply: httpx.Response, path: str) -> None:
    """Never a 5xx; every refusal in its route's documented error shape."""
    assert reply.status_code < 500, (path, reply.status_code, reply.text[:200])
    if reply.status_code < 400:
        return
    body = reply.json()
    if path.startswith("/v2/"):
        assert isinstance(body["error"], str)
    else:
        assert set(body["error"]) == {"code", "message", "detail"}, body


def test_lone_surrogates_and_deep_nesting_on_every_text_route(served: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=served, timeout=60, headers=headers) as client:
        name = client.get("/v1/models").json()["models"][0]["name"]
        calls = iter(range(1_000_000))

        @given(text=HOSTILE_TEXT)
        @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def surrogates(text: str) -> None:
            for path, content, extra in text_requests(name, text, next(calls)):
                reply = client.post(path, content=content, headers=extra)
                assert_clean(reply, path)
                if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
                    assert 400 <= reply.status_code < 500, (path, reply.status_code)

        @given(depth=st.integers(min_value=900, max_value=200_000),
               where=st.sampled_from(["bare", "texts", "text"]))
        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def nesting(depth: int, where: str) -> None:
            nested = b"[" * depth + b'"a"' + b"]" * depth
            wrapped = {"bare": nested, "texts": b'{"texts": ' + nested + b"}",
                       "text": b'{"text": ' + nested + b"}"}[where]
            for path, _, extra in text_requests(name, "x", next(calls)):
                body = (b'{"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", '
                        b'"data": ' + nested + b"}]}") if path.startswith("/v2/") else wrapped
                reply = client.post(path, content=body, headers=extra)
                assert_clean(reply, path)
                if extra.get("content-type") != "application/x-ndjson":  # there a line that
                    # is not JSON is a text: refused only when too long
                    assert 400 <= reply.status_code < 500, (path, depth, reply.status_code)

        surrogates()
        nesting()
        assert client.get("/metrics").status_code == 200

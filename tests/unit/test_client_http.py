"""surgeserve_client's clients against a small in-process fake of the jobs API (httpx's
MockTransport): retries and Retry-After, one Idempotency-Key per job across retries, limits
learned from refusals, and a download that resumes from the last page written. The real API
is exercised by tests/integration/test_client.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from surgeserve_client import ApiError, AsyncClient, Client, ClientError, RetryPolicy
from surgeserve_client.outputs import State, state_path
from surgeserve_client.retry import RetryPolicy as Policy

FAST = RetryPolicy(attempts=5, base=0.01, cap=0.02)


class FakeJobsApi:
    """Jobs that finish at once; label = the text reversed. Limits as given."""

    def __init__(self, max_items: int = 1000, max_bytes: int = 1 << 20,
                 advertise: bool = True):
        self.max_items, self.max_bytes, self.advertise = max_items, max_bytes, advertise
        self.jobs: dict[str, list[dict[str, Any]]] = {}
        self.keys: dict[str, str] = {}
        self.log: list[tuple[str, str]] = []
        self.fail: dict[str, list[httpx.Response | Exception]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        route = f"{request.method} {request.url.path}"
        self.log.append((route, str(request.url.query.decode())))
        queued = self.fail.get(route)
        if queued:
            outcome = queued.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        if route == "GET /v1/limits":
            if not self.advertise:
                return _error(404, "not_found")
            return httpx.Response(200, json={"job_max_items": self.max_items,
                                             "job_max_bytes": self.max_bytes})
        if route == "POST /v1/jobs":
            return self._submit(request)
        job_id = request.url.path.split("/")[3]
        if route.endswith("/results"):
            offset = int(request.url.params["offset"])
            limit = int(request.url.params["limit"])
            return httpx.Response(200, json={"results": self.jobs[job_id][offset:offset + limit]})
        return httpx.Response(200, json=self._view(job_id))

    def _submit(self, request: httpx.Request) -> httpx.Response:
        if len(request.content) > self.max_bytes:
            return _error(413, "payload_too_large", {"max_bytes": self.max_bytes})
        lines = [json.loads(x) for x in request.content.decode().splitlines()]
        if len(lines) > self.max_items:
            return _error(422, "too_many_items", {"max_items": self.max_items})
        key = request.headers["idempotency-key"]
        if key in self.keys:
            return httpx.Response(200, json=self._view(self.keys[key]))
        job_id = f"job{len(self.jobs)}"
        self.keys[key] = job_id
        self.jobs[job_id] = [
            {"index": k, "id": x.get("id") if isinstance(x, dict) else None,
             "label": (x["text"] if isinstance(x, dict) else x)[::-1], "score": 1.0,
             "scores": []} for k, x in enumerate(lines)]
        return httpx.Response(202, json=self._view(job_id))

    def _view(self, job_id: str) -> dict[str, Any]:
        total = len(self.jobs[job_id])
        return {"id": job_id, "status": "succeeded", "total": total, "done": total}


def _error(status: int, code: str, detail: Any = None,
           headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": code,
                                                  "detail": detail}}, headers=headers)


def client(api: FakeJobsApi, retry: RetryPolicy = FAST) -> Client:
    return Client("http://fake", transport=httpx.MockTransport(api), retry=retry)


def texts(n: int) -> list[tuple[str, str]]:
    return [(f"id{i}", f"text number {i}") for i in range(n)]


def test_retry_after_is_honoured_and_the_retry_reuses_the_idempotency_key() -> None:
    api = FakeJobsApi()
    api.fail["POST /v1/jobs"] = [_error(503, "jobs_full", headers={"retry-after": "1"}),
                                 httpx.RemoteProtocolError("server died mid-answer")]
    began = time.monotonic()
    with client(api) as c:
        sub = c.submit(texts(3))
    assert time.monotonic() - began >= 1.0  # waited what Retry-After said
    posts = [q for route, q in api.log if route == "POST /v1/jobs"]
    assert len(posts) == 3 and len(api.jobs) == 1 and sub.job_ids == ["job0"]


def test_a_retry_after_the_job_was_made_returns_the_same_job() -> None:
    api = FakeJobsApi()
    real = api._submit

    def made_then_lost(request: httpx.Request) -> httpx.Response:
        real(request)  # the job is made, the answer never arrives
        raise httpx.ReadError("connection reset")

    api._submit = made_then_lost  # type: ignore[method-assign]
    with client(api) as c:
        with contextlib.suppress(httpx.ReadError):
            c.submit(texts(2), key="mine")
        api._submit = real  # type: ignore[method-assign]
        sub = c.submit(texts(2), key="mine")
    assert len(api.jobs) == 1 and sub.job_ids == ["job0"]


def test_errors_that_retrying_cannot_fix_are_raised_at_once() -> None:
    api = FakeJobsApi()
    api.fail["GET /v1/jobs/nope"] = [_error(404, "not_found", {"id": "nope"})]
    with client(api) as c, pytest.raises(ApiError) as caught:
        c.job("nope")
    assert caught.value.status == 404 and caught.value.code == "not_found"
    assert len(api.log) == 1


def test_backoff_is_jittered_and_never_shorter_than_retry_after() -> None:
    policy = Policy(base=1.0, cap=8.0)
    waits = [policy.delay(3) for _ in range(200)]
    assert min(waits) >= 4.0 and max(waits) <= 8.0 and len(set(waits)) > 100
    assert all(5.0 <= policy.delay(0, 5.0) <= 6.0 for _ in range(100))


@pytest.mark.parametrize("advertise", [True, False])
def test_inputs_over_the_limits_are_split_and_merged_in_order(advertise: bool) -> None:
    api = FakeJobsApi(max_items=40, max_bytes=1500, advertise=advertise)
    source = [*texts(130), ("blank", "  "), *texts(5)]
    with client(api) as c:
        sub = c.submit(source)
        rows = list(c.results(sub))
    assert len(sub.parts) > 3 and all(len(j) <= 40 for j in api.jobs.values())
    assert [r.index for r in rows] == list(range(136))
    assert [r.id for r in rows] == [i for i, _ in source]
    assert rows[130].error is not None and rows[130].error.code == "empty_text"
    assert all(r.label == t[::-1] for r, (_, t) in zip(rows, source, strict=True) if r.ok)


def test_an_interrupted_download_resumes_from_the_last_page_written(tmp_path: Path) -> None:
    api = FakeJobsApi(max_items=2500, max_bytes=1 << 22)
    source = texts(5000)
    out = tmp_path / "results.csv"
    with client(api) as c:
        sub = c.submit(source)
        whole = tmp_path / "whole.csv"
        c.download(sub, whole, progress=False)
        # the network goes away for good after three pages
        api.fail["GET /v1/jobs/job1/results"] = [httpx.ConnectError("down")] * 10
        with pytest.raises(httpx.ConnectError):
            c.download(sub, out, progress=False)
    state = State.load(out)
    assert state is not None and state.written == 2500  # job0's pages, checkpointed
    api.fail.clear()
    api.log.clear()
    with client(api) as c:
        assert c.download(sub, out, progress=False) == 5000
    pages = [q for route, q in api.log if route.endswith("/results")]
    assert pages[0] == "offset=0&limit=1000" and all("job0" not in r for r, _ in api.log)
    assert out.read_bytes() == whole.read_bytes()
    assert not state_path(out).exists()


def test_a_half_written_row_is_cut_back_on_resume(tmp_path: Path) -> None:
    api = FakeJobsApi()
    out = tmp_path / "r.ndjson"
    with client(api) as c:
        sub = c.submit(texts(10))
        c.download(sub, out, progress=False)
        expected = out.read_bytes()
        rows = expected.splitlines(keepends=True)
        # a crash after 4 rows were recorded and 1.5 more written
        State(sub, "ndjson", False, written=4, bytes=sum(map(len, rows[:4]))).save(out)
        out.write_bytes(b"".join(rows[:5]) + rows[5][:9])
        c.download(sub, out, progress=False)
    assert out.read_bytes() == expected


def test_the_async_client_shares_the_rules() -> None:
    api = FakeJobsApi(max_items=7)
    api.fail["POST /v1/jobs"] = [_error(429, "rate_limited", headers={"retry-after": "0"})]

    async def run() -> list[Any]:
        async with AsyncClient("http://fake", transport=httpx.MockTransport(api),
                               retry=FAST) as c:
            sub = await c.submit(texts(20))
            await c.wait(sub, progress=False)
            return [r async for r in c.results(sub)]

    rows = asyncio.run(run())
    assert [r.id for r in rows] == [f"id{i}" for i in range(20)] and len(api.jobs) == 3


def test_a_job_of_another_size_under_the_key_is_refused() -> None:
    api = FakeJobsApi()
    with client(api) as c:
        c.submit(texts(3), key="reused")
        with pytest.raises(ClientError, match="holds 3 items, not the 2 sent"):
            c.submit(texts(2), key="reused")  # an older server returns the first job

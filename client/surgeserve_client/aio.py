"""The asyncio client: the same calls as `Client`, awaited (the rules, the splitting and the
merging are shared with it: plan.py, _common.py).

    async with AsyncClient("http://localhost:8080") as client:
        prediction = await client.predict("a warm, funny film")
        sub = await client.submit(["great", "awful"])
        await client.wait(sub)
        async for row in client.results(sub):
            ...
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from surgeserve_client import _common as c
from surgeserve_client.client import OnPart, OnRetry
from surgeserve_client.errors import ApiError, retry_after_seconds
from surgeserve_client.inputs import Item, as_items, read_items
from surgeserve_client.outputs import Output, State, fill, output_format
from surgeserve_client.plan import Merger, PageRequest, PendingPart, Planner, Submission
from surgeserve_client.retry import RetryPolicy
from surgeserve_client.types import Job, JobList, JobResult, Limits, Prediction


class AsyncClient:
    """See `Client`; `predict_many` also sends its requests `concurrency` at a time."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None,
                 timeout: float = 60.0, retry: RetryPolicy | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 on_retry: OnRetry | None = None):
        self.url = c.base_url(url)
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout,
                                       headers=c.headers(api_key), transport=transport)
        self._limits: Limits | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def request(self, method: str, path: str, *, idempotent: bool = True,
                      **kwargs: Any) -> httpx.Response:
        """One API call with retries; ApiError for an answer >= 400 that is not retried."""
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt + 1 >= self.retry.attempts or not self.retry.retries_error(
                        exc, idempotent):
                    raise
                await asyncio.sleep(self._pause(attempt, None, type(exc).__name__))
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            if attempt + 1 >= self.retry.attempts or not self.retry.retries_status(
                    response.status_code):
                raise ApiError.from_response(response)
            reason = f"{response.status_code} {ApiError.from_response(response).code}"
            await asyncio.sleep(self._pause(attempt, retry_after_seconds(response), reason))
            attempt += 1

    def _pause(self, attempt: int, retry_after: float | None, reason: str) -> float:
        delay = self.retry.delay(attempt, retry_after)
        if self.on_retry is not None:
            self.on_retry(attempt + 1, delay, reason)
        return delay

    async def predict(self, text: str, model: str | None = None) -> Prediction:
        """One text's prediction."""
        response = await self.request("POST", c.predict_path(model, bulk=False),
                                      json={"text": text})
        return Prediction.from_json(response.json())

    async def predict_many(self, texts: Iterable[str], model: str | None = None, *,
                           concurrency: int = 4) -> list[Prediction]:
        """Predictions for many texts, in order (requests of the server's bulk size)."""
        gate = asyncio.Semaphore(concurrency)

        async def one(batch: list[str]) -> list[Prediction]:
            async with gate:
                return await self._bulk(batch, model)

        batches = c.bulk_batches(list(texts), await self.limits())
        answers = await asyncio.gather(*(one(b) for b in batches))
        return [p for answer in answers for p in answer]

    async def _bulk(self, batch: list[str], model: str | None) -> list[Prediction]:
        try:
            response = await self.request("POST", c.predict_path(model, bulk=True),
                                          json={"texts": batch})
        except ApiError as exc:
            smaller = c.smaller_bulk(await self.limits(), exc, len(batch))
            if smaller is None:
                raise
            self._limits = smaller
            out: list[Prediction] = []
            for part in c.bulk_batches(batch, smaller):
                out.extend(await self._bulk(part, model))
            return out
        return c.bulk_predictions(response.json())

    async def limits(self) -> Limits:
        """The server's limits (asked once; a stock server's defaults if it does not say)."""
        if self._limits is None:
            try:
                response = await self.request("GET", "/v1/limits")
                self._limits = Limits.from_json(response.json())
            except ApiError as exc:
                if exc.status not in (404, 405):
                    raise
                self._limits = Limits()
        return self._limits

    async def submit(self, items: Iterable[Any], *, model: str | None = None,
                     key: str | None = None, submission: Submission | None = None,
                     on_part: OnPart | None = None) -> Submission:
        """See Client.submit."""
        sub = submission or (Submission(key=key, model=model) if key else
                             Submission(model=model))
        planner = Planner(sub, await self.limits())
        for part in planner.parts(as_items(items)):
            queue = [part]
            while queue:
                piece = queue.pop(0)
                try:
                    job = await self._submit_part(piece, sub.model)
                except ApiError as exc:
                    queue = c.resplit(planner, piece, exc) + queue
                    continue
                planner.accepted(piece, job.id, job.total)
                if on_part is not None:
                    on_part(sub)
        if on_part is not None:
            on_part(sub)
        return sub

    async def submit_file(self, path: str | Path, *, fmt: str | None = None,
                          column: str = "text", id_column: str | None = None,
                          **kwargs: Any) -> Submission:
        """Submit a txt / CSV / JSONL file (see Client.submit_file)."""
        return await self.submit(read_items(path, fmt=fmt, column=column,
                                            id_column=id_column), **kwargs)

    async def _submit_part(self, part: PendingPart, model: str | None) -> Job:
        response = await self.request("POST", "/v1/jobs", **c.submit_request(part, model))
        return Job.from_json(response.json())

    async def job(self, job_id: str) -> Job:
        """A job's status and progress."""
        return Job.from_json((await self.request("GET", f"/v1/jobs/{job_id}")).json())

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job."""
        return Job.from_json((await self.request("DELETE", f"/v1/jobs/{job_id}")).json())

    async def jobs(self, limit: int = 20, offset: int = 0) -> JobList:
        """The caller's jobs, newest first."""
        response = await self.request("GET", "/v1/jobs",
                                      params={"limit": limit, "offset": offset})
        return c.job_list(response.json())

    async def wait(self, target: c.Target, *, progress: bool = True, poll: float = 0.5,
                   timeout: float | None = None) -> list[Job]:
        """Poll until every job of `target` ended (progress bar on stderr); the jobs."""
        ids = c.job_ids(target)
        jobs = {job_id: await self.job(job_id) for job_id in ids}
        deadline = None if timeout is None else time.monotonic() + timeout
        with tqdm(total=sum(j.total for j in jobs.values()), unit="item", file=sys.stderr,
                  disable=not progress, desc=f"{len(ids)} jobs") as bar:
            while True:
                bar.update(sum(j.done for j in jobs.values()) - bar.n)
                if all(j.finished for j in jobs.values()):
                    return [jobs[i] for i in ids]
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"jobs not finished after {timeout} s")
                await asyncio.sleep(poll)
                poll = min(poll * 1.25, 3.0)
                for job_id, job in list(jobs.items()):
                    if not job.finished:
                        jobs[job_id] = await self.job(job_id)

    async def submission_of(self, target: c.Target) -> Submission:
        """A Submission for `target` (job ids are asked for their totals)."""
        if isinstance(target, Submission):
            return target
        return Submission.of_jobs([(j, (await self.job(j)).total) for j in c.job_ids(target)])

    async def results(self, target: c.Target, start: int = 0) -> AsyncIterator[JobResult]:
        """Every input item's result, in input order, page by page (see Client.results)."""
        merger = Merger(await self.submission_of(target), start)
        while True:
            for row in merger.ready():
                yield row
            request = merger.request()
            if request is None:
                return
            for row in merger.take(request, await self._page(request)):
                yield row

    async def _page(self, request: PageRequest) -> list[Any]:
        response = await self.request("GET", f"/v1/jobs/{request.job_id}/results",
                                      params=c.page_params(request))
        return list(response.json()["results"])

    async def download(self, target: c.Target, out: str | Path | None, *,
                       fmt: str | None = None, with_text: bool = False,
                       inputs: Iterable[Item] | None = None, progress: bool = True,
                       state: State | None = None) -> int:
        """See Client.download (resumable into a file)."""
        sub = await self.submission_of(target)
        state = c.resume_state(out, sub, output_format(out, fmt), with_text, state)
        sink = Output(out, state)
        items: Iterator[Item] = iter(inputs if inputs is not None else ())
        for _ in range(state.written if inputs is not None else 0):
            next(items, None)  # those rows are written already
        try:
            with tqdm(total=sub.consumed, initial=state.written, unit="row", file=sys.stderr,
                      disable=not progress or out is None, desc="download") as bar:
                async for row in self.results(sub, state.written):
                    sink.write(fill(row, next(items, None)))
                    sink.checkpoint()
                    bar.update(1)
        finally:
            sink.close()
        sink.finish()
        return state.written

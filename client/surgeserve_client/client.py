"""The synchronous client: predictions, bulk predictions and jobs.

    with Client("http://localhost:8080") as client:
        client.predict("a warm, funny film").label
        sub = client.submit_file("reviews.csv", column="text", id_column="id")
        client.wait(sub)
        for row in client.results(sub):
            print(row.index, row.id, row.label)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable

import httpx
from tqdm import tqdm

from surgeserve_client import _common as c
from surgeserve_client.errors import ApiError, retry_after_seconds
from surgeserve_client.inputs import Item, as_items, read_items
from surgeserve_client.outputs import Output, State, fill, output_format
from surgeserve_client.plan import Merger, PageRequest, PendingPart, Planner, Submission
from surgeserve_client.retry import RetryPolicy
from surgeserve_client.types import Job, JobList, JobResult, Limits, Prediction

OnPart = Callable[[Submission], None]
# Told before each wait between tries: the retry coming (1: the first), the seconds it
# waits, and why ("503 jobs_full", "ConnectError").
OnRetry = Callable[[int, float, str], None]


class Client:
    """A connection pool to one surgeserve API. Every call retries what is safe to retry
    (see RetryPolicy); job submissions carry an Idempotency-Key, so a retried submit never
    makes a second job."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None,
                 timeout: float = 60.0, retry: RetryPolicy | None = None,
                 transport: httpx.BaseTransport | None = None,
                 on_retry: OnRetry | None = None):
        self.url = c.base_url(url)
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self._http = httpx.Client(base_url=self.url, timeout=timeout,
                                  headers=c.headers(api_key), transport=transport)
        self._limits: Limits | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def request(self, method: str, path: str, *, idempotent: bool = True,
                **kwargs: Any) -> httpx.Response:
        """One API call with retries; ApiError for an answer >= 400 that is not retried."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt + 1 >= self.retry.attempts or not self.retry.retries_error(
                        exc, idempotent):
                    raise
                time.sleep(self._pause(attempt, None, type(exc).__name__))
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            if attempt + 1 >= self.retry.attempts or not self.retry.retries_status(
                    response.status_code):
                raise ApiError.from_response(response)
            reason = f"{response.status_code} {ApiError.from_response(response).code}"
            time.sleep(self._pause(attempt, retry_after_seconds(response), reason))
            attempt += 1

    def _pause(self, attempt: int, retry_after: float | None, reason: str) -> float:
        delay = self.retry.delay(attempt, retry_after)
        if self.on_retry is not None:
            self.on_retry(attempt + 1, delay, reason)
        return delay

    # -- predictions -------------------------------------------------------------------

    def predict(self, text: str, model: str | None = None) -> Prediction:
        """One text's prediction."""
        body = self.request("POST", c.predict_path(model, bulk=False),
                            json={"text": text}).json()
        return Prediction.from_json(body)

    def predict_many(self, texts: Iterable[str], model: str | None = None,
                     ) -> list[Prediction]:
        """Predictions for many texts, in order, sent in requests within the server's bulk
        limits (items and body bytes; smaller ones learned from a 413 or 422)."""
        out: list[Prediction] = []
        for batch in c.bulk_batches(list(texts), self.limits()):
            out.extend(self._bulk(batch, model))
        return out

    def _bulk(self, batch: list[str], model: str | None) -> list[Prediction]:
        try:
            response = self.request("POST", c.predict_path(model, bulk=True),
                                    json={"texts": batch})
        except ApiError as exc:
            smaller = c.smaller_bulk(self.limits(), exc, len(batch))
            if smaller is None:
                raise
            self._limits = smaller
            return [p for part in c.bulk_batches(batch, smaller) for p in self._bulk(part, model)]
        return c.bulk_predictions(response.json())

    def limits(self) -> Limits:
        """The server's limits (asked once; a stock server's defaults if it does not say)."""
        if self._limits is None:
            try:
                self._limits = Limits.from_json(self.request("GET", "/v1/limits").json())
            except ApiError as exc:
                if exc.status not in (404, 405):
                    raise
                self._limits = Limits()
        return self._limits

    # -- jobs ----------------------------------------------------------------------------

    def submit(self, items: Iterable[Any], *, model: str | None = None,
               key: str | None = None, submission: Submission | None = None,
               on_part: OnPart | None = None) -> Submission:
        """Submit items (texts, (id, text) pairs, {"id", "text"} dicts or Items) as one job,
        or as several when they pass the server's job limits. Items that cannot be sent
        (blank, too long, not text) are not sent and are listed in `skipped`, at their
        place. `submission` continues one an interrupted run saved; `on_part` is called
        after each job is made (to save progress)."""
        sub = submission or (Submission(key=key, model=model) if key else
                             Submission(model=model))
        planner = Planner(sub, self.limits())
        for part in planner.parts(as_items(items)):
            queue = [part]
            while queue:
                piece = queue.pop(0)
                try:
                    job = self._submit_part(piece, sub.model)
                except ApiError as exc:
                    queue = c.resplit(planner, piece, exc) + queue
                    continue
                planner.accepted(piece, job.id, job.total)
                if on_part is not None:
                    on_part(sub)
        if on_part is not None:
            on_part(sub)
        return sub

    def submit_file(self, path: str | Path, *, fmt: str | None = None,
                    column: str = "text", id_column: str | None = None,
                    **kwargs: Any) -> Submission:
        """Submit a txt / CSV / JSONL file (read as a stream; see inputs.read_items)."""
        return self.submit(read_items(path, fmt=fmt, column=column, id_column=id_column),
                           **kwargs)

    def _submit_part(self, part: PendingPart, model: str | None) -> Job:
        response = self.request("POST", "/v1/jobs", **c.submit_request(part, model))
        return Job.from_json(response.json())

    def job(self, job_id: str) -> Job:
        """A job's status and progress."""
        return Job.from_json(self.request("GET", f"/v1/jobs/{job_id}").json())

    def cancel(self, job_id: str) -> Job:
        """Cancel a job (chunks not yet run are skipped; results written stay readable)."""
        return Job.from_json(self.request("DELETE", f"/v1/jobs/{job_id}").json())

    def jobs(self, limit: int = 20, offset: int = 0) -> JobList:
        """The caller's jobs, newest first."""
        body = self.request("GET", "/v1/jobs", params={"limit": limit, "offset": offset})
        return c.job_list(body.json())

    def wait(self, target: c.Target, *, progress: bool = True, poll: float = 0.5,
             timeout: float | None = None) -> list[Job]:
        """Poll until every job of `target` ended (a progress bar on stderr); the jobs."""
        ids = c.job_ids(target)
        jobs = {job_id: self.job(job_id) for job_id in ids}
        deadline = None if timeout is None else time.monotonic() + timeout
        with tqdm(total=sum(j.total for j in jobs.values()), unit="item", file=sys.stderr,
                  disable=not progress, desc=ids[0][:8] if len(ids) == 1 else
                  f"{len(ids)} jobs") as bar:
            while True:
                bar.update(sum(j.done for j in jobs.values()) - bar.n)
                if all(j.finished for j in jobs.values()):
                    return [jobs[i] for i in ids]
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"jobs not finished after {timeout} s")
                time.sleep(poll)
                poll = min(poll * 1.25, 3.0)
                for job_id, job in list(jobs.items()):
                    if not job.finished:
                        jobs[job_id] = self.job(job_id)

    def submission_of(self, target: c.Target) -> Submission:
        """A Submission for `target` (job ids are asked for their totals)."""
        if isinstance(target, Submission):
            return target
        return Submission.of_jobs((j, self.job(j).total) for j in c.job_ids(target))

    def results(self, target: c.Target, start: int = 0) -> Iterator[JobResult]:
        """Every input item's result, in input order, read page by page (never all in
        memory): skipped items and items their job has no result for come as errors."""
        merger = Merger(self.submission_of(target), start)
        while True:
            yield from merger.ready()
            request = merger.request()
            if request is None:
                return
            yield from merger.take(request, self._page(request))

    def _page(self, request: PageRequest) -> list[Any]:
        body = self.request("GET", f"/v1/jobs/{request.job_id}/results",
                            params=c.page_params(request)).json()
        return list(body["results"])

    def download(self, target: c.Target, out: str | Path | None, *,
                 fmt: str | None = None, with_text: bool = False,
                 inputs: Iterable[Item] | None = None, progress: bool = True,
                 state: State | None = None) -> int:
        """Write every result to `out` (None: stdout) as NDJSON, JSONL or CSV; `inputs` (the
        submitted items again, e.g. read_items(path)) adds lines and texts. A download into
        a file resumes where an interrupted one into that file stopped. The rows written."""
        sub = self.submission_of(target)
        state = c.resume_state(out, sub, output_format(out, fmt), with_text, state)
        sink = Output(out, state)
        items: Iterator[Item] = iter(inputs if inputs is not None else ())
        for _ in range(state.written if inputs is not None else 0):
            next(items, None)  # those rows are written already
        try:
            with tqdm(total=sub.consumed, initial=state.written, unit="row", file=sys.stderr,
                      disable=not progress or out is None, desc="download") as bar:
                for row in self.results(sub, state.written):
                    sink.write(fill(row, next(items, None)))
                    sink.checkpoint()
                    bar.update(1)
        finally:
            sink.close()
        sink.finish()
        return state.written

"""What the sync and async clients share: configuration, request shapes, answer parsing."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from surgeserve_client.errors import ApiError
from surgeserve_client.outputs import State
from surgeserve_client.plan import PageRequest, PendingPart, Planner, Submission
from surgeserve_client.types import Job, JobList, Limits, Prediction

DEFAULT_URL = "http://127.0.0.1:8080"
NDJSON = "application/x-ndjson"
USER_AGENT = "surgeserve-client/0.1.0"
# A submission, a job id, or job ids (in input order).
Target = Union[Submission, str, Sequence[str]]


def base_url(url: str | None) -> str:
    """The API's base URL: given, else $SURGE_URL, else the local stack's."""
    return (url or os.environ.get("SURGE_URL") or DEFAULT_URL).rstrip("/")


def headers(api_key: str | None) -> dict[str, str]:
    """Default headers: the API key (given, else $SURGE_API_KEY) as a Bearer token."""
    key = api_key if api_key is not None else os.environ.get("SURGE_API_KEY")
    out = {"user-agent": USER_AGENT}
    if key:
        out["authorization"] = f"Bearer {key}"
    return out


def job_ids(target: Target) -> list[str]:
    """The job ids a target names."""
    if isinstance(target, Submission):
        return target.job_ids
    if isinstance(target, str):
        return [target]
    return list(target)


def predict_path(model: str | None, bulk: bool) -> str:
    """The prediction route for a model (None: the default model)."""
    verb = "bulk-predict" if bulk else "predict"
    return f"/v1/{verb}" if model is None else f"/v1/models/{model}/{verb}"


def bulk_predictions(body: dict[str, Any]) -> list[Prediction]:
    """The predictions of a bulk answer, in order."""
    return [Prediction.from_json(r, body.get("model"), body.get("version"))
            for r in body["results"]]


def submit_request(part: PendingPart, model: str | None) -> dict[str, Any]:
    """httpx arguments of a part's POST /v1/jobs."""
    return {"content": part.body, "params": {"model": model} if model else None,
            "headers": {"content-type": NDJSON, "idempotency-key": part.key}}


def page_params(request: PageRequest) -> dict[str, int]:
    """Query of one results page."""
    return {"offset": request.offset, "limit": request.limit}


def job_list(body: dict[str, Any]) -> JobList:
    """A `GET /v1/jobs` page."""
    jobs = [Job.from_json(j) for j in body.get("jobs", [])]
    offset, limit = int(body.get("offset", 0)), int(body.get("limit", len(jobs)))
    following = body.get("next_offset")
    return JobList(jobs, offset, limit, int(following) if following is not None else None)


def learn_limits(limits: Limits, error: ApiError, part: PendingPart) -> Limits | None:
    """Job limits a refusal of `part` taught (413 payload_too_large `max_bytes`, 422
    too_many_items `max_items`; without a usable figure, half the part), or None when the
    refusal was for another reason."""
    detail = error.detail if isinstance(error.detail, dict) else {}
    if error.status == 413:
        told = detail.get("max_bytes")
        size = told if isinstance(told, int) and told < part.size else part.size // 2
        return dataclasses.replace(limits, job_max_bytes=max(1, size))
    if error.code == "too_many_items":
        told = detail.get("max_items")
        count = len(part.lines)
        items = told if isinstance(told, int) and told < count else count // 2
        return dataclasses.replace(limits, job_max_items=max(1, items))
    return None


def resume_state(out: str | Path | None, sub: Submission, fmt: str, with_text: bool,
                 given: State | None = None) -> State:
    """The state to download with: the saved one if it is this download's, else fresh."""
    saved = given or (State.load(out) if out is not None else None)
    if (saved is not None and saved.submission.job_ids == sub.job_ids
            and saved.format == fmt and saved.with_text == with_text):
        saved.submission = sub
        return saved
    return State(sub, fmt, with_text, source=saved.source if saved is not None else None)


def resplit(planner: Planner, piece: PendingPart, exc: ApiError) -> list[PendingPart]:
    """A refused part cut to the limits the refusal taught; re-raise when it taught none
    or the part cannot be cut (one item alone over the limit)."""
    learned = learn_limits(planner.limits, exc, piece)
    pieces = planner.split(piece, learned) if learned is not None else [piece]
    if len(pieces) == 1:
        raise exc
    return pieces


def bulk_batches(texts: list[str], limits: Limits) -> list[list[str]]:
    """`texts` cut into bulk requests of at most bulk_max_items texts and max_body_bytes of
    body (the JSON estimated: a text's UTF-8 bytes, escapes and quotes)."""
    budget = max(1, limits.max_body_bytes - 64)
    batches: list[list[str]] = [[]]
    size = 0
    for text in texts:
        cost = len(json.dumps(text)) + 1
        if batches[-1] and (len(batches[-1]) >= limits.bulk_max_items or size + cost > budget):
            batches.append([])
            size = 0
        batches[-1].append(text)
        size += cost
    return [b for b in batches if b]


def smaller_bulk(limits: Limits, exc: ApiError, count: int) -> Limits | None:
    """Bulk limits a refusal of `count` texts taught (422 too_many_items names the most;
    413: half the body), or None when the refusal was for another reason (or the request
    cannot be cut)."""
    detail = exc.detail if isinstance(exc.detail, dict) else {}
    told = detail.get("max_items")
    if exc.code == "too_many_items" and isinstance(told, int) and 0 < told < count:
        return dataclasses.replace(limits, bulk_max_items=told)
    if exc.status == 413 and count > 1:
        return dataclasses.replace(limits, bulk_max_items=max(1, count // 2))
    return None

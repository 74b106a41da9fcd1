"""Jobs HTTP API and the CloudEvents sink. Thin: parse → JobService → encode."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from batch import events
from batch.service import JobService
from common.errors import InvalidInput, NotReady, UnsupportedMediaType
from common.schemas import PRICED_BY_TEXTS, ErrorResponse, media_type

NDJSON = "application/x-ndjson"
log = logging.getLogger(__name__)


async def job_service(request: Request) -> JobService:
    """The app's JobService (dependency)."""
    service: JobService | None = getattr(request.app.state, "jobs", None)
    if service is None:
        raise NotReady("jobs are not configured (set SURGE_REDIS_URL)")
    return service


def principal(request: Request) -> str | None:
    """The API key's name the access guard found (None when jobs are open)."""
    return getattr(request.state, "principal", None)


Jobs = Annotated[JobService, Depends(job_service)]
router = APIRouter(tags=["jobs"])
events_router = APIRouter(tags=["events"])  # the Knative Trigger's side: its own access rule


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


def _view(job: dict[str, Any]) -> dict[str, Any]:
    base = f"/v1/jobs/{job['id']}"
    keep = ("id", "status", "total", "done", "chunks", "model", "version", "created_at",
            "started_at", "finished_at", "error")
    # Items fail with their chunk (inputs are validated before a job exists): when a job
    # fails, the items without a result are its failed items.
    failed = job["total"] - job["done"] if job.get("status") == "failed" else 0
    return {k: job.get(k) for k in keep} | {"failed": failed, "links": {
        "self": base, "results": f"{base}/results"}}


def _job_from_body(content_type: str, body: bytes) -> tuple[list[str], str | None]:
    """The texts, and the model named in a JSON body (None: not named)."""
    if content_type == NDJSON:
        return _ndjson_texts(body), None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise InvalidInput("body is not valid JSON (malformed, or nested too deeply)") from exc
    found = data.get("texts") if isinstance(data, dict) else None
    if not isinstance(found, list) or not all(isinstance(t, str) for t in found):
        raise InvalidInput('body must be {"texts": [string, ...], "model"?: string}')
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidInput('"model" must be a model name (string)')
    return found, model


def _ndjson_texts(body: bytes) -> list[str]:
    texts = []
    # Records end at \n (or \r\n) only: str.splitlines() would also split at U+2028, U+2029,
    # U+0085, \f, \v and \x1c-\x1e, which may stand raw in a JSON string or a text.
    for number, raw in enumerate(body.decode("utf-8").split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError):  # (nested too deeply: refused as too long)
            item = line  # a bare line of text is a text
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise InvalidInput("each NDJSON line is a text, a JSON string or "
                               '{"text": "..."}', {"line": number})
        texts.append(text)
    return texts


async def _charge(request: Request, texts: int) -> None:
    """Spend one rate-limit token per text (the access guard leaves `charge` on routes
    marked PRICED_BY_TEXTS)."""
    charge: Callable[[int], Awaitable[None]] | None = getattr(request.state, "charge", None)
    if charge is not None:
        await charge(max(1, texts))


@router.post("/v1/jobs", status_code=202, responses=_errors(413, 415, 422, 503))
async def submit_job(request: Request, jobs: Jobs,
                     model: Annotated[str | None, Query(description="model name (NDJSON "
                                                        "uploads; JSON may say \"model\")")]
                     = None) -> Response:
    """Submit a bulk job: JSON `{"texts": [...], "model"?: name}` or NDJSON (one text per
    line, `?model=name`). No model named: the default model."""
    ctype = media_type(request.headers.get("content-type"))
    if ctype not in ("application/json", NDJSON):
        raise UnsupportedMediaType(f"send application/json or {NDJSON}", {"content_type": ctype})
    try:
        texts, named = _job_from_body(ctype, await request.body())
    except UnicodeDecodeError as exc:
        raise InvalidInput("body is not UTF-8") from exc
    job, created = await jobs.submit(texts, request.headers.get("idempotency-key"),
                                     model=named or model, owner=principal(request))
    return JSONResponse(_view(job), status_code=202 if created else 200,
                        headers={"Location": f"/v1/jobs/{job['id']}"})


@router.get("/v1/jobs/{job_id}", responses=_errors(404, 503))
async def job_status(request: Request, job_id: str, jobs: Jobs) -> dict[str, Any]:
    """Status (queued, running, succeeded, failed, cancelled) and exact progress."""
    return _view(await jobs.get(job_id, principal(request)))


@router.get("/v1/jobs/{job_id}/results", responses=_errors(404, 503))
async def job_results(request: Request, job_id: str, jobs: Jobs,
                      offset: Annotated[int, Query(ge=0)] = 0,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
    """A page of `{index, label, score, scores}`; `Accept: application/x-ndjson` streams all."""
    if NDJSON in request.headers.get("accept", ""):
        job = await jobs.get(job_id, principal(request))
        lines: Iterator[bytes] = (json.dumps(r).encode() + b"\n"
                                  for r in jobs.store.iter_results(job_id, job["total"]))
        return StreamingResponse(lines, media_type=NDJSON)
    job, page = await jobs.results(job_id, offset, limit, principal(request))
    following = offset + limit
    next_link = (f"/v1/jobs/{job_id}/results?offset={following}&limit={limit}"
                 if following < job["total"] else None)
    return JSONResponse({"job": _view(job), "offset": offset, "limit": limit,
                         "results": page, "next": next_link})


@router.delete("/v1/jobs/{job_id}", responses=_errors(404, 503))
async def cancel_job(request: Request, job_id: str, jobs: Jobs) -> dict[str, Any]:
    """Cancel: chunks not yet run are skipped; results already written stay readable."""
    return _view(await jobs.cancel(job_id, principal(request)))


@events_router.post("/events", status_code=202, openapi_extra=PRICED_BY_TEXTS,
                   responses=_errors(400, 413, 415, 422, 503))
async def cloudevents_sink(request: Request, jobs: Jobs) -> Response:
    """CloudEvents 1.0 sink (binary or structured): `dev.surgeserve.bulk.requested` with
    `{"texts": [...]}` creates a job; redelivery of the same source+id returns the same job.
    Without a key, each text of a new event spends one token of the source address's quota
    (a redelivery of a stored event spends none)."""
    event, binary = events.parse(dict(request.headers), await request.body())
    key = f"{event.get_source()}\x00{event.get_id()}"  # scoped by kind and owner in the store
    texts, model = events.job_of(event)
    owner = principal(request)
    # A redelivery (Knative retries on timeout) stores nothing, so it costs no quota.
    job = await jobs.existing(texts, key, source="cloudevent", model=model, owner=owner)
    if job is None:
        await _charge(request, len(texts))
        job, _ = await jobs.submit(texts, key, source="cloudevent", model=model, owner=owner)
    message = events.reply(job, binary=binary)
    return Response(message.body, status_code=202, headers=message.headers)


@events_router.post("/events/dead-letter", status_code=202,
                    responses=_errors(400, 413, 415, 422, 503))
async def dead_letter_sink(request: Request, jobs: Jobs) -> Response:
    """The Trigger's dead-letter sink: any CloudEvent the Broker gave up delivering is kept
    (Redis list `surge:deadletter`: attributes and data cut to SURGE_DEAD_LETTER_MAX_BYTES,
    the newest SURGE_DEAD_LETTER_KEEP for SURGE_DEAD_LETTER_TTL_S), logged and counted."""
    event, _ = events.decode(dict(request.headers), await request.body())
    record = events.dead_letter_record(event, jobs.settings.dead_letter_max_bytes)
    await jobs.dead_letter(record)
    log.error("dead-lettered CloudEvent", extra={"event": record["attributes"]})
    return Response(status_code=202)

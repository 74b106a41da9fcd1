"""Jobs HTTP API and the CloudEvents sink. Thin: parse → JobService → encode."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from batch import events
from batch.items import ItemIds, check_id, split_items
from batch.service import JobService
from batch.store import OWNER_INDEX_KEEP
from common.errors import InvalidInput, NotReady, UnsupportedMediaType
from common.schemas import PRICED_BY_TEXTS, error_docs, media_type

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


def _view(job: dict[str, Any]) -> dict[str, Any]:
    base = f"/v1/jobs/{job['id']}"
    keep = ("id", "status", "total", "done", "chunks", "model", "version", "created_at",
            "started_at", "finished_at", "error")
    # Items fail with their chunk (inputs are validated before a job exists): when a job
    # fails, the items without a result are its failed items.
    failed = job["total"] - job["done"] if job.get("status") == "failed" else 0
    return {k: job.get(k) for k in keep} | {"failed": failed, "links": {
        "self": base, "results": f"{base}/results"}}


def _job_from_body(content_type: str, body: bytes) -> tuple[list[str], ItemIds | None,
                                                            str | None]:
    """The texts, their ids (None: no item has one) and the model named in a JSON body
    (None: not named)."""
    if content_type == NDJSON:
        return *_ndjson_items(body), None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise InvalidInput("body is not valid JSON (malformed, or nested too deeply)") from exc
    found = data.get("texts") if isinstance(data, dict) else None
    if not isinstance(found, list):
        raise InvalidInput('body must be {"texts": [string or {"id"?, "text"}, ...], '
                           '"model"?: string}')
    texts, ids = split_items(found)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidInput('"model" must be a model name (string)')
    return texts, ids, model


def _ndjson_items(body: bytes) -> tuple[list[str], ItemIds | None]:
    texts: list[str] = []
    ids: ItemIds = []
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
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            texts.append(item["text"])
            ids.append(check_id(item.get("id"), len(texts) - 1))
        elif isinstance(item, str):
            texts.append(item)
            ids.append(None)
        else:
            raise InvalidInput("each NDJSON line is a text, a JSON string or "
                               '{"id"?: ..., "text": "..."}', {"line": number})
    return texts, (ids if any(i is not None for i in ids) else None)


async def _charge(request: Request, texts: int) -> None:
    """Spend one rate-limit token per text (the access guard leaves `charge` on routes
    marked PRICED_BY_TEXTS)."""
    charge: Callable[[int], Awaitable[None]] | None = getattr(request.state, "charge", None)
    if charge is not None:
        await charge(max(1, texts))


@router.post("/v1/jobs", status_code=202, responses=error_docs(413, 415, 422, 503))
async def submit_job(request: Request, jobs: Jobs,
                     model: Annotated[str | None, Query(description="model name (NDJSON "
                                                        "uploads; JSON may say \"model\")")]
                     = None) -> Response:
    """Submit a bulk job: JSON `{"texts": [...], "model"?: name}` or NDJSON (one item per
    line, `?model=name`). An item is a text or `{"id": ..., "text": ...}` (results carry
    the id back). No model named: the default model."""
    ctype = media_type(request.headers.get("content-type"))
    if ctype not in ("application/json", NDJSON):
        raise UnsupportedMediaType(f"send application/json or {NDJSON}", {"content_type": ctype})
    try:
        texts, ids, named = _job_from_body(ctype, await request.body())
    except UnicodeDecodeError as exc:
        raise InvalidInput("body is not UTF-8") from exc
    job, created = await jobs.submit(texts, request.headers.get("idempotency-key"), ids=ids,
                                     model=named or model, owner=principal(request))
    return JSONResponse(_view(job), status_code=202 if created else 200,
                        headers={"Location": f"/v1/jobs/{job['id']}"})


@router.get("/v1/jobs", responses=error_docs(403, 503))
async def list_jobs(request: Request, jobs: Jobs,
                    offset: Annotated[int, Query(ge=0, le=OWNER_INDEX_KEEP)] = 0,
                    limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    """The caller's jobs, newest first, `offset`/`limit` paged (the newest 10,000 within
    the retention time). Without keys: 403 unless SURGE_JOBS_LIST_ANONYMOUS."""
    page, count = await jobs.owned(principal(request), offset, limit)
    following = offset + limit if offset + limit < count else None
    return {"jobs": [_view(job) for job in page], "offset": offset, "limit": limit,
            "next_offset": following,
            "next": f"/v1/jobs?offset={following}&limit={limit}" if following else None}


@router.get("/v1/limits", responses=error_docs(503))
async def limits(jobs: Jobs) -> dict[str, int]:
    """The limits a client splits its input by: texts and bytes per job, characters per
    text, texts and bytes per bulk prediction."""
    s = jobs.settings
    return {"job_max_items": s.job_max_items, "job_max_bytes": s.job_max_bytes,
            "max_text_chars": s.max_text_chars, "bulk_max_items": s.bulk_max_items,
            "max_body_bytes": s.max_body_bytes, "job_chunk_size": s.job_chunk_size}


@router.get("/v1/jobs/{job_id}", responses=error_docs(404, 503))
async def job_status(request: Request, job_id: str, jobs: Jobs) -> dict[str, Any]:
    """Status (queued, running, succeeded, failed, cancelled) and exact progress."""
    return _view(await jobs.get(job_id, principal(request)))


@router.get("/v1/jobs/{job_id}/results", responses=error_docs(404, 503))
async def job_results(request: Request, job_id: str, jobs: Jobs,
                      offset: Annotated[int, Query(ge=0)] = 0,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
    """A page of `{index, id, label, score, scores}` (`id`: the item's, or null);
    `Accept: application/x-ndjson` streams all."""
    if NDJSON in request.headers.get("accept", ""):
        results = await jobs.result_stream(job_id, principal(request))
        lines: Iterator[bytes] = (json.dumps(r).encode() + b"\n" for r in results)
        return StreamingResponse(lines, media_type=NDJSON)
    job, page = await jobs.results(job_id, offset, limit, principal(request))
    following = offset + limit
    next_link = (f"/v1/jobs/{job_id}/results?offset={following}&limit={limit}"
                 if following < job["total"] else None)
    return JSONResponse({"job": _view(job), "offset": offset, "limit": limit,
                         "results": page, "next": next_link})


@router.delete("/v1/jobs/{job_id}", responses=error_docs(404, 503))
async def cancel_job(request: Request, job_id: str, jobs: Jobs) -> dict[str, Any]:
    """Cancel: chunks not yet run are skipped; results already written stay readable."""
    return _view(await jobs.cancel(job_id, principal(request)))


@events_router.post("/events", status_code=202, openapi_extra=PRICED_BY_TEXTS,
                   responses=error_docs(400, 413, 415, 422, 503))
async def cloudevents_sink(request: Request, jobs: Jobs) -> Response:
    """CloudEvents 1.0 sink (binary or structured): `dev.surgeserve.bulk.requested` with
    `{"texts": [...]}` creates a job; redelivery of the same source+id returns the same job.
    Without a key, each text of a new event spends one token of the source address's quota
    (a redelivery of a stored event spends none)."""
    event, binary = events.parse(dict(request.headers), await request.body())
    key = f"{event.get_source()}\x00{event.get_id()}"  # scoped by kind and owner in the store
    texts, ids, model = events.job_of(event)
    owner = principal(request)
    # A redelivery (Knative retries on timeout) stores nothing, so it costs no quota.
    job = await jobs.existing(texts, key, ids=ids, source="cloudevent", model=model,
                              owner=owner)
    if job is None:
        await _charge(request, len(texts))
        job, _ = await jobs.submit(texts, key, ids=ids, source="cloudevent", model=model,
                                   owner=owner)
    message = events.reply(job, binary=binary)
    return Response(message.body, status_code=202, headers=message.headers)


@events_router.post("/events/dead-letter", status_code=202,
                    responses=error_docs(400, 413, 415, 422, 503))
async def dead_letter_sink(request: Request, jobs: Jobs) -> Response:
    """The Trigger's dead-letter sink: any CloudEvent the Broker gave up delivering is kept
    (Redis list `surge:deadletter`: attributes and data cut to SURGE_DEAD_LETTER_MAX_BYTES,
    the newest SURGE_DEAD_LETTER_KEEP for SURGE_DEAD_LETTER_TTL_S), logged and counted."""
    event, _ = events.decode(dict(request.headers), await request.body())
    record = events.dead_letter_record(event, jobs.settings.dead_letter_max_bytes)
    await jobs.dead_letter(record)
    log.error("dead-lettered CloudEvent", extra={"event": record["attributes"]})
    return Response(status_code=202)

"""HTTP routes. Thin: parse → call the transport-free service → encode."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.errors import UnsupportedMediaType
from common.schemas import (
    PRICED_BY_TEXTS,
    BulkPredictRequest,
    BulkPredictResponse,
    ModelList,
    PredictRequest,
    PredictResponse,
    Readiness,
    error_docs,
    is_json,
    media_type,
    ranked_body,
)
from online.runtime import Runtime
from online.security import charge
from online.service import Prediction, PredictionService


async def runtime(request: Request) -> Runtime:
    """The app's runtime (dependency; async so FastAPI does not hop to a thread for it)."""
    rt: Runtime = request.app.state.runtime
    return rt


async def require_json(request: Request) -> None:
    """415 unless the body is declared JSON."""
    ctype = request.headers.get("content-type")
    if not is_json(ctype):
        raise UnsupportedMediaType("send the body as application/json",
                                   {"content_type": media_type(ctype) or None})


def _item(p: Prediction) -> dict[str, Any]:
    return ranked_body(p.scores) | {"cached": p.cached}


RuntimeDep = Annotated[Runtime, Depends(runtime)]
router = APIRouter()  # predictions and models: not mounted in the jobs-only role
ops_router = APIRouter()  # health, readiness, metrics: every role


@router.post("/v1/predict", response_model=PredictResponse, tags=["predict"],
             dependencies=[Depends(require_json)],
             responses=error_docs(413, 415, 422, 503, 504))
async def predict(body: PredictRequest, rt: RuntimeDep) -> Response:
    """Classify one text with the default model: top label, every label's score ranked, and
    whether it was cached."""
    return await predict_reply(rt.require_service(), body)


@router.post("/v1/bulk-predict", response_model=BulkPredictResponse, tags=["predict"],
             dependencies=[Depends(require_json)], openapi_extra=PRICED_BY_TEXTS,
             responses=error_docs(413, 415, 422, 503, 504))
async def bulk_predict(body: BulkPredictRequest, rt: RuntimeDep, request: Request) -> Response:
    """Classify 1..bulk_max_items texts with the default model; order kept, duplicates
    computed once. Costs one rate-limit token per text."""
    return await _bulk(rt.require_service(), body, request)


@router.post("/v1/models/{name}/predict", response_model=PredictResponse, tags=["predict"],
             dependencies=[Depends(require_json)],
             responses=error_docs(404, 413, 415, 422, 503, 504))
async def predict_with(name: str, body: PredictRequest, rt: RuntimeDep) -> Response:
    """Classify one text with the named model (404 unknown_model if not served)."""
    return await predict_reply(rt.require_service(name), body)


@router.post("/v1/models/{name}/bulk-predict", response_model=BulkPredictResponse,
             tags=["predict"], dependencies=[Depends(require_json)],
             openapi_extra=PRICED_BY_TEXTS, responses=error_docs(404, 413, 415, 422, 503, 504))
async def bulk_predict_with(name: str, body: BulkPredictRequest, rt: RuntimeDep,
                            request: Request) -> Response:
    """Classify 1..bulk_max_items texts with the named model (one token per text)."""
    return await _bulk(rt.require_service(name), body, request)


async def predict_reply(service: PredictionService, body: PredictRequest) -> Response:
    """One prediction as the response body (the FastAPI route and its fast route in
    online/fastpath.py share it)."""
    result = await service.predict(body.text)
    return JSONResponse(_item(result) | {"model": service.bundle.name,
                                         "version": service.bundle.version})


async def _bulk(service: PredictionService, body: BulkPredictRequest,
                request: Request) -> Response:
    # One token per text; a list over the bulk limit (refused next) costs a full one.
    await charge(request, min(len(body.texts), service.limits.bulk_max_items))
    results = await service.predict_many(body.texts)
    return JSONResponse({"model": service.bundle.name, "version": service.bundle.version,
                         "results": [_item(r) for r in results]})


@router.get("/v1/models", response_model=ModelList, tags=["models"], responses=error_docs(503))
async def models(rt: RuntimeDep) -> dict[str, Any]:
    """The models served, the default first, with their identity and labels."""
    rt.require_service()
    return {"models": [s.bundle.info() | {"default": name == rt.default}
                       for name, s in rt.services.items()]}


@ops_router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@ops_router.get("/readyz", response_model=Readiness, tags=["health"],
            responses={503: {"model": Readiness}})
async def readyz(rt: RuntimeDep) -> Response:
    """Readiness: 200 once the model is loaded and warmed; 503 before and while draining."""
    if rt.draining:
        status = "draining"
    elif rt.settings.role == "jobs":
        status = "ready"  # no model in this role
    elif rt.service is None:
        status = "failed" if rt.load_error else "loading"
    else:
        status = "ready"
    body: dict[str, Any] = {"status": status, "cache": await rt.cache_state()}
    if status == "failed":
        body["error"] = rt.load_error
    if rt.bundle is not None:
        body |= {"model": rt.bundle.name, "version": rt.bundle.version,
                 "models": {name: s.bundle.version for name, s in rt.services.items()}}
    return JSONResponse(body, status_code=200 if status == "ready" else 503)


@ops_router.get("/metrics", tags=["health"], include_in_schema=False)
async def metrics(rt: RuntimeDep) -> Response:
    """Prometheus text exposition (rendered off the loop: the jobs queue length is read from
    Redis at scrape time)."""
    for name, service in rt.services.items():
        rt.metrics.queue_depth.labels(name).set(service.batcher.depth)
    body = await asyncio.to_thread(generate_latest, rt.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)

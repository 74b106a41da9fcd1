"""create_app(settings): the one place the app, its middleware, handlers and routes are built."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect

from common.bundle import ModelBundle
from common.errors import ProtocolError, SurgeError, error_body
from common.metrics import Metrics
from common.schemas import ErrorResponse
from common.settings import Settings
from online.fastpath import FastPredictRoute
from online.middleware import CLIENT_GONE, BodyLimitMiddleware, ObservabilityMiddleware
from online.routes import ops_router, router
from online.runtime import Runtime
from online.security import Security, guard

log = logging.getLogger(__name__)
# What the access guard may answer on the routes it protects (documented in OpenAPI).
GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "API key missing or unknown"},
    429: {"model": ErrorResponse, "description": "rate limit: retry after Retry-After"}}


def create_app(settings: Settings, *, bundle: ModelBundle | None = None,
               bundles: dict[str, ModelBundle] | None = None,
               bundles_future: Future[dict[str, ModelBundle]] | None = None,
               metrics: Metrics | None = None) -> FastAPI:
    """Build the predictor app. With `bundle` (one model) or `bundles` ({name: model}, the
    default first) the models are used as given (tests, benchmarks); without, the configured
    models load in the background (or are awaited from `bundles_future`) while /readyz
    answers 503."""
    if settings.role == "jobs" and not settings.redis_url:
        raise ValueError("SURGE_ROLE=jobs needs SURGE_REDIS_URL (the jobs Redis)")
    rt = Runtime(settings=settings, metrics=metrics or Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.role != "jobs":
            given = bundles or ({bundle.name: bundle} if bundle is not None else None)
            await rt.start(given, bundles_future)
        if settings.redis_url:
            served = (lambda: list(rt.services)) if settings.role != "jobs" else None
            app.state.jobs = _job_service(settings, rt.metrics, served)
        yield
        await rt.stop()
        await app.state.security.close()

    # Outermost first: the request id, metrics and access log see every answer, the 413s
    # and 503s of the body limit included.
    middleware = [
        Middleware(ObservabilityMiddleware, metrics=rt.metrics,
                   log_requests=settings.access_log, draining=lambda: rt.draining),
        Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                   large={"/v1/jobs": settings.job_max_bytes, "/events": settings.job_max_bytes},
                   big_bytes=settings.large_body_bytes, big_slots=settings.large_body_concurrency,
                   retry_after_s=settings.retry_after_s)]
    app = FastAPI(title="surgeserve", version="0.1.0", lifespan=lifespan,
                  description="Cached, micro-batched text classification.",
                  middleware=middleware)
    app.state.runtime = rt
    app.state.security = Security.from_settings(settings)
    app.include_router(ops_router)  # health, readiness, metrics: always open
    if settings.role != "jobs":
        from online.oip import router as oip_router
        from online.playground import router as playground_router

        checks = [guard("predict")]  # the predict routes' dependencies, the fast route's too
        predict_guard = [Depends(check) for check in checks]
        app.include_router(router, dependencies=predict_guard, responses=GUARDED)
        app.include_router(oip_router, dependencies=predict_guard, responses=GUARDED)
        app.include_router(playground_router)
        if settings.fast_path:  # first: most traffic, and the route matched soonest
            app.router.routes.insert(0, FastPredictRoute(checks))
    if settings.redis_url:
        from batch.api import events_router
        from batch.api import router as jobs_router

        app.include_router(jobs_router, dependencies=[Depends(guard("jobs"))],
                           responses=GUARDED)
        app.include_router(events_router, dependencies=[Depends(guard("events"))],
                           responses=GUARDED)
    _install_error_handlers(app)
    return app


def _job_service(settings: Settings, metrics: Metrics,
                 served: Callable[[], list[str]] | None) -> Any:
    from batch.celery_app import create_celery
    from batch.service import JobService
    from batch.store import JobStore

    store = JobStore.from_url(str(settings.redis_url), ttl_s=settings.job_ttl_s)
    return JobService(store, create_celery(settings), settings, metrics, served)


def _error_response(error: SurgeError) -> JSONResponse:
    """A SurgeError as its response; a 5xx is logged with its cause."""
    if error.status >= 500:
        log.warning("%s: %s", error.code, error.message, exc_info=error.__cause__)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers() or None)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_surge_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SurgeError)
        return _error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail = [_clean(err) for err in exc.errors()]
        json_broken = any(err.get("type") == "json_invalid" for err in exc.errors())
        message = "body is not valid JSON" if json_broken else "request does not match the schema"
        return JSONResponse(error_body("invalid_input", message, detail), status_code=422)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, ClientDisconnect):  # gone while FastAPI read the body
            return await on_client_gone(request, exc.__cause__)
        if exc.status_code == 400:  # FastAPI could not parse the body (e.g. JSON nested
            # deeper than the parser's recursion limit): the client's input, so 422 as usual
            return JSONResponse(error_body("invalid_input", "body could not be parsed as JSON "
                                           "(malformed, or nested too deeply)"), 422)
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                            headers=exc.headers)

    async def on_protocol_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProtocolError)  # /v2 only: the protocol's own error body
        return JSONResponse(exc.body(), status_code=exc.status)

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        # Nobody is left to answer; the status is for the metrics and the access log.
        return Response(status_code=CLIENT_GONE)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body("internal", "internal error"), status_code=500)

    app.add_exception_handler(SurgeError, on_surge_error)
    app.add_exception_handler(ProtocolError, on_protocol_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(Exception, on_unexpected)


def _clean(err: Any) -> dict[str, Any]:
    """A validation error without the offending input (it may be huge or sensitive)."""
    return {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}

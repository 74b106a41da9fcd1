"""`python -m loadtest.naive`: the naive baseline for benchmarks: one request, one forward
pass; no batching, no cache.

This is the server most tutorials write (a sync FastAPI handler calling the model), kept with
the benchmarks so `make bench` can measure what micro-batching and caching buy against it in
the same run. It loads the model in process (the only benchmark part besides loadtest.rawbench
that imports more of `common` than its schemas): it is the same engine, without the service.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI

from common.bundle import ModelBundle
from common.schemas import PredictRequest, ranked_body
from common.settings import Settings


def create_naive_app(bundle: ModelBundle) -> FastAPI:
    """A FastAPI app whose sync handler runs the model per request (in FastAPI's threadpool),
    as many at once as the engine has streams (the service's layout, without batching)."""
    app = FastAPI(title="surgeserve naive baseline")
    streams = threading.BoundedSemaphore(bundle.streams)

    @app.post("/v1/predict")
    def predict(body: PredictRequest) -> dict[str, Any]:
        with streams:
            return ranked_body(bundle.predict([body.text])[0])

    return app


def serve_naive(settings: Settings | None = None) -> int:
    """Load the model, then serve the baseline on $PORT."""
    settings = settings or Settings()
    from common.loader import load_configured

    bundle = load_configured(settings)
    uvicorn.run(create_naive_app(bundle), host=settings.host, port=settings.port,
                log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(serve_naive())

"""The naive baseline for benchmarks: one request, one forward pass; no batching, no cache.

This is the server most tutorials write (a sync FastAPI handler calling the model), kept here
so `make bench` can measure what micro-batching and caching buy against it in the same run.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI

from common.bundle import ModelBundle
from common.schemas import PredictRequest, ranked_body
from common.settings import Settings
from common.training import load_configured_model


def create_naive_app(bundle: ModelBundle) -> FastAPI:
    """A FastAPI app whose sync handler runs the model per request (in FastAPI's threadpool)."""
    app = FastAPI(title="surgeserve naive baseline")

    @app.post("/v1/predict")
    def predict(body: PredictRequest) -> dict[str, Any]:
        return ranked_body(bundle.predict([body.text])[0])

    return app


def serve_naive(settings: Settings | None = None) -> int:
    """Load the model, then serve the baseline on $PORT."""
    settings = settings or Settings()
    bundle = load_configured_model(settings)
    uvicorn.run(create_naive_app(bundle), host=settings.host, port=settings.port,
                log_level="warning", access_log=False)
    return 0

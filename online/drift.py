"""`surgeserve drift`: a small CloudEvents sink for `dev.surgeserve.prediction` events (a
Knative Trigger delivers them from the Broker) that keeps each model version's label mix over
a sliding window and exports it, with its distance from the reference window before it, as
Prometheus metrics (common/drift.py, common/metrics.py DriftMetrics). The alert rule
SurgePredictionDrift (grafana/prometheus/rules) fires on that distance.

One replica: the windows live in memory (knative/components/prediction-events pins it).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, TypeGuard

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from batch.events import decode
from common.drift import LabelWindows
from common.errors import InvalidInput, PayloadTooLarge, SurgeError
from common.metrics import DriftMetrics
from common.payload import EVENT_TYPE

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1_048_576  # a job chunk of 10,000 texts (the largest) with texts in it
MAX_NAME_CHARS = 128  # model, version and label strings: they become metric labels


def create_drift_app(windows: LabelWindows, metrics: DriftMetrics | None = None) -> Starlette:
    """The consumer: POST / takes prediction events; /metrics and /healthz."""
    metrics = metrics or DriftMetrics(windows.rows)

    async def receive(request: Request) -> Response:
        try:
            body = await _body(request)
            event, _ = decode(dict(request.headers), body)
            if event.get_type() != EVENT_TYPE:
                raise InvalidInput(f"this sink accepts only {EVENT_TYPE}",
                                   {"type": event.get_type()})
            counted = count(windows, event.get_data())
        except SurgeError as exc:
            metrics.events.labels("rejected").inc()
            return JSONResponse(exc.body(), status_code=exc.status)
        metrics.events.labels("accepted").inc()
        return JSONResponse({"counted": counted}, status_code=202)

    async def scrape(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/", receive, methods=["POST"]),
                             Route("/metrics", scrape), Route("/healthz", healthz)])


def count(windows: LabelWindows, data: Any) -> int:
    """Count the labelled predictions of one event (records without a label, from
    SURGE_PAYLOAD_MODE=request, carry nothing to count)."""
    records = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise InvalidInput('event data must be {"predictions": [...]}')
    labels: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record in records:
        if not isinstance(record, dict):
            continue
        model, version, label = (record.get(k) for k in ("model", "version", "label"))
        if _name(model) and _name(version) and _name(label):
            labels[(model, version)].append(label)
    for (model, version), found in labels.items():
        windows.add(model, version, found)
    return sum(len(found) for found in labels.values())


def _name(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge("event too large", {"max_bytes": MAX_BODY_BYTES})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge("event too large", {"max_bytes": MAX_BODY_BYTES})
        chunks.append(chunk)
    return b"".join(chunks)


def serve_drift(port: int, host: str = "0.0.0.0", *, window_s: float = 600,
                reference_s: float = 3600, min_count: int = 200) -> int:
    """Run the consumer until a signal."""
    import uvicorn

    from common.logs import setup_logging
    from common.settings import Settings

    setup_logging(Settings())
    windows = LabelWindows(window_s, reference_s, min_count=min_count)
    log.info("drift consumer", extra={"port": port, "window_s": window_s,
                                      "reference_s": reference_s, "min_count": min_count})
    uvicorn.run(create_drift_app(windows), host=host, port=port, log_config=None,
                access_log=False, server_header=False)
    return 0

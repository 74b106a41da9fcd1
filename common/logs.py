"""JSON logs with the request id and the Knative revision on every line."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

from common.settings import Settings

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields are kept."""

    def __init__(self, static: dict[str, str]):
        super().__init__()
        self.static = {k: v for k, v in static.items() if v}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if rid := request_id.get():
            entry["request_id"] = rid
        entry.update(self.static)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(settings: Settings) -> None:
    """Configure the root logger once (called by the server and worker entry points, not at
    import); every JSON line carries the Knative service, revision and configuration."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        handler.setFormatter(JsonFormatter({"k_service": settings.k_service,
                                            "k_revision": settings.k_revision,
                                            "k_configuration": settings.k_configuration}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    logging.getLogger("uvicorn.access").disabled = True  # we log requests ourselves
    logging.getLogger("torch").setLevel(logging.WARNING)  # cache stats at exit, etc.

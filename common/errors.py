"""The error hierarchy. Each error knows its HTTP status and a stable machine-readable code."""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    """The one error shape every response uses. Client input it echoes (a field name, a
    model name) may hold lone surrogates, which no UTF-8 body can carry: they become U+FFFD."""
    return {"error": {"code": code, "message": printable(message), "detail": printable(detail)}}


def printable(value: Any) -> Any:
    """`value` with every string made encodable as UTF-8 (lone surrogates -> U+FFFD)."""
    if isinstance(value, str):
        return value if value.isascii() else _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable(v) for v in value]
    return value


class SurgeError(Exception):
    """Base of every error a client may see; the body is {"error": {code, message, detail}}."""

    status = 500
    code = "internal"

    def __init__(self, message: str, detail: Any = None, *, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """The stable JSON error body."""
        return error_body(self.code, self.message, self.detail)

    def headers(self) -> dict[str, str]:
        """Response headers this error needs (Retry-After, WWW-Authenticate)."""
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}


class Unauthorized(SurgeError):
    """No API key, or one that is not known."""

    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="surgeserve"'}


class RateLimited(SurgeError):
    """This key (or client) spent its request budget; retry after Retry-After seconds."""

    status = 429
    code = "rate_limited"


class InvalidInput(SurgeError):
    status = 422
    code = "invalid_input"


class InvalidText(InvalidInput):
    """A text that is not Unicode text: lone UTF-16 surrogates (sent as JSON escapes)."""

    code = "invalid_text"


class EmptyText(InvalidInput):
    code = "empty_text"


class TextTooLong(InvalidInput):
    code = "text_too_long"


class TooManyItems(InvalidInput):
    code = "too_many_items"


class InvalidItemId(InvalidInput):
    """A job item's id is not a short string or an integer."""

    code = "invalid_id"


class UnknownModelInput(InvalidInput):
    """A job named a model this deployment does not serve: the body is wrong (422), unlike
    UnknownModel, a path naming no model (404); each has its own code."""

    code = "unknown_model_input"


class UnknownEventType(InvalidInput):
    """A CloudEvent of a type the sink does not take."""

    code = "unknown_event_type"


class IdempotencyKeyReused(InvalidInput):
    """The idempotency key was used before for a different body (texts or model)."""

    code = "idempotency_key_reused"


class PayloadTooLarge(SurgeError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(SurgeError):
    status = 415
    code = "unsupported_media_type"


class ListingNeedsKey(SurgeError):
    """A keyless server lists no jobs unless SURGE_JOBS_LIST_ANONYMOUS: there, a job id is
    the only thing that lets a caller read the job, and a list would hand out every id."""

    status = 403
    code = "listing_needs_key"


class NotFound(SurgeError):
    status = 404
    code = "not_found"


class Overloaded(SurgeError):
    """The batch queue is full: shed load, the client retries after Retry-After seconds."""

    status = 503
    code = "overloaded"


class JobsFull(SurgeError):
    """The jobs Redis is near its memory limit: new jobs wait (Retry-After) so the jobs
    already accepted can finish and their results fit."""

    status = 503
    code = "jobs_full"


class NotReady(SurgeError):
    status = 503
    code = "not_ready"


class JobsUnavailable(SurgeError):
    """The jobs Redis does not answer: 503 so a client (or a Knative broker) retries."""

    status = 503
    code = "jobs_unavailable"


class DeadlineExceeded(SurgeError):
    status = 504
    code = "deadline_exceeded"


class ModelError(SurgeError):
    """The model failed on a batch; the cause is logged, never sent to the client."""

    status = 500
    code = "model_error"


class UnknownModel(NotFound):
    """A request named a model this server does not serve."""

    code = "unknown_model"


class ModelNotFound(SurgeError):
    """No usable model directory (startup error, not a request error)."""

    status = 500
    code = "model_not_found"


class ProtocolError(Exception):
    """An Open Inference Protocol (/v2) error: a status and the protocol's own body
    `{"error": message}` (not the SurgeError shape). One handler (online/app.py) answers it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    def body(self) -> dict[str, Any]:
        """The protocol's error body."""
        return {"error": printable(self.message)}


class ModelNotServable(ModelNotFound):
    """No engine here can serve the model: no compiled artifact matches it and the eager
    fallback (torch + transformers, the `build` extra) is not installed, as in the runtime
    image. A startup error like its parent (same code): the server exits saying so (78)."""

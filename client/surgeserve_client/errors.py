"""What the client raises: the API's error body, kept whole."""

from __future__ import annotations

from typing import Any

import httpx


class ClientError(Exception):
    """Base of the client's errors."""


class InputError(ClientError):
    """The input file cannot be read as asked (a missing column, an unknown format)."""


class ApiError(ClientError):
    """The API refused or failed a request: its status and `{"error": {code, message,
    detail}}` body."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None,
                 retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The error a response carries (any body: a proxy's HTML page too)."""
        try:
            body = response.json()
            error = body["error"] if isinstance(body, dict) else None
        except ValueError:
            error = None
        if not isinstance(error, dict):
            text = response.text[:200].strip() or response.reason_phrase
            return cls(response.status_code, "http_error", text)
        return cls(response.status_code, str(error.get("code", "http_error")),
                   str(error.get("message", "")), error.get("detail"),
                   retry_after_seconds(response))


class JobFailed(ClientError):
    """A job ended failed or cancelled while the client waited for it."""

    def __init__(self, job_id: str, status: str, error: str | None):
        super().__init__(f"job {job_id} ended {status}" + (f": {error}" if error else ""))
        self.job_id = job_id
        self.status = status
        self.error = error


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Retry-After in seconds (delta-seconds form; an HTTP date is read too), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())

"""Access for HTTP: which routes need an API key (settings), who is calling, and their rate
limit. Health, readiness, metrics and the playground page stay open."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from fastapi import Request

from common.auth import KeyRing
from common.settings import Settings
from online.ratelimit import RateLimiter

Kind = Literal["predict", "jobs", "events"]


@dataclass
class Security:
    keys: KeyRing
    limiter: RateLimiter
    keyed: set[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> Security:
        """Keys and limits as configured."""
        keys = KeyRing(settings.api_keys)
        keyed = set()
        if keys.enabled:
            keyed.add("jobs")
            if settings.predict_auth == "keyed":
                keyed.add("predict")
            if settings.events_auth == "keyed":
                keyed.add("events")
        limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst,
                              settings.cache_url if settings.cache_enabled else None)
        return cls(keys, limiter, keyed)


def guard(kind: Kind) -> Callable[[Request], Awaitable[None]]:
    """A dependency for a group of routes: the caller's key when this kind is keyed (401
    otherwise), then one token from their bucket (429 when spent). The key's name is left
    in request.state.principal (None when open) for ownership checks."""

    async def check(request: Request) -> None:
        security: Security = request.app.state.security
        principal = None
        if kind in security.keyed:
            principal = security.keys.principal(request.headers)
        elif kind == "events" and security.keys.enabled and _sends_key(request):
            # Open events still scope a keyed sender's idempotency (source, id) to its key,
            # so an anonymous event cannot claim it first; a key that is sent must be real.
            principal = security.keys.principal(request.headers)
        request.state.principal = principal
        if security.limiter.enabled:
            client = request.client.host if request.client else "unknown"
            await security.limiter.take(f"key:{principal}" if principal else f"ip:{client}")

    return check


def _sends_key(request: Request) -> bool:
    auth = request.headers.get("authorization", "")
    return "x-api-key" in request.headers or auth[:7].lower() == "bearer "

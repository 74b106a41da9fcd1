"""Access for HTTP: which routes need an API key (settings), who is calling, and their rate
limit. Health, readiness, metrics and the playground page stay open."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request

from common.auth import KeyRing
from common.schemas import PRICED_BY_TEXTS
from common.settings import Settings
from online.ratelimit import RateLimiter

Kind = Literal["predict", "jobs", "events"]
# A Knative Trigger sends no headers of its own: with SURGE_EVENTS_AUTH=keyed the sink also
# takes the key from its subscriber URI (`/events?api_key=...`).
EVENTS_KEY_PARAM = "api_key"


@dataclass
class Security:
    keys: KeyRing
    limiter: RateLimiter
    keyed: set[str]
    anon_events: RateLimiter  # anonymous CloudEvents per source address, in texts

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
        shared = settings.cache_url if settings.cache_enabled else None
        limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst, shared,
                              unit="texts")
        anon = RateLimiter(settings.events_anon_rate, settings.events_anon_burst, shared,
                           unit="texts of anonymous events", name="anon")
        return cls(keys, limiter, keyed, anon)

    async def close(self) -> None:
        """Close the buckets' Redis connections."""
        await self.limiter.close()
        await self.anon_events.close()


def guard(kind: Kind) -> Callable[[Request], Awaitable[None]]:
    """A dependency for a group of routes: the caller's key when this kind is keyed (401
    otherwise), then their rate limit (429 when spent). A request costs one token, or one per
    text on routes marked PRICED_BY_TEXTS: those call `request.state.charge(texts)` once
    they have parsed the body. The key's name is left in request.state.principal (None when
    open) for ownership checks."""

    async def check(request: Request) -> None:
        security: Security = request.app.state.security
        principal = None
        if kind in security.keyed:
            fallback = request.query_params.get(EVENTS_KEY_PARAM) if kind == "events" else None
            principal = security.keys.principal(request.headers, fallback)
        elif kind == "events" and security.keys.enabled and _sends_key(request):
            # Open events still scope a keyed sender's idempotency (source, id) to its key,
            # so an anonymous event cannot claim it first; a key that is sent must be real.
            principal = security.keys.principal(
                request.headers, request.query_params.get(EVENTS_KEY_PARAM))
        request.state.principal = principal
        client = request.client.host if request.client else "unknown"
        who = f"key:{principal}" if principal else f"ip:{client}"
        anonymous = kind == "events" and principal is None

        async def charge(cost: int) -> None:
            await security.limiter.take(who, cost)
            if anonymous:
                await security.anon_events.take(f"ip:{client}", cost)

        request.state.charge = charge
        if not _priced_by_texts(request.scope.get("route")):
            await charge(1)

    return check


def _priced_by_texts(route: Any) -> bool:
    extra = getattr(route, "openapi_extra", None) or {}
    return all(extra.get(k) == v for k, v in PRICED_BY_TEXTS.items())


async def charge(request: Request, texts: int) -> None:
    """Spend one token per text of the caller's buckets (routes marked PRICED_BY_TEXTS)."""
    spend: Callable[[int], Awaitable[None]] | None = getattr(request.state, "charge", None)
    if spend is not None:
        await spend(max(1, texts))


def _sends_key(request: Request) -> bool:
    auth = request.headers.get("authorization", "")
    # an empty header is no key (as KeyRing.principal reads it)
    return bool((request.headers.get("x-api-key") or "").strip()
                or auth[:7].lower() == "bearer " or request.query_params.get(EVENTS_KEY_PARAM))

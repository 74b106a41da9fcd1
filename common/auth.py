"""API keys: only their SHA-256 is configured; a presented key is hashed and compared in
constant time against every configured hash. Transport-free (HTTP reads the headers)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

from common.errors import Unauthorized
from common.settings import parse_api_keys


def hash_key(key: str) -> str:
    """What SURGE_API_KEYS stores for a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key (256 bits)."""
    return "sk_" + secrets.token_urlsafe(32)


class KeyRing:
    """The configured keys, by name."""

    def __init__(self, hashes: Mapping[str, str] | str | None):
        """`hashes`: {name: SHA-256 hex} as Settings.api_keys holds them (or their spec)."""
        self._hashes = dict(parse_api_keys(hashes) if isinstance(hashes, str) else hashes or {})

    @property
    def enabled(self) -> bool:
        """Whether any key is configured."""
        return bool(self._hashes)

    def identify(self, key: str) -> str | None:
        """The name of the key, or None. Every hash is compared (constant time each)."""
        digest = hash_key(key)
        found = None
        for name, expected in self._hashes.items():
            if hmac.compare_digest(digest, expected):
                found = name
        return found

    def principal(self, headers: Mapping[str, str], fallback: str | None = None) -> str:
        """The key's name from `Authorization: Bearer <key>` or `X-API-Key: <key>` (or
        `fallback`, a key sent otherwise); Unauthorized (401) when absent or unknown. An empty
        header counts as absent: it never hides a key sent the other way."""
        key = (headers.get("x-api-key") or "").strip()
        auth = headers.get("authorization", "")
        if not key and auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
        key = key or (fallback or "").strip()
        if not key:
            raise Unauthorized("an API key is required: Authorization: Bearer <key> or "
                               "X-API-Key: <key>")
        name = self.identify(key)
        if name is None:
            raise Unauthorized("unknown API key")
        return name

"""Text normalisation and cache keys: equal meaning for the model means equal key."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")


def normalise(text: str, *, lowercase: bool) -> str:
    """NFC, trimmed, runs of whitespace collapsed to one space; lower-cased for uncased models."""
    text = unicodedata.normalize("NFC", text)
    text = _WHITESPACE.sub(" ", text).strip()
    return text.lower() if lowercase else text


def cache_key(model: str, version: str, normalised_text: str) -> str:
    """A Redis key naming the model, its version and the text's hash (never the raw text)."""
    digest = hashlib.blake2b(normalised_text.encode("utf-8"), digest_size=16).hexdigest()
    return f"surge:pred:{model}:{version}:{digest}"

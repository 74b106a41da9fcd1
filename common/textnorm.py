"""Text checks, normalisation and cache keys: equal meaning for the model means equal key."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

from common.errors import EmptyText, InvalidInput, InvalidText, TextTooLong, TooManyItems

_WHITESPACE = re.compile(r"\s+")
# Lone UTF-16 surrogates: JSON can carry them as \uXXXX escapes, but they are not Unicode
# text (no UTF-8 encoding exists), so no key, Redis write or tokenizer can take them.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text: str, *, max_chars: int, index: int | None = None) -> None:
    """The one check every text passes before it is keyed, stored or queued (online
    predictions, OIP, jobs, CloudEvents): not too long, Unicode text, not blank. Raises the
    422 error naming the problem (and the text's `index` in a list)."""
    where: dict[str, Any] = {} if index is None else {"index": index}
    if len(text) > max_chars:
        raise TextTooLong(f"text is longer than {max_chars} characters",
                          where | {"max_chars": max_chars, "got": len(text)})
    if not text.isascii() and (bad := _SURROGATE.search(text)) is not None:
        raise InvalidText("text holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                          "escape), which is not Unicode text",
                          where | {"position": bad.start()})
    if not text or text.isspace():
        raise EmptyText("text is empty or only whitespace", where or None)


def check_texts(texts: list[str], *, max_chars: int, max_items: int | None = None,
                unit: str = "request", indexed: bool = True) -> None:
    """The one input validation of a list of texts (online predictions, OIP, jobs,
    CloudEvents): 1..`max_items` texts (None: any number; a job needs at least one), each
    passing `check_text` (errors name the text's index when `indexed`)."""
    if max_items is not None:
        if not texts:
            raise InvalidInput(f"a {unit} needs at least one text")
        if len(texts) > max_items:
            raise TooManyItems(f"at most {max_items} texts per {unit}",
                               {"max_items": max_items, "got": len(texts)})
    for index, text in enumerate(texts):
        check_text(text, max_chars=max_chars, index=index if indexed else None)


def is_text(value: str) -> bool:
    """Whether `value` is encodable Unicode text (no lone surrogates)."""
    return value.isascii() or _SURROGATE.search(value) is None


def normalise(text: str, *, lowercase: bool) -> str:
    """NFC, trimmed, runs of whitespace collapsed to one space; lower-cased for uncased models."""
    text = unicodedata.normalize("NFC", text)
    text = _WHITESPACE.sub(" ", text).strip()
    return text.lower() if lowercase else text


def cache_key(model: str, version: str, normalised_text: str) -> str:
    """A Redis key naming the model, its version and the text's hash (never the raw text)."""
    digest = hashlib.blake2b(normalised_text.encode("utf-8"), digest_size=16).hexdigest()
    return f"surge:pred:{model}:{version}:{digest}"

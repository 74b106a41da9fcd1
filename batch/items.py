"""Job items as clients send them: a text, or `{"id": ..., "text": ...}` with the caller's
id, which every result carries back (so results join to the input by id, not by guessing).

An id is a string of at most MAX_ID_CHARS characters or an integer (not a boolean) that
fits in 64 bits; it is stored as given and never becomes a key, a label or a log field.
"""

from __future__ import annotations

import json
from typing import Any

from common.errors import InvalidInput, InvalidItemId
from common.textnorm import is_text

MAX_ID_CHARS = 256
ItemIds = list[str | int | None]


def split_items(values: list[Any], where: str = "texts") -> tuple[list[str], ItemIds | None]:
    """The texts and the ids (None when no item has one) of a JSON list whose elements are
    strings or `{"id"?, "text"}` objects. InvalidInput names the first bad element."""
    texts: list[str] = []
    ids: ItemIds = []
    for index, value in enumerate(values):
        text, item_id = _item(value, index, where)
        texts.append(text)
        ids.append(item_id)
    return texts, (ids if any(i is not None for i in ids) else None)


def _item(value: Any, index: int, where: str) -> tuple[str, str | int | None]:
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"], check_id(value.get("id"), index)
    raise InvalidInput(f'each of "{where}" is a string or {{"id"?: ..., "text": string}}',
                       {"index": index})


def check_id(value: Any, index: int) -> str | int | None:
    """A valid id (or None), else InvalidItemId naming the item."""
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= MAX_ID_CHARS and is_text(value):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    raise InvalidItemId(f"an item id is a string of at most {MAX_ID_CHARS} characters or a "
                        "64-bit integer", {"index": index})


def ids_bytes(ids: ItemIds | None) -> int:
    """What the ids cost the jobs Redis (their JSON, plus a hash field each)."""
    return sum(len(json.dumps(i)) + 16 for i in ids if i is not None) if ids else 0

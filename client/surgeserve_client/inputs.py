"""Input items from a file (txt, CSV, JSONL/NDJSON) or any iterable, read as a stream.

Every record of the input becomes exactly one `Item`, blank and unreadable ones included
(they carry an `error` and are reported at their place, never dropped), so the i-th item is
the i-th record and nothing after a bad row shifts. Each item knows the line it starts on.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgeserve_client.errors import InputError
from surgeserve_client.types import ItemError, ItemId

FORMATS = ("txt", "csv", "jsonl")
MAX_ID_CHARS = 256  # the server's bound too
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Item:
    """One input record: its text and id, or why it cannot be sent."""

    text: str | None
    id: ItemId | None = None
    line: int | None = None
    error: ItemError | None = None


def detect_format(path: str | Path) -> str:
    """txt, csv or jsonl, from the file name (.csv, .jsonl/.ndjson/.json; anything else
    is one text per line)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "txt"


def read_items(path: str | Path, *, fmt: str | None = None, column: str = "text",
               id_column: str | None = None) -> Iterator[Item]:
    """The file's items, one per record, in order (a generator: the file is read as the
    items are taken). CSV: `column` holds the text, `id_column` (if given) the id. JSONL:
    each line a JSON string or an object with `column` and (default "id") `id_column`."""
    fmt = fmt or detect_format(path)
    if fmt == "csv":
        return _csv_items(Path(path), column, id_column)
    if fmt == "jsonl":
        return _jsonl_items(Path(path), column, id_column or "id")
    if fmt == "txt":
        return _txt_items(Path(path))
    raise InputError(f"unknown input format {fmt!r} (one of {', '.join(FORMATS)})")


def as_items(values: Iterable[Any]) -> Iterator[Item]:
    """Items from what a program holds: texts, `(id, text)` pairs, `{"id", "text"}` dicts
    or `Item`s."""
    for value in values:
        if isinstance(value, Item):
            yield value
        elif isinstance(value, str):
            yield Item(value)
        elif isinstance(value, tuple) and len(value) == 2:
            yield _with_id(value[1], value[0], None)
        elif isinstance(value, dict):
            yield _with_id(value.get("text"), value.get("id"), None)
        else:
            yield Item(None, error=ItemError("invalid_input", "not a text, (id, text) or dict"))


def check(item: Item, max_chars: int) -> Item:
    """The item, or it with the error the server would answer for its text (checked here so
    one bad item never refuses a whole job)."""
    text = item.text
    if item.error is not None or text is None:
        return item
    reason = None
    if len(text) > max_chars:
        reason = ItemError("text_too_long", f"text is longer than {max_chars} characters")
    elif not text.isascii() and _SURROGATE.search(text):
        reason = ItemError("invalid_text", "not valid UTF-8 / Unicode text")
    elif not text or text.isspace():
        reason = ItemError("empty_text", "text is empty or only whitespace")
    return item if reason is None else Item(None, item.id, item.line, reason)


def _with_id(text: Any, item_id: Any, line: int | None) -> Item:
    if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, (str, int))
                                or (isinstance(item_id, str) and len(item_id) > MAX_ID_CHARS)):
        return Item(None, None, line,
                    ItemError("invalid_id", f"an id is a string (at most {MAX_ID_CHARS} "
                              "characters) or an integer"))
    if not isinstance(text, str):
        return Item(None, item_id, line, ItemError("missing_text", "no text in this record"))
    return Item(text, item_id, line)


def _lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text without its line end) for each line; records end at \\n only
    (U+2028 and friends are text). None: the line is not UTF-8."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            data = raw.rstrip(b"\n").rstrip(b"\r")
            if number == 1 and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
            try:
                yield number, data.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None


def _txt_items(path: Path) -> Iterator[Item]:
    for number, text in _lines(path):
        if text is None:
            yield Item(None, None, number, ItemError("invalid_text", "line is not UTF-8"))
        else:
            yield Item(text, None, number)


def _jsonl_items(path: Path, column: str, id_field: str) -> Iterator[Item]:
    for number, text in _lines(path):
        if text is None:
            yield Item(None, None, number, ItemError("invalid_text", "line is not UTF-8"))
            continue
        if not text.strip():
            yield Item(None, None, number, ItemError("empty_text", "blank line"))
            continue
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            yield Item(None, None, number, ItemError("invalid_json", "line is not JSON"))
            continue
        if isinstance(value, str):
            yield Item(value, None, number)
        elif isinstance(value, dict):
            yield _with_id(value.get(column), value.get(id_field), number)
        else:
            yield Item(None, None, number,
                       ItemError("invalid_input", f'a JSON string or {{"{column}": ...}}'))


def _csv_items(path: Path, column: str, id_column: str | None) -> Iterator[Item]:
    # surrogateescape: a row with bytes that are not UTF-8 is reported, the rest still read
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
        reader = csv.reader(handle, dialect)
        header = next(reader, None)
        if header is None:
            return
        where = _columns(path, header, column, id_column)
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Item(None, None, start, ItemError("unreadable_row", str(exc)[:200]))
                continue
            yield _csv_item(row, where, start)


def _columns(path: Path, header: list[str], column: str,
             id_column: str | None) -> dict[str, int | None]:
    names = [h.strip() for h in header]
    for wanted in (column, id_column):
        if wanted is not None and wanted not in names:
            raise InputError(f"{path}: no column {wanted!r} (the header has {names})")
    return {"text": names.index(column),
            "id": names.index(id_column) if id_column is not None else None}


def _csv_item(row: list[str], where: dict[str, int | None], line: int) -> Item:
    if not row or all(not cell.strip() for cell in row):
        return Item(None, None, line, ItemError("empty_text", "blank row"))
    text_at, id_at = where["text"], where["id"]
    item_id: str | None = None
    if id_at is not None and id_at < len(row):
        item_id = row[id_at] or None
    assert text_at is not None
    if text_at >= len(row):
        return Item(None, item_id, line, ItemError("missing_text", "row has no text column"))
    text = row[text_at]
    if _SURROGATE.search(text) or (item_id is not None and _SURROGATE.search(item_id)):
        return Item(None, None, line, ItemError("invalid_text", "row is not UTF-8"))
    return _with_id(text, item_id, line)

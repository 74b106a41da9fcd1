"""surgeserve_client.inputs: every record of a file is one item, in order, at its line; blank
and unreadable records are items with an error, never dropped (nothing after them shifts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from surgeserve_client.errors import InputError
from surgeserve_client.inputs import Item, as_items, check, read_items

CSV = ('id,text\n'
       'r1,I loved every minute\n'
       '\n'
       'r3,"Terrible, boring"\n'
       'r4,"a, quoted, one"\n'
       'r5,   \n'
       'r6,"two\nlines"\n'
       'r7,last one\n')


def test_csv_blank_rows_quoted_commas_and_ids_keep_their_places(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(CSV, encoding="utf-8")
    items = [check(i, 5000) for i in read_items(path, id_column="id")]
    assert [i.line for i in items] == [2, 3, 4, 5, 6, 7, 9]
    assert [i.id for i in items] == ["r1", None, "r3", "r4", "r5", "r6", "r7"]
    assert [i.text for i in items] == ["I loved every minute", None, "Terrible, boring",
                                       "a, quoted, one", None, "two\nlines", "last one"]
    assert items[1].error is not None and items[1].error.code == "empty_text"
    assert items[4].error is not None and items[4].error.code == "empty_text"


def test_csv_without_the_column_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,body\n1,x\n")
    with pytest.raises(InputError, match="no column 'text'"):
        list(read_items(path))
    with pytest.raises(InputError, match="no column 'key'"):
        list(read_items(path, column="body", id_column="key"))


def test_csv_bom_short_rows_and_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"\xef\xbb\xbftext,id\nfine,1\nbad \xff byte,2\n,3\nonly-text\n")
    items = list(read_items(path, id_column="id"))
    assert [(i.text, i.id, i.line) for i in items[:1]] == [("fine", "1", 2)]
    assert items[1].error is not None and items[1].error.code == "invalid_text"
    assert items[1].line == 3
    assert check(items[2], 100).error is not None  # empty text, its id kept
    assert items[2].id == "3"
    assert items[3].text == "only-text" and items[3].id is None


def test_txt_lines_split_on_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"one\r\n\ntwo\xe2\x80\xa8still two\n\xff\n")
    items = [check(i, 100) for i in read_items(path)]
    assert [i.line for i in items] == [1, 2, 3, 4]
    assert items[0].text == "one"
    assert items[1].error is not None and items[1].error.code == "empty_text"
    assert items[2].text == "two\u2028still two"
    assert items[3].error is not None and items[3].error.code == "invalid_text"


def test_jsonl_strings_objects_ids_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('"plain"\n{"id": 7, "text": "with id"}\nnot json\n\n'
                    '{"id": "x", "body": "no text"}\n[1]\n{"id": true, "text": "t"}\n')
    items = list(read_items(path))
    assert (items[0].text, items[0].id) == ("plain", None)
    assert (items[1].text, items[1].id, items[1].line) == ("with id", 7, 2)
    codes = [i.error.code if i.error else None for i in items]
    assert codes == [None, None, "invalid_json", "empty_text", "missing_text",
                     "invalid_input", "invalid_id"]
    assert items[4].id == "x"  # the id stays with its error row
    other = list(read_items(path, column="body", id_column="id"))
    assert other[4].text == "no text"


def test_iterables_and_the_checks_the_server_would_make() -> None:
    items = list(as_items(["a", ("k", "b"), {"id": 3, "text": "c"}, Item("d", "z"), 5]))
    assert [(i.id, i.text) for i in items[:4]] == [(None, "a"), ("k", "b"), (3, "c"),
                                                   ("z", "d")]
    assert items[4].error is not None
    assert check(Item("x" * 11), 10).error.code == "text_too_long"  # type: ignore[union-attr]
    assert check(Item("bad \ud800"), 10).error.code == "invalid_text"  # type: ignore[union-attr]
    assert check(Item(" \t"), 10).error.code == "empty_text"  # type: ignore[union-attr]
    assert check(Item("fine"), 10).error is None

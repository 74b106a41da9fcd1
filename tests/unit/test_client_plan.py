"""surgeserve_client.plan: splitting an input into jobs within the limits and merging the
results back, one row per input item in input order (resumable from any row)."""

from __future__ import annotations

import json
from typing import Any

from surgeserve_client.inputs import Item
from surgeserve_client.plan import Merger, Planner, Submission
from surgeserve_client.types import ItemError, Limits


def items(n: int, blank_every: int = 0) -> list[Item]:
    """n items `t<i>` with ids `id<i>`; every `blank_every`-th one blank."""
    return [Item("" if blank_every and i % blank_every == 0 else f"t{i}", f"id{i}", i + 1)
            for i in range(n)]


def plan(source: list[Item], limits: Limits, sub: Submission | None = None) -> Submission:
    """Run the planner as a client would, each part accepted as job `job<n>`."""
    sub = sub or Submission(key="k")
    planner = Planner(sub, limits)
    for part in planner.parts(source):
        planner.accepted(part, f"job{part.number}")
    return sub


def fake_pages(sub: Submission, source: list[Item]) -> dict[str, list[dict[str, Any]]]:
    """What the server holds per job: the sent items' results, each with its id."""
    sent = [i for i in source if i.text]
    out: dict[str, list[dict[str, Any]]] = {}
    for part in sub.parts:
        chunk = sent[part.first: part.first + part.count]
        out[part.job_id] = [{"index": k, "id": item.id, "label": item.text, "score": 0.5,
                             "scores": []} for k, item in enumerate(chunk)]
    return out


def merge(sub: Submission, pages: dict[str, list[dict[str, Any]]], start: int = 0,
          page: int = 7) -> list[Any]:
    merger = Merger(sub, start, page=page)
    rows = []
    while True:
        rows += merger.ready()
        request = merger.request()
        if request is None:
            return rows
        held = pages[request.job_id][request.offset: request.offset + request.limit]
        rows += merger.take(request, held)


def test_split_by_items_and_bytes_keeps_order_and_skips_blanks_in_place() -> None:
    source = items(50, blank_every=6)
    sub = plan(source, Limits(job_max_items=10, job_max_bytes=10_000))
    assert sub.complete and sub.consumed == 50
    assert [p.count for p in sub.parts] == [10, 10, 10, 10, 1]
    assert [s.index for s in sub.skipped] == [0, 6, 12, 18, 24, 30, 36, 42, 48]
    assert [s.line for s in sub.skipped] == [1, 7, 13, 19, 25, 31, 37, 43, 49]
    assert {p.job_id for p in sub.parts} == {f"job{n}" for n in range(5)}
    by_bytes = plan(source, Limits(job_max_items=1000, job_max_bytes=100))
    line = len(b'{"id": "id10", "text": "t10"}\n')
    assert all(p.count <= 100 // line + 1 for p in by_bytes.parts)
    assert sum(p.count for p in by_bytes.parts) == 50 - 9


def test_merge_gives_one_row_per_item_in_input_order_with_ids() -> None:
    source = [*items(50, blank_every=6), Item("", "trailing", 51)]
    sub = plan(source, Limits(job_max_items=10))
    rows = merge(sub, fake_pages(sub, source))
    assert [r.index for r in rows] == list(range(51))
    assert [r.id for r in rows] == [i.id for i in source]
    assert [r.ok for r in rows] == [bool(i.text) for i in source]
    assert all(r.label == i.text for r, i in zip(rows, source, strict=True) if r.ok)
    assert rows[6].error == ItemError("empty_text", "text is empty or only whitespace")
    assert rows[6].line == 7


def test_merge_resumes_from_any_row() -> None:
    source = items(40, blank_every=5)
    sub = plan(source, Limits(job_max_items=9))
    pages = fake_pages(sub, source)
    whole = merge(sub, pages)
    for start in (0, 1, 5, 9, 17, 39, 40):
        assert merge(sub, pages, start=start) == whole[start:]


def test_a_missing_result_is_an_error_row_at_its_place() -> None:
    source = items(12)
    sub = plan(source, Limits(job_max_items=5))
    pages = fake_pages(sub, source)
    del pages["job1"][2]  # the server lost (or never computed) input item 7
    rows = merge(sub, pages)
    assert [r.index for r in rows] == list(range(12))
    assert rows[7].error is not None and rows[7].error.code == "no_result"
    assert all(r.ok for k, r in enumerate(rows) if k != 7)


def test_split_of_a_refused_part_keeps_items_and_skipped_in_order() -> None:
    source = items(30, blank_every=4)
    sub = Submission(key="k")
    planner = Planner(sub, Limits(job_max_items=100))
    for part in planner.parts(source):
        pieces = planner.split(part, Limits(job_max_items=7))
        assert [p.number for p in pieces] == [0, 1, 2, 3]
        assert [p.key for p in pieces] == ["k-0", "k-1", "k-2", "k-3"]
        for piece in pieces:
            planner.accepted(piece, f"job{piece.number}")
    assert [p.count for p in sub.parts] == [7, 7, 7, 1]
    assert sorted(s.index for s in sub.skipped) == [0, 4, 8, 12, 16, 20, 24, 28]
    rows = merge(sub, fake_pages(sub, source))
    assert [r.id for r in rows] == [i.id for i in source]


def test_an_interrupted_submit_resumes_with_the_same_keys_and_no_item_twice() -> None:
    source = items(25, blank_every=7)
    limits = Limits(job_max_items=6)
    sub = Submission(key="k")
    planner = Planner(sub, limits)
    made = []
    for part in planner.parts(source):
        if part.number == 2:
            break  # the process died while submitting part 2
        planner.accepted(part, f"job{part.number}")
        made.append(part.key)
    saved = Submission.from_json(json.loads(json.dumps(sub.to_json())))
    assert not saved.complete and saved.consumed == sub.consumed
    resumed = plan(source, limits, saved)
    uninterrupted = plan(source, limits, Submission(key="k"))
    assert resumed.to_json() == uninterrupted.to_json()
    assert made == ["k-0", "k-1"]


def test_a_resume_cuts_the_same_parts_whatever_the_limits_are_by_then() -> None:
    source = items(25)
    sub = Submission(key="k")
    planner = Planner(sub, Limits(job_max_items=6))
    for part in planner.parts(source):
        if part.number == 2:
            break
        planner.accepted(part, f"job{part.number}")
    saved = Submission.from_json(json.loads(json.dumps(sub.to_json())))
    resumed = plan(source, Limits(job_max_items=10), saved)  # the server's limits changed
    assert [p.count for p in resumed.parts] == [6, 6, 6, 6, 1]

"""Splitting an input into jobs within the server's limits, and merging their results back
into one row per input item, in input order. Pure (no I/O): the sync and async clients drive
both, so the two share every rule.

Index spaces: an *input index* counts every item read (sent or not); a *sent index* counts
only the items sent, across all of a submission's jobs (job k holds sent indices
`first .. first + count - 1`, its own result indices `0 .. count - 1`).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from surgeserve_client.errors import ClientError
from surgeserve_client.inputs import Item, check
from surgeserve_client.types import ItemError, ItemId, JobResult, Limits, _scores

PAGE = 1000  # results per page read (the API's maximum)


@dataclass
class Part:
    """One job of a submission."""

    job_id: str
    first: int
    count: int


@dataclass
class Skipped:
    """An input item not sent (blank, unreadable, too long...), reported at its place."""

    index: int
    line: int | None
    id: ItemId | None
    code: str
    message: str

    def result(self) -> JobResult:
        """Its row in the results."""
        return JobResult(self.index, self.id, error=ItemError(self.code, self.message),
                         line=self.line)


@dataclass
class Submission:
    """What a submit made: its jobs in order and the items it did not send. Serialisable
    (`to_json`), so an interrupted submit or download resumes without a second job.
    `consumed` counts the input items accounted for by `parts` and `skipped`; `complete`
    says the whole input was."""

    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    model: str | None = None
    parts: list[Part] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    consumed: int = 0
    complete: bool = False
    # The job limits its parts were cut by: a resume cuts the same parts (a part's
    # Idempotency-Key must name the same body), whatever the server says by then.
    max_items: int | None = None
    max_bytes: int | None = None

    @property
    def job_ids(self) -> list[str]:
        """The ids of its jobs, in input order."""
        return [p.job_id for p in self.parts]

    @property
    def sent(self) -> int:
        """Items sent, over all its jobs."""
        return sum(p.count for p in self.parts)

    def part_key(self, number: int) -> str:
        """The Idempotency-Key of part `number`: the same on every retry and on a resume."""
        return f"{self.key}-{number}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (see from_json)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Submission:
        """Back from to_json."""
        return cls(key=data["key"], model=data.get("model"),
                   parts=[Part(**p) for p in data["parts"]],
                   skipped=[Skipped(**s) for s in data["skipped"]],
                   consumed=int(data["consumed"]), complete=bool(data["complete"]),
                   max_items=data.get("max_items"), max_bytes=data.get("max_bytes"))

    @classmethod
    def of_jobs(cls, jobs: Iterable[tuple[str, int]]) -> Submission:
        """A submission made elsewhere, from its (job id, total) pairs in order."""
        sub = cls(complete=True)
        for job_id, total in jobs:
            sub.parts.append(Part(job_id, sub.sent, total))
        sub.consumed = sub.sent
        return sub


@dataclass
class PendingPart:
    """A job about to be submitted: its NDJSON lines and the input items they came from."""

    number: int
    key: str
    lines: list[bytes]
    indices: list[int]  # the input index of each line
    end: int  # the input index after its last item (what `consumed` becomes on acceptance)
    skipped: list[Skipped]  # items met while filling it (recorded when it is accepted)

    @property
    def body(self) -> bytes:
        """The NDJSON body."""
        return b"".join(self.lines)

    @property
    def size(self) -> int:
        """Bytes of the body."""
        return sum(len(line) for line in self.lines)


# Line breaks to str.splitlines() that JSON leaves raw: escaped, so a server that splits
# NDJSON that way still reads one record per line.
_BREAKS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def encode(item: Item) -> bytes | None:
    """The item's NDJSON line, or None when its text cannot be encoded."""
    value: Any = item.text if item.id is None else {"id": item.id, "text": item.text}
    try:
        line = json.dumps(value, ensure_ascii=False).translate(_BREAKS)
        return (line + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return None


class Planner:
    """Cuts a stream of items into parts within the limits, continuing `submission` (a
    fresh one, or one an interrupted run saved: its consumed items are skipped over)."""

    def __init__(self, submission: Submission, limits: Limits):
        self.submission = submission
        if submission.max_items is not None and submission.max_bytes is not None:
            limits = dataclasses.replace(limits, job_max_items=submission.max_items,
                                         job_max_bytes=submission.max_bytes)
        self.limits = limits
        self._record()

    def _record(self) -> None:
        self.submission.max_items = self.limits.job_max_items
        self.submission.max_bytes = self.limits.job_max_bytes

    def parts(self, items: Iterable[Item]) -> Iterator[PendingPart]:
        """The parts to submit, in order. Call `accepted` for each before taking the next;
        when the generator ends, the submission is complete."""
        sub = self.submission
        lines: list[bytes] = []
        indices: list[int] = []
        size, skipped, index = 0, [], sub.consumed
        source = iter(items)
        for _ in range(sub.consumed):  # a resume: those are in the saved parts already
            next(source, None)
        for raw in source:
            item = check(raw, self.limits.max_text_chars)
            line = encode(item) if item.error is None else None
            if line is None:
                error = item.error or ItemError("invalid_text", "not valid Unicode text")
                skipped.append(Skipped(index, item.line, item.id, error.code, error.message))
                index += 1
                continue
            if lines and (len(lines) >= self.limits.job_max_items
                          or size + len(line) > self.limits.job_max_bytes):
                yield self._pending(lines, indices, index, skipped)
                lines, indices, size, skipped = [], [], 0, []
            lines.append(line)
            indices.append(index)
            size += len(line)
            index += 1
        if lines:
            yield self._pending(lines, indices, index, skipped)
            skipped = []
        sub.skipped.extend(skipped)
        sub.consumed, sub.complete = index, True

    def _pending(self, lines: list[bytes], indices: list[int], end: int,
                 skipped: list[Skipped]) -> PendingPart:
        number = len(self.submission.parts)
        return PendingPart(number, self.submission.part_key(number), lines, indices, end,
                           skipped)

    def accepted(self, part: PendingPart, job_id: str, total: int | None = None) -> None:
        """The server made (or had made) the part's job, of `total` items (checked: a job
        of another size under this key would map results to the wrong items)."""
        if total is not None and total != len(part.lines):
            raise ClientError(f"job {job_id} for Idempotency-Key {part.key} holds {total} "
                              f"items, not the {len(part.lines)} sent; not using it")
        sub = self.submission
        sub.parts.append(Part(job_id, sub.sent, len(part.lines)))
        sub.skipped.extend(part.skipped)
        sub.consumed = part.end

    def split(self, part: PendingPart, limits: Limits) -> list[PendingPart]:
        """A part the server refused as too large, cut to `limits` (learned from the
        refusal). The first piece keeps the part's number and key: the refused request made
        no job, so the key is still free."""
        self.limits = limits
        self._record()
        bounds = [0]  # where each piece starts in the part's lines
        size = 0
        for k, line in enumerate(part.lines):
            if k > bounds[-1] and (k - bounds[-1] >= limits.job_max_items
                                   or size + len(line) > limits.job_max_bytes):
                bounds.append(k)
                size = 0
            size += len(line)
        if len(bounds) == 1:
            return [part]
        bounds.append(len(part.lines))
        out: list[PendingPart] = []
        since = -1  # the input index where the previous piece ended
        for k in range(len(bounds) - 1):
            lo, hi = bounds[k], bounds[k + 1]
            # a piece ends after its last line; the last one where the part did (trailing
            # skipped items); skipped items go with the piece whose range holds them
            end = part.end if k == len(bounds) - 2 else part.indices[hi - 1] + 1
            number = part.number + k
            out.append(PendingPart(number, self.submission.part_key(number),
                                   part.lines[lo:hi], part.indices[lo:hi], end,
                                   [s for s in part.skipped if since <= s.index < end]))
            since = end
        return out


@dataclass(frozen=True)
class PageRequest:
    job_id: str
    offset: int
    limit: int


class Merger:
    """One result row per input item, in input order, from the jobs' result pages, starting
    at input index `start` (a resumed download). Drive it as:

        while True:
            yield from merger.ready()
            request = merger.request()
            if request is None: break
            yield from merger.take(request, <results of that page>)
    """

    def __init__(self, submission: Submission, start: int = 0, page: int = PAGE):
        if not submission.complete:
            raise ValueError("the submission is not complete (resume the submit first)")
        self.sub = submission
        self.total = submission.consumed
        self.page = page
        self.position = start
        self._skipped = sorted(submission.skipped, key=lambda s: s.index)
        self._at = bisect.bisect_left([s.index for s in self._skipped], start)
        self._firsts = [p.first for p in submission.parts]

    def ready(self) -> list[JobResult]:
        """The skipped items at the current position (no page needed)."""
        out = []
        while self._at < len(self._skipped) and self._skipped[self._at].index == self.position:
            out.append(self._skipped[self._at].result())
            self._at += 1
            self.position += 1
        return out

    def request(self) -> PageRequest | None:
        """The next page to read, or None when every row was given."""
        if self.position >= self.total:
            return None
        sent = self.position - self._at
        k = bisect.bisect_right(self._firsts, sent) - 1
        if k < 0 or sent >= self.sub.parts[k].first + self.sub.parts[k].count:
            # an inconsistent (hand-edited, truncated) submission: stop, never loop
            raise ValueError(f"input item {self.position} is in no job of the submission")
        part = self.sub.parts[k]
        offset = sent - part.first
        return PageRequest(part.job_id, offset, min(self.page, part.count - offset))

    def take(self, request: PageRequest, results: list[dict[str, Any]]) -> list[JobResult]:
        """The rows for one page (items the job has no result for become errors)."""
        found = {r.get("index"): r for r in results}
        out = []
        for offset in range(request.offset, request.offset + request.limit):
            out.extend(self.ready())
            out.append(_row(self.position, found.get(offset)))
            self.position += 1
        return out


def _row(index: int, raw: dict[str, Any] | None) -> JobResult:
    if raw is None:
        return JobResult(index, error=ItemError(
            "no_result", "the job has no result for this item (it failed or was cancelled)"))
    if raw.get("error"):
        error = raw["error"]
        return JobResult(index, raw.get("id"), error=ItemError(
            str(error.get("code", "error")), str(error.get("message", ""))))
    return JobResult(index, raw.get("id"), str(raw["label"]), float(raw["score"]),
                     _scores(raw.get("scores")))

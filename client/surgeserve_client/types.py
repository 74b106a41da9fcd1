"""Typed answers of the API, as dataclasses (built from its JSON, never trusted blindly)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

# A caller's id for an item: a string or an integer, carried to the item's result unchanged.
ItemId = Union[str, int]
FINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


def _scores(raw: Any) -> list[LabelScore]:
    return [LabelScore(str(s["label"]), float(s["score"])) for s in raw or []]


@dataclass(frozen=True)
class Prediction:
    """One text's prediction: the top label, its score, every label ranked."""

    label: str
    score: float
    scores: list[LabelScore]
    cached: bool = False
    model: str | None = None
    version: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any], model: str | None = None,
                  version: str | None = None) -> Prediction:
        """From a `/v1/predict` body or one item of a bulk answer."""
        return cls(str(data["label"]), float(data["score"]), _scores(data.get("scores")),
                   bool(data.get("cached", False)), data.get("model", model),
                   data.get("version", version))


@dataclass(frozen=True)
class Job:
    """A job's status and exact progress."""

    id: str
    status: str
    total: int
    done: int
    failed: int = 0
    chunks: int = 0
    model: str | None = None
    version: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the job ended (succeeded, failed or cancelled)."""
        return self.status in FINAL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        """From a job view of the API."""
        return cls(str(data["id"]), str(data["status"]), int(data["total"]),
                   int(data.get("done") or 0), int(data.get("failed") or 0),
                   int(data.get("chunks") or 0), data.get("model"), data.get("version"),
                   data.get("created_at"), data.get("started_at"), data.get("finished_at"),
                   data.get("error"))


@dataclass(frozen=True)
class JobList:
    """One page of the caller's jobs, newest first."""

    jobs: list[Job]
    offset: int
    limit: int
    next_offset: int | None


@dataclass(frozen=True)
class ItemError:
    """Why an item has no prediction: refused before sending (a blank row, an unreadable
    line) or left without a result by its job."""

    code: str
    message: str


@dataclass(frozen=True)
class JobResult:
    """One input item's outcome, at its place: `index` counts every item read (the ones
    reported as errors too), so results map back to the input by index or by id."""

    index: int
    id: ItemId | None = None
    label: str | None = None
    score: float | None = None
    scores: list[LabelScore] = field(default_factory=list)
    error: ItemError | None = None
    line: int | None = None  # the input file's line the item starts on, when known
    text: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the item has a prediction."""
        return self.error is None

    def to_json(self, with_text: bool = False) -> dict[str, Any]:
        """The NDJSON/JSONL output row."""
        row: dict[str, Any] = {"index": self.index}
        if self.line is not None:
            row["line"] = self.line
        row["id"] = self.id
        if self.error is not None:
            row["error"] = {"code": self.error.code, "message": self.error.message}
        else:
            row |= {"label": self.label, "score": self.score,
                    "scores": [{"label": s.label, "score": s.score} for s in self.scores]}
        if with_text:
            row["text"] = self.text
        return row


@dataclass(frozen=True)
class Limits:
    """The server's limits on one request. `known` is False when the server did not say
    (the defaults of a stock server are used, and learned from its refusals)."""

    job_max_items: int = 100_000
    job_max_bytes: int = 32 * 1_048_576
    max_text_chars: int = 5000
    bulk_max_items: int = 256
    max_body_bytes: int = 1_048_576
    known: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Limits:
        """From `GET /v1/limits` (fields it lacks keep their defaults)."""
        names = ("job_max_items", "job_max_bytes", "max_text_chars", "bulk_max_items",
                 "max_body_bytes")
        return cls(**{n: int(data[n]) for n in names if isinstance(data.get(n), int)},
                   known=True)

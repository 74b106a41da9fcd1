"""Result files written as a stream (NDJSON, JSONL or CSV), with a state file beside them so
an interrupted submit or download resumes where it stopped instead of starting again.

The state file `<out>.ssc.json` holds the submission (its jobs, its skipped items), how many
rows and bytes of `<out>` are complete, and the input it came from. It is rewritten
(atomically) after each checkpoint and removed once the download is complete. On a resume
`<out>` is cut back to the bytes the state vouches for, so a row half-written when the
process died is written again, whole.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from surgeserve_client.inputs import Item
from surgeserve_client.plan import Submission
from surgeserve_client.types import JobResult

OUTPUT_FORMATS = ("ndjson", "jsonl", "csv")
CSV_COLUMNS = ["index", "line", "id", "label", "score", "error"]
STATE_SUFFIX = ".ssc.json"


def output_format(path: str | Path | None, fmt: str | None = None) -> str:
    """The output format: `fmt`, else from the file name (.csv, .jsonl; NDJSON otherwise)."""
    if fmt:
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {fmt!r} (one of {OUTPUT_FORMATS})")
        return fmt
    suffix = Path(path).suffix.lower() if path else ""
    return {".csv": "csv", ".jsonl": "jsonl"}.get(suffix, "ndjson")


def state_path(out: str | Path) -> Path:
    """Where the state of a download into `out` is kept."""
    return Path(str(out) + STATE_SUFFIX)


@dataclass
class State:
    """What a resume needs (see the module doc)."""

    submission: Submission
    format: str = "ndjson"
    with_text: bool = False
    written: int = 0
    bytes: int = 0
    source: dict[str, Any] | None = None  # the input file and how it was read

    def save(self, out: str | Path) -> None:
        """Write the state file atomically (a crash leaves the old one or the new one)."""
        path = state_path(out)
        data = {"version": 1, "submission": self.submission.to_json(), "format": self.format,
                "with_text": self.with_text, "written": self.written, "bytes": self.bytes,
                "source": self.source}
        temp = path.with_name(path.name + ".tmp")
        temp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(temp, path)

    @classmethod
    def load(cls, out: str | Path) -> State | None:
        """The state of an earlier download into `out`, or None (none, or unreadable)."""
        try:
            data = json.loads(state_path(out).read_text(encoding="utf-8"))
            return cls(Submission.from_json(data["submission"]), data["format"],
                       bool(data["with_text"]), int(data["written"]), int(data["bytes"]),
                       data.get("source"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def remove(out: str | Path) -> None:
        """Forget the state (the download is complete)."""
        with contextlib.suppress(FileNotFoundError):
            state_path(out).unlink()


def fill(row: JobResult, item: Item | None) -> JobResult:
    """A result with its input item's line, text and (if the server did not return one) id."""
    if item is None:
        return row
    return JobResult(row.index, row.id if row.id is not None else item.id, row.label,
                     row.score, row.scores, row.error,
                     row.line if row.line is not None else item.line, item.text)


class Output:
    """Rows into a file (resumable, with `state`) or a stream (stdout)."""

    def __init__(self, out: str | Path | None, state: State,
                 stream: IO[str] | None = None):
        self.out = out
        self.state = state
        self._stream = stream
        self._file: IO[bytes] | None = None
        self._since = 0
        if out is not None:
            # cut back to what the state vouches for (a half-written row goes)
            whole = Path(out).exists() and Path(out).stat().st_size >= state.bytes
            mode = "r+b" if state.written and whole else "wb"
            self._file = open(out, mode)  # noqa: SIM115 (closed in close())
            if mode == "r+b":
                self._file.truncate(state.bytes)
                self._file.seek(state.bytes)
            else:
                state.written, state.bytes = 0, 0
        if state.written == 0 and state.format == "csv":
            self._emit(self._csv_line(CSV_COLUMNS + (["text"] if state.with_text else [])))

    def write(self, row: JobResult) -> None:
        """One row."""
        if self.state.format == "csv":
            self._emit(self._csv_line(self._csv_cells(row)))
        else:
            self._emit(json.dumps(row.to_json(self.state.with_text), ensure_ascii=False) + "\n")
        self.state.written += 1
        self._since += 1

    def checkpoint(self, every: int = 1000) -> None:
        """Make the rows written so far durable and record them (at most every `every`)."""
        if self._file is None or self._since < every:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        assert self.out is not None
        self.state.save(self.out)
        self._since = 0

    def finish(self) -> None:
        """All rows written: close, and forget the state."""
        self.close()
        if self.out is not None:
            State.remove(self.out)
        elif self._stream is not None:
            self._stream.flush()

    def close(self) -> None:
        """Close the file, recording how far it got (an interrupted download resumes)."""
        if self._file is not None and not self._file.closed:
            self.checkpoint(every=0)
            self._file.close()

    def _emit(self, text: str) -> None:
        if self._file is None:
            (self._stream or sys.stdout).write(text)
            return
        data = text.encode("utf-8", "surrogatepass")
        self._file.write(data)
        self.state.bytes += len(data)

    @staticmethod
    def _csv_line(cells: list[Any]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(cells)
        return buffer.getvalue()

    def _csv_cells(self, row: JobResult) -> list[Any]:
        error = f"{row.error.code}: {row.error.message}" if row.error else ""
        cells: list[Any] = [row.index, "" if row.line is None else row.line,
                            "" if row.id is None else row.id,
                            row.label or "", "" if row.score is None else row.score, error]
        if self.state.with_text:
            cells.append("" if row.text is None else row.text)
        return cells

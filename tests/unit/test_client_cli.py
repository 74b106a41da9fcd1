"""The `ssc` command's resume: a submit interrupted between jobs, run again with the same
arguments, makes only the jobs still missing and writes every row once (the jobs API is the
small fake of test_client_http; the real one is in tests/integration/test_client.py)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import pytest

from surgeserve_client import Client, cli
from surgeserve_client.outputs import state_path
from tests.unit.test_client_http import FAST, FakeJobsApi


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeJobsApi:
    api = FakeJobsApi(max_items=3)
    monkeypatch.setattr(cli, "_client", lambda args: Client(
        "http://fake", transport=httpx.MockTransport(api), retry=FAST))
    return api


def test_an_interrupted_submit_resumes_without_a_second_job(fake: FakeJobsApi,
                                                            tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("key,text\n" + "".join(
        f"k{i},{'' if i % 4 == 3 else f'text {i}'}\n" for i in range(12)))
    out = tmp_path / "out.csv"
    args = ["submit", str(source), "--id-column", "key", "--wait", "--out", str(out),
            "--no-progress"]
    posted = 0
    real = fake._submit

    def count_then_die(request: httpx.Request) -> httpx.Response:
        nonlocal posted
        posted += 1
        if posted == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third job is being submitted
        return real(request)

    fake._submit = count_then_die  # type: ignore[method-assign]
    assert cli.main(args) == 130
    assert len(fake.jobs) == 2 and state_path(out).exists()
    fake._submit = real  # type: ignore[method-assign]
    assert cli.main(args) == 0
    assert len(fake.jobs) == 3  # 9 items sent, 3 per job: the first two were reused
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["id"] for r in rows] == [f"k{i}" for i in range(12)]
    assert [r["line"] for r in rows] == [str(i + 2) for i in range(12)]
    assert all(r["error"].startswith("empty_text") == (i % 4 == 3) for i, r in enumerate(rows))
    assert all(r["label"] == f"text {i}"[::-1] for i, r in enumerate(rows) if i % 4 != 3)
    assert not state_path(out).exists()


def test_results_resume_from_the_saved_state_without_ids(fake: FakeJobsApi,
                                                         tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"id": {i}, "text": "t{i}"}}\n' for i in range(7)) + "\n")
    out = tmp_path / "out.ndjson"
    made = cli.main(["submit", str(source), "--out", str(out), "--no-progress"])
    assert made == 0 and state_path(out).exists() and not out.exists()
    assert cli.main(["results", "--out", str(out), "--no-progress"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 8 and '"id": 6' in lines[6] and '"line": 8' in lines[7]
    assert cli.main(["results", "--no-progress"]) == 2  # nothing to resume, no ids

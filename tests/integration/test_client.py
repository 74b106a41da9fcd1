"""The client package as a bulk user has it: a fresh virtualenv (the oldest Python the client
supports, when this machine has it) with only surgeserve-client installed, no ML stack, its
`ssc` command against a live stack (real uvicorn API, real jobs and cache Redis, a real
worker process); and a submit whose API process is SIGKILLed mid-request, then restarted:
the client's retry (same Idempotency-Key) gets the one job made."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from common.auth import hash_key
from surgeserve_client import AsyncClient, Client
from tests.integration.test_jobs import jobs_redis, start_worker, worker

__all__ = ["jobs_redis", "start_worker", "worker"]

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk_bulk_user_0123456789"
ML = ("torch", "onnxruntime", "transformers")

# Blank rows (empty, only commas, a blank text), quoted commas, a quoted line break, ids.
CSV_IN = ('id,text,stars\n'
          'r1,I loved every minute,5\n'
          ',,\n'
          'r3,"Terrible, boring",1\n'
          'r4,"a, quoted, one",3\n'
          '\n'
          'r6,"A warm, funny film\nthat I will watch again",5\n'
          'r7,   ,2\n'
          'r8,The worst film I have ever seen,1\n'
          'r9,"An instant classic, truly wonderful",5\n')
IDS = ["r1", None, "r3", "r4", None, "r6", "r7", "r8", "r9"]
LINES = [2, 3, 4, 5, 6, 7, 9, 10, 11]
SENT = {"r1": "POSITIVE", "r3": "NEGATIVE", "r4": None, "r6": "POSITIVE", "r8": "NEGATIVE",
        "r9": "POSITIVE"}


def oldest_python() -> str:
    """Python 3.9 (the client's floor) if this machine has one, else this interpreter."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for candidate in [*sorted(map(str, pyenv.glob("3.9*/bin/python3.9"))),
                      shutil.which("python3.9")]:
        if candidate and subprocess.run([candidate, "-c", "import venv, ensurepip"],
                                        capture_output=True, timeout=30).returncode == 0:
            return candidate
    return sys.executable


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout on the path (the venv must stand alone)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"PIP_DISABLE_PIP_VERSION_CHECK": "1"} | extra


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding surgeserve-client alone (pip's cache and index as
    configured on this machine: httpx and tqdm are its only dependencies)."""
    base = tmp_path_factory.mktemp("client-venv")
    source = base / "client"  # a copy: pip's in-tree build must not litter the checkout
    shutil.copytree(ROOT / "client", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = base / "venv"
    subprocess.run([oldest_python(), "-m", "venv", str(venv)], check=True, timeout=120,
                   env=clean_env())
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)],
                         capture_output=True, text=True, timeout=300, env=clean_env(),
                         cwd=base)
    if pip.returncode != 0:
        unreachable = ("No matching distribution", "Could not find a version",
                       "NewConnectionError", "Temporary failure in name resolution")
        if any(marker in pip.stderr for marker in unreachable):
            pytest.skip(f"no package index for httpx/tqdm here: {pip.stderr[-300:]}")
        pytest.fail(f"pip install ./client failed:\n{pip.stderr[-2000:]}")
    return venv


def venv_python(venv: Path, code: str) -> str:
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                          text=True, timeout=60, env=clean_env(), cwd=venv)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def ssc(venv: Path, *args: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "ssc"), *args, "--no-progress"],
                          capture_output=True, text=True, timeout=180, cwd=cwd,
                          env=clean_env(SURGE_URL=url, SURGE_API_KEY=KEY))


@pytest.fixture
def keyed_api(make_app, live_server, jobs_redis, cache_redis) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A keyed API whose jobs hold at most 4 items: a 6-item input makes two jobs."""
    app = make_app(redis_url=jobs_redis.url, cache_url=cache_redis.url, job_chunk_size=2,
                   job_max_items=4, api_keys=f"bulk:{hash_key(KEY)}")
    with live_server(app) as srv:
        yield srv.url


@pytest.mark.slow
def test_fresh_venv_cli_csv_and_ndjson_every_id_once_in_order(client_venv: Path, keyed_api,
                                                                worker, tmp_path: Path) -> None:
    missing = venv_python(client_venv, "import importlib.util as u; print([m for m in "
                          f"{ML!r} if u.find_spec(m) is not None])")
    assert missing == "[]"  # none of the server's ML stack
    where = venv_python(client_venv, "import surgeserve_client, sys; "
                        "print(surgeserve_client.__file__, sys.version_info[:2])")
    assert where.startswith(str(client_venv)), where  # the installed copy, not this checkout
    if oldest_python() != sys.executable:
        assert where.endswith("(3, 9)"), where
    source = tmp_path / "reviews.csv"
    source.write_text(CSV_IN, encoding="utf-8")

    done = ssc(client_venv, "submit", str(source), "--column", "text", "--id-column", "id",
               "--wait", "--out", "results.csv", "--with-text", url=keyed_api, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "6 items in 2 job(s)" in done.stderr and "line 3: not sent (empty_text" in done.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert [r["id"] or None for r in rows] == IDS
    assert [int(r["line"]) for r in rows] == LINES
    assert [r["index"] for r in rows] == [str(k) for k in range(9)]
    check_labels({r["id"]: (r["label"], r["error"]) for r in rows if r["id"]})
    texts = {r["id"]: r["text"] for r in rows}
    assert texts["r4"] == "a, quoted, one"
    assert texts["r6"] == "A warm, funny film\nthat I will watch again"
    assert not (tmp_path / "results.csv.ssc.json").exists()

    # NDJSON, the long way: submit (no wait), list, wait, download from the saved state
    made = ssc(client_venv, "submit", str(source), "--column", "text", "--id-column", "id",
               "--out", "results.ndjson", url=keyed_api, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    job_ids = made.stdout.split()
    assert len(job_ids) == 2
    listed = ssc(client_venv, "list", url=keyed_api, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    ids_listed = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert ids_listed[:2] == job_ids[::-1] and len(ids_listed) == 4  # newest first
    waited = ssc(client_venv, "wait", *job_ids, url=keyed_api, cwd=tmp_path)
    assert waited.returncode == 0, waited.stderr
    fetched = ssc(client_venv, "results", "--out", "results.ndjson", url=keyed_api,
                  cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    rows = [json.loads(line) for line in (tmp_path / "results.ndjson").read_text().splitlines()]
    assert [r["id"] for r in rows] == IDS and [r["line"] for r in rows] == LINES
    check_labels({r["id"]: (r.get("label"), r.get("error", {}).get("code", ""))
                  for r in rows if r["id"]})


def check_labels(by_id: dict[str, tuple[str | None, str]]) -> None:
    for item_id, (label, error) in by_id.items():
        if item_id in SENT:
            assert not error and label in ("POSITIVE", "NEGATIVE"), (item_id, label, error)
            assert SENT[item_id] in (None, label), (item_id, label)
        else:
            assert error.startswith("empty_text") and not label, (item_id, label, error)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_api(port: int, jobs_url: str, log: Path) -> subprocess.Popen[bytes]:
    """`surgeserve serve` as its own process: the jobs role (no model), chunks of one text
    so that enqueuing takes long enough to be interrupted."""
    env = os.environ | {"PORT": str(port), "SURGE_HOST": "127.0.0.1", "SURGE_ROLE": "jobs",
                        "SURGE_REDIS_URL": jobs_url, "SURGE_JOB_CHUNK_SIZE": "1",
                        "SURGE_LOG_JSON": "false"}
    with log.open("ab") as sink:
        process = subprocess.Popen([sys.executable, "-m", "online.cli", "serve"], env=env,
                                   stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        assert process.poll() is None, log.read_text()[-2000:]
        time.sleep(0.05)
    process.kill()
    raise TimeoutError("the API did not start")


@pytest.mark.slow
def test_api_killed_mid_submit_then_restarted_makes_one_job(jobs_redis, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "api.log"
    api = start_api(port, jobs_redis.url, log)
    store = redis.Redis.from_url(jobs_redis.url)
    source = tmp_path / "many.txt"
    source.write_text("".join(f"review number {k}: quite good\n" for k in range(4000)))
    client = subprocess.Popen([sys.executable, "-m", "surgeserve_client", "submit",
                               str(source), "--no-progress", "--url", f"http://127.0.0.1:{port}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while store.zcard("surge:jobs:active") == 0:  # the job is stored: its chunks are
            assert time.monotonic() < deadline     # being enqueued, no answer sent yet
            time.sleep(0.002)
        api.send_signal(signal.SIGKILL)
        api.wait(timeout=10)
        queued_at_kill = store.llen("surgeserve.chunks")
        api = start_api(port, jobs_redis.url, log)
        out, err = client.communicate(timeout=120)
    finally:
        for process in (client, api):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    assert client.returncode == 0, err
    assert "retry 1" in err  # the submit's answer was lost to the kill, and retried
    assert queued_at_kill < 4000  # killed before every chunk was enqueued
    jobs = [k for k in store.scan_iter("surge:job:*") if k.count(b":") == 2]
    assert len(jobs) == 1
    assert out.split() == [jobs[0].decode().split(":")[2]]  # the client got that one job


def test_predict_and_predict_many_within_the_bulk_limit(make_app, live_server) -> None:
    texts = [f"{'a warm, funny film' if k % 2 else 'a dull, lifeless mess'} #{k}"
             for k in range(230)]
    app = make_app(bulk_max_items=100)  # no jobs Redis: no /v1/limits, learned from a 422
    with live_server(app) as srv, Client(srv.url) as client:
        one = client.predict("a warm, funny and moving film")
        many = client.predict_many(texts)
        assert client.limits().bulk_max_items == 100 and not client.limits().known

    async def run() -> list[str]:
        async with AsyncClient(srv.url) as aclient:
            return [p.label for p in await aclient.predict_many(texts, concurrency=3)]

    with live_server(make_app(bulk_max_items=100)) as srv:
        labels = asyncio.run(run())
    assert one.label == "POSITIVE" and one.model == "surge-sentiment-minilm"
    assert [p.label for p in many] == ["POSITIVE" if k % 2 else "NEGATIVE" for k in range(230)]
    assert labels == [p.label for p in many]

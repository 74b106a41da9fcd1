"""Bulk-client side: `surgeserve submit FILE [--wait]`, `surgeserve job status|results ID`.

Talks to the jobs API over HTTP only.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm


def read_texts(path: Path, column: str = "text") -> list[str]:
    """Texts from a .txt (one per line), .csv (a column) or .jsonl/.ndjson file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if column not in (reader.fieldnames or []):
                raise SystemExit(f"{path}: no column {column!r} (have {reader.fieldnames})")
            return [row[column] for row in reader if row[column].strip()]
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if suffix in (".jsonl", ".ndjson"):
        items = [json.loads(ln) for ln in lines]
        return [i[column] if isinstance(i, dict) else str(i) for i in items]
    return lines


def submit(url: str, path: Path, *, column: str, wait: bool, out: Path | None,
           key: str | None) -> int:
    """Upload a file as a job; with --wait, follow progress and download the results."""
    texts = read_texts(path, column)
    body = "".join(json.dumps(t) + "\n" for t in texts).encode()
    headers = {"content-type": "application/x-ndjson"} | ({"idempotency-key": key} if key else {})
    with httpx.Client(base_url=url, timeout=60, headers=_auth()) as client:
        response = client.post("/v1/jobs", content=body, headers=headers)
        if response.status_code >= 300:
            print(response.text, file=sys.stderr)
            return 1
        job = response.json()
        print(f"job {job['id']}: {job['total']} texts ({job['status']})", file=sys.stderr)
        if not wait:
            print(job["id"])
            return 0
        job = follow(client, job)
        if job["status"] != "succeeded":
            print(f"job ended {job['status']}: {job.get('error') or ''}", file=sys.stderr)
            return 1
        return download(client, job["id"], out)


def follow(client: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    """A progress bar until the job ends."""
    with tqdm(total=job["total"], unit="text", desc=job["id"][:8], file=sys.stderr) as bar:
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.5)
            job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
            bar.update(job["done"] - bar.n)
    return job


def download(client: httpx.Client, job_id: str, out: Path | None) -> int:
    """Stream every result as NDJSON to `out` (or stdout)."""
    sink = out.open("w", encoding="utf-8") if out else sys.stdout
    try:
        with client.stream("GET", f"/v1/jobs/{job_id}/results",
                           headers={"accept": "application/x-ndjson"}) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                sink.write(line + "\n")
    finally:
        if out:
            sink.close()
    return 0


def status(url: str, job_id: str) -> int:
    """Print a job's status JSON."""
    response = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30, headers=_auth())
    print(json.dumps(response.json(), indent=2))
    return 0 if response.status_code == 200 else 1


def _auth() -> dict[str, str]:
    """The API key from SURGE_API_KEY, when the server wants one."""
    key = os.environ.get("SURGE_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def results(url: str, job_id: str, out: Path | None) -> int:
    """Download a job's results as NDJSON."""
    with httpx.Client(base_url=url, timeout=60, headers=_auth()) as client:
        return download(client, job_id, out)

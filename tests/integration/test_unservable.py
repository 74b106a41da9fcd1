"""A model that cannot be served (none where SURGE_MODEL_DIR points; in the runtime image also a
model without a compiled artifact, tests/deploy/test_runtime_venv.py): `surgeserve serve`
says why in one log line and exits 78 instead of waiting unready forever; /readyz says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient

from common.metrics import Metrics
from common.redis_server import free_port
from common.settings import Settings
from online.app import create_app


def test_serve_without_a_model_exits_78_saying_why(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    env = os.environ | {"PORT": str(free_port()), "SURGE_MODEL_DIR": str(missing),
                        "SURGE_CACHE": "off"}
    done = subprocess.run([sys.executable, "-m", "online.cli", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 78, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    said = [r for r in lines if r["msg"].startswith("cannot serve")]
    assert len(said) == 1 and f"{missing} is not a Hugging Face model directory" in said[0]["msg"]
    assert "Traceback" not in done.stderr


def test_readyz_says_why_the_model_failed(tmp_path: Path) -> None:
    settings = Settings(model_dir=tmp_path / "no-model-here", cache="off",
                        access_log=False)
    with TestClient(create_app(settings, metrics=Metrics())) as client:
        deadline = time.monotonic() + 30
        while (body := client.get("/readyz").json())["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 503
        assert body["status"] == "failed"
        assert body["error"].startswith("model_not_found: ") and "no config.json" in body["error"]

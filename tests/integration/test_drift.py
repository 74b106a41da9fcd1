"""The drift consumer (`surgeserve drift`, a real process) fed by a real predictor's prediction
events: its distance metric crosses the alert rule's threshold when the label mix of the
traffic changes, and stays under it while the mix holds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from cloudevents.core.bindings.http import to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from common.redis_server import free_port
from tests.deploy import checks
from tests.integration.test_observability import sample
from tests.integration.test_payload import predictor, wait_for

WINDOW_S = 2.0
GOOD = [f"A wonderful, moving film number {i}, superb acting." for i in range(20)]
BAD = [f"Dull and far too long: film number {i} is a waste of time." for i in range(20)]


def threshold() -> float:
    """The distance SurgePredictionDrift fires above (read from the rule itself)."""
    rules = yaml.safe_load(checks.RULES.read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"]
               if r.get("alert") == "SurgePredictionDrift"]
    match = re.search(r"surge_drift_distance\)\s*>\s*([0-9.]+)", rule["expr"])
    assert match, rule["expr"]
    return float(match.group(1))


@pytest.fixture
def drift(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "drift.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "online.cli", "drift", "--port", str(port), "--host",
         "127.0.0.1", "--window-s", str(WINDOW_S), "--reference-s", "20", "--min-count", "20"],
        env=os.environ | {"SURGE_LOG_JSON": "false"}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url), timeout=30)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def metrics(url: str, model: str, version: str) -> dict[str, float | None]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    labels = {"model": model, "version": version}
    distance = [line for line in text.splitlines()
                if line.startswith("surge_drift_distance{")]
    return {"current": sample(text, "surge_drift_window_predictions", window="current",
                              **labels),
            "reference": sample(text, "surge_drift_window_predictions", window="reference",
                                **labels),
            "distance": sample(text, "surge_drift_distance", **labels) if distance else None}


def test_drift_crosses_the_alert_threshold_when_the_label_mix_changes(
        live_server, default_bundle, drift) -> None:
    limit = threshold()
    model, version = default_bundle.name, default_bundle.version
    with predictor(live_server, default_bundle, payload_sink=drift + "/") as (client, _):
        def send(texts: list[str]) -> list[str]:
            reply = client.post("/v1/bulk-predict", json={"texts": texts})
            assert reply.status_code == 200
            return [r["label"] for r in reply.json()["results"]]

        def settle(current: int) -> dict[str, float | None]:
            wait_for(lambda: metrics(drift, model, version)["current"] == current)
            return metrics(drift, model, version)

        mixed = send(GOOD) + send(BAD)
        assert set(mixed) == {"POSITIVE", "NEGATIVE"}  # a mix to move away from
        assert settle(40)["distance"] is None  # no reference yet
        time.sleep(WINDOW_S + 0.3)  # those 40 are the reference now
        send(GOOD)
        send(BAD)
        same = settle(40)
        assert same["reference"] == 40 and same["distance"] == 0.0 < limit

        time.sleep(WINDOW_S + 0.3)
        moved = send(BAD) + send(BAD)  # the traffic turns negative
        after = settle(40)
    assert after["reference"] == 80
    share_before = mixed.count("NEGATIVE") / 40
    expected = abs(moved.count("NEGATIVE") / 40 - share_before)  # two labels: TVD = |dp|
    assert after["distance"] == pytest.approx(expected)
    assert after["distance"] is not None and after["distance"] > limit


def test_drift_consumer_refuses_what_is_not_a_prediction_event(drift) -> None:
    event = CloudEvent(attributes={"type": "dev.surgeserve.bulk.requested", "source": "/t",
                                   "id": "1", "datacontenttype": "application/json"},
                       data={"texts": ["x"]})
    message = to_binary(event, JSONFormat())
    wrong = httpx.post(drift + "/", content=message.body, headers=message.headers)
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_input"
    plain = httpx.post(drift + "/", json={"predictions": []})
    assert plain.status_code == 415
    text = httpx.get(f"{drift}/metrics").text
    assert sample(text, "surge_drift_events_total", outcome="rejected") == 2
    assert sample(text, "surge_drift_events_total", outcome="accepted") == 0

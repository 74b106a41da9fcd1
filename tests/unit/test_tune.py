"""Tuning: the cheapest setting that meets the SLO is chosen, and its kustomize patch applies
to the real predictor manifest and still passes the schema checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from loadtest.kpa import KpaConfig, simulate, trace
from loadtest.tune import candidates, current_config, explain, patch, tune
from tests.deploy import checks
from tests.unit.test_kpa import CURVE


def test_current_config_is_read_from_the_manifest() -> None:
    config = current_config()
    doc = yaml.safe_load(checks.ROOT.joinpath("knative/base/predictor.yaml").read_text())
    notes = doc["spec"]["template"]["metadata"]["annotations"]
    assert config.container_concurrency == doc["spec"]["template"]["spec"][
        "containerConcurrency"]
    assert config.target == float(notes["autoscaling.knative.dev/target"])
    assert config.min_scale == int(notes["autoscaling.knative.dev/min-scale"])
    assert config.scale_down_delay_s == 60 and config.stable_window_s == 60


def test_tune_picks_the_cheapest_setting_that_meets_the_slo() -> None:
    load = trace("diurnal", 600, 400, low=20, period_s=600)
    grid = candidates(CURVE, utilizations=(0.9,), min_scales=(0, 2), delays=(0, 120))
    outcome = tune(CURVE, load, cold_start_s=1.0, slo_p99_ms=200, grid=grid, dt=0.25)
    assert outcome["simulated"] == len(grid) and outcome["meeting_slo"] >= 1
    best = outcome["best"]
    assert best["summary"]["p99_ms"] <= 200 and best["summary"]["timed_out"] == 0
    costs = []
    for config in grid:  # brute force: nothing that meets the SLO is cheaper
        out = simulate(config, CURVE, load, 1.0, dt=0.25).summary
        if out["p99_ms"] <= 200 and out["timed_out"] == 0:
            costs.append(out["pod_seconds"])
    assert best["summary"]["pod_seconds"] == min(costs)
    assert best["config"]["max_scale"] >= best["summary"]["max_pods"]
    text = explain(outcome)
    assert "Cheapest" in text and f"{best['summary']['pod_seconds']:g} pod-seconds" in text


def test_no_setting_meets_an_impossible_slo() -> None:
    grid = [KpaConfig(container_concurrency=4, target=4)]
    outcome = tune(CURVE, trace("constant", 60, 50), 1.0, slo_p99_ms=1, grid=grid)
    assert outcome["best"] is None and "None of the 1 settings" in explain(outcome)


def test_the_patch_applies_to_the_predictor(tmp_path: Path) -> None:
    config = {"container_concurrency": 8, "target": 8.0, "utilization": 0.9, "min_scale": 2,
              "max_scale": 12, "initial_scale": 2, "scale_down_delay_s": 120.0}
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(checks.ROOT / "knative" / "base", overlay)  # kustomize: relative
    (overlay / "kustomization.yaml").write_text(f"resources:\n  - {base}\n" + patch(config)
                                                + "\n")
    if checks.kubectl() is None:
        pytest.skip("kubectl not installed")
    docs = checks.kustomize(overlay)
    predictor = next(d for d in docs if d["kind"] == "Service"
                     and d["metadata"]["name"] == "predictor")
    assert checks.validate(predictor) == []
    notes = predictor["spec"]["template"]["metadata"]["annotations"]
    assert predictor["spec"]["template"]["spec"]["containerConcurrency"] == 8
    assert notes["autoscaling.knative.dev/target-utilization-percentage"] == "90"
    assert notes["autoscaling.knative.dev/min-scale"] == "2"
    assert notes["autoscaling.knative.dev/max-scale"] == "12"
    assert notes["autoscaling.knative.dev/scale-down-delay"] == "120s"


def test_target_and_container_concurrency_vary_independently() -> None:
    grid = candidates(CURVE, utilizations=(0.7,), min_scales=(0,), delays=(0,))
    pairs = {(c.container_concurrency, c.target) for c in grid}
    assert (4, 2.0) in pairs and (16, 1.0) in pairs  # a soft target under the hard limit
    assert {t for cc, t in pairs if cc == 0} == {1, 2, 4, 8, 16}  # no hard limit at all
    assert all(cc == 0 or t <= cc for cc, t in pairs)  # Knative caps the target at cc
    # On this curve only a soft target under the hard limit meets the SLO: pods scale at
    # 1 x 70% in flight while each may still take 2 (a batch per thread) in a burst; with
    # target = containerConcurrency (the old grid) nothing does.
    load = trace("diurnal", 600, 400, low=20, period_s=600)
    free = tune(CURVE, load, 1.0, slo_p99_ms=200, grid=grid)["best"]
    tied = tune(CURVE, load, 1.0, slo_p99_ms=200, grid=[
        c for c in grid if c.target == c.container_concurrency])["best"]
    assert free["config"]["target"] < free["config"]["container_concurrency"]
    assert free["summary"]["p99_ms"] <= 200
    assert tied is None or free["summary"]["pod_seconds"] < tied["summary"]["pod_seconds"]

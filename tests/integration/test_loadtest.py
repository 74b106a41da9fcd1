"""Short real load runs against a live instance: the generator's counts agree with the
server's own metrics, open loop keeps its rate, the CLI writes its JSON, CSV and plots."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from common.corpus import snippets
from loadtest.__main__ import main
from loadtest.run import RunConfig, closed_loop, constant, paced, run
from loadtest.stats import summary
from loadtest.sweep import sweep
from loadtest.traffic import HitRateTexts, Mix, ZipfTexts, parse_stages
from loadtest.validate import validate
from tests.integration.test_api import metric


@pytest.fixture
def instance(make_app, live_server):  # type: ignore[no-untyped-def]
    with live_server(make_app()) as srv:
        yield srv.url


def test_closed_loop_zipf_mix_matches_the_server_counts(instance: str) -> None:
    result = run(RunConfig(url=instance, stages=parse_stages("1s:4,2s:4"),
                           texts=ZipfTexts(snippets(), 1.2), mix=Mix(0.2, 8), progress=False))
    out = summary(result.samples, result.seconds)
    assert out["errors"] == {} and out["requests"] > 50
    assert 0.2 < out["cache_hit_ratio"] < 1  # Zipf repeats popular texts: the LRU answers
    with httpx.Client(base_url=instance) as client:
        for route in ("/v1/predict", "/v1/bulk-predict"):
            sent = sum(1 for s in result.samples if s.route == route)
            assert sent > 0
            assert metric(client, "surge_requests_total", route=route, status="200") == sent
    bulk_items = sum(s.items for s in result.samples if s.route == "/v1/bulk-predict")
    assert bulk_items == 8 * sum(1 for s in result.samples if s.route == "/v1/bulk-predict")


def test_open_loop_keeps_its_arrival_rate(instance: str) -> None:
    result = run(RunConfig(url=instance, stages=list(constant(40, 3)), mode="open",
                           texts=HitRateTexts(snippets(), 0.5), progress=False))
    # Poisson arrivals: 120 expected, sd ~11
    assert 75 <= len(result.samples) <= 165
    assert all(s.status == 200 for s in result.samples)
    starts = [s.start for s in result.samples]
    assert max(starts) < 3 and min(starts) < 0.5


def test_the_benchmarks_loops_send_each_text_once_and_keep_their_schedule(
        instance: str) -> None:
    """bench_online's closed_loop and paced are runs of the same engine: a closed loop over a
    fixed list sends each text once and ends when the last is answered; paced sends
    len // connections per connection on a fixed schedule, at the offered rate."""
    texts = snippets(103)
    with httpx.Client(base_url=instance) as client:
        closed = asyncio.run(closed_loop(instance, texts, 8))
        assert closed["requests"] == 103 and closed["statuses"] == {200: 103}
        assert metric(client, "surge_requests_total", route="/v1/predict",
                      status="200") == 103
        # rps is rounded to 0.1 and seconds to 0.001: allow exactly what the rounding can move
        secs = closed["seconds"]
        assert closed["rps"] == pytest.approx(
            103 / secs, abs=0.05 + 103 * 0.0005 / (secs * (secs - 0.0005)) + 1e-9)
        assert 0 < closed["p50_ms"] <= closed["p99_ms"]
        out = asyncio.run(paced(instance, texts, 4, 40.0))
        assert out["requests"] == 100 and out["statuses"] == {200: 100}  # 103 // 4 * 4
        assert metric(client, "surge_requests_total", route="/v1/predict",
                      status="200") == 203
    # 25 sends per connection, 0.1 s apart, the last due at 2.4-2.475 s
    assert out["offered_rps"] == 40.0 and 2.4 <= out["seconds"] < 3.5


def test_sweep_and_cli_write_their_files(instance: str, tmp_path: Path) -> None:
    out = sweep(instance, HitRateTexts(snippets(), 0.0), levels=(1, 4), seconds=1.5,
                warmup=0.5, slo_p99_ms=10_000, progress=False)
    assert [p["concurrency"] for p in out["curve"]] == [1, 4]
    assert out["knee"] in (1, 4) and out["max_concurrency_under_slo"] == 4
    assert all(p["rps"] > 0 and p["p99_ms"] >= p["p50_ms"] for p in out["curve"])

    assert main(["run", "--url", instance, "--stages", "1s:2,2s:2", "--out", str(tmp_path),
                 "--name", "short", "--bulk-fraction", "0.1"]) == 0
    for name in ("short.json", "short.csv", "short-latency.png", "short-cache.png"):
        assert (tmp_path / name).stat().st_size > 0
    report = json.loads((tmp_path / "short.json").read_text())
    assert report["summary"]["ok"] == report["summary"]["requests"] > 0
    assert len(report["series"]) in (3, 4)
    assert (tmp_path / "short.csv").read_text().startswith("second,requests,ok,errors")


@pytest.mark.slow
def test_validate_marks_a_comparison_the_server_could_not_keep_up_with(
        instance: str, tmp_path: Path) -> None:
    texts = HitRateTexts(snippets(), 0.0)
    measured = sweep(instance, texts, levels=(1, 2), seconds=1.5, warmup=0.5, progress=False)
    honest = tmp_path / "curve.json"
    honest.write_text(json.dumps(measured))
    out = validate(instance, texts, honest, loads=(0.3,), seconds=2)
    (row,) = out["loads"]
    assert row["measured"]["rps"] > 0 and row["error"]["p99"] is not None
    assert out["capacity_after_rps"] > 0 and "capacity_drift" in out
    # A curve claiming ten times the real capacity: 30% of it is three times what the
    # server can do, so the measured run falls short and the row is not trusted.
    inflated = tmp_path / "inflated.json"
    inflated.write_text(json.dumps({"curve": [p | {"rps": p["rps"] * 10}
                                              for p in measured["curve"]]}))
    out = validate(instance, texts, inflated, loads=(0.3,), seconds=2)
    assert out["loads"][0]["trusted"] is False

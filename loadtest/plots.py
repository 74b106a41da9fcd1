"""Files a load run leaves: JSON (config, summary, per-second series), CSV (the series) and
PNG plots (latency percentiles and throughput over time; the cache-hit ratio warming up)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def write_run(out: Path, name: str, config: dict[str, Any], summary: dict[str, Any],
              series: list[dict[str, Any]]) -> list[Path]:
    """<name>.json, <name>.csv, <name>-latency.png, <name>-cache.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.csv"]
    paths[0].write_text(json.dumps({"config": config, "summary": summary, "series": series},
                                   indent=2) + "\n")
    with paths[1].open("w", newline="") as f:
        if series:
            writer = csv.DictWriter(f, fieldnames=list(series[0]))
            writer.writeheader()
            writer.writerows(series)
    paths += [_latency_plot(out / f"{name}-latency.png", series, name),
              _cache_plot(out / f"{name}-cache.png", series, name)]
    return paths


def _latency_plot(path: Path, series: list[dict[str, Any]], title: str) -> Path:
    seconds = [r["second"] for r in series]
    fig, left = plt.subplots(figsize=(9, 4.5))
    left.plot(seconds, [r["p50_ms"] for r in series], label="p50")
    left.plot(seconds, [r["p99_ms"] for r in series], label="p99")
    left.set_xlabel("second of the run")
    left.set_ylabel("latency (ms)")
    right = left.twinx()
    right.plot(seconds, [r["ok"] for r in series], color="grey", alpha=0.5, label="ok req/s")
    right.bar(seconds, [r["errors"] for r in series], color="red", alpha=0.5, label="errors/s")
    right.set_ylabel("requests/s")
    _legend(left, right)
    left.set_title(f"{title}: latency and throughput")
    return _save(fig, path)


def _cache_plot(path: Path, series: list[dict[str, Any]], title: str) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4))
    seconds = [r["second"] for r in series]
    ax.plot(seconds, [_nan(r["hit_ratio"]) for r in series], alpha=0.5, label="per second")
    ax.plot(seconds, [_nan(r["hit_ratio_so_far"]) for r in series], label="so far")
    ax.set_ylim(0, 1)
    ax.set_xlabel("second of the run")
    ax.set_ylabel("cache-hit ratio")
    ax.legend(loc="lower right")
    ax.set_title(f"{title}: cache warming up")
    return _save(fig, path)


def curve_plot(path: Path, curve: Sequence[dict[str, Any]], knee: int | None,
               slo_ms: float | None, best: int | None) -> Path:
    """Capacity curve of a sweep: throughput and p50/p99 against concurrency."""
    levels = [p["concurrency"] for p in curve]
    fig, left = plt.subplots(figsize=(9, 4.5))
    left.plot(levels, [p["rps"] for p in curve], marker="o", color="black", label="req/s")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent requests (one instance)")
    left.set_ylabel("requests/s")
    right = left.twinx()
    right.plot(levels, [p["p50_ms"] for p in curve], marker=".", label="p50 ms")
    right.plot(levels, [p["p99_ms"] for p in curve], marker=".", label="p99 ms")
    right.set_ylabel("latency (ms)")
    if slo_ms:
        right.axhline(slo_ms, color="red", linestyle=":", label=f"SLO p99 {slo_ms:g} ms")
    if knee:
        left.axvline(knee, color="green", linestyle="--", label=f"knee {knee}")
    if best:
        left.axvline(best, color="red", linestyle="--", alpha=0.5, label=f"max under SLO {best}")
    _legend(left, right)
    left.set_title("capacity curve")
    return _save(fig, path)


def simulation_plot(path: Path, series: Sequence[dict[str, Any]], title: str) -> Path:
    """A KPA simulation: offered load, pods desired and ready, predicted p99."""
    t = [r["t"] for r in series]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(t, [r["desired"] for r in series], label="desired pods")
    top.plot(t, [r["ready"] for r in series], label="ready pods")
    load = top.twinx()
    load.plot(t, [r["rate"] for r in series], color="grey", alpha=0.4, label="offered req/s")
    load.set_ylabel("requests/s")
    top.set_ylabel("pods")
    _legend(top, load)
    bottom.plot(t, [r["p99_ms"] for r in series], color="red", label="predicted p99 (ms)")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper right")
    top.set_title(title)
    return _save(fig, path)


def _legend(left: Any, right: Any) -> None:
    handles, labels = left.get_legend_handles_labels()
    more, names = right.get_legend_handles_labels()
    left.legend(handles + more, labels + names, loc="upper left", fontsize="small")


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

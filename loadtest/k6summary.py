"""A k6 run as a measured capacity curve: the end-of-test summary of `loadtest/k6/script.js`
in sweep mode (MODE=sweep: one level of virtual users after another, each tagged `level`),
written by `k6 run --summary-export FILE` (or a handleSummary that dumps k6's data object),
becomes the curve `tune`, `simulate` and `validate` read, so a curve measured in the cluster,
through the activator, can feed the tuner."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_LEVEL = re.compile(r"^http_req_duration\{level:(\d+)\}$")


def is_k6_summary(data: dict[str, Any]) -> bool:
    """Whether a JSON document is a k6 summary (rather than a `loadtest sweep` result)."""
    return "metrics" in data and "curve" not in data


def _values(metric: dict[str, Any]) -> dict[str, float]:
    # --summary-export writes the figures flat; handleSummary's data nests them in "values".
    return dict(metric.get("values", metric))


def curve_from_k6(data: dict[str, Any]) -> dict[str, Any]:
    """{"curve": [points], "source": "k6"} with the points of a `loadtest sweep` result.

    Throughput per level comes from Little's law for a closed loop with no think time:
    requests/s = virtual users / mean iteration time (the summary's rates are over the whole
    run, not the level)."""
    metrics = data["metrics"]
    points: list[dict[str, Any]] = []
    for name in metrics:
        found = _LEVEL.match(name)
        if not found:
            continue
        level = int(found.group(1))
        latency = _values(metrics[name])
        iteration = _values(metrics.get(f"iteration_duration{{level:{level}}}", {}))
        requests = _values(metrics.get(f"http_reqs{{level:{level}}}", {})).get("count", 0)
        failed = _values(metrics.get(f"http_req_failed{{level:{level}}}", {}))
        # k6's Rate summary: "value" (the ratio) and, with handleSummary, "rate".
        failed_ratio = float(failed.get("value", failed.get("rate", 0.0)))
        mean_iteration_s = float(iteration.get("avg", latency["avg"])) / 1000
        if not requests or mean_iteration_s <= 0:
            continue
        points.append({"concurrency": level, "rps": round(level / mean_iteration_s, 2),
                       "p50_ms": round(float(latency["med"]), 2),
                       "p90_ms": round(float(latency["p(90)"]), 2),
                       "p99_ms": round(float(latency["p(99)"]), 2),
                       "requests": int(requests),
                       "errors": {"failed": round(failed_ratio * requests)} if failed_ratio
                       else {}})
    if not points:
        raise ValueError("no per-level figures in this k6 summary: run loadtest/k6/script.js "
                         "with MODE=sweep (and p(99) in the summary trend stats)")
    points.sort(key=lambda p: p["concurrency"])
    return {"curve": points, "source": "k6",
            "capacity_rps": max(p["rps"] for p in points)}


def read_curve(path: Path) -> dict[str, Any]:
    """A curve file: a `loadtest sweep` result, or a k6 sweep summary converted."""
    data = dict(json.loads(Path(path).read_text()))
    return curve_from_k6(data) if is_k6_summary(data) else data

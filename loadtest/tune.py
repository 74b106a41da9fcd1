"""Tuning: simulate a grid of Knative settings (soft target and containerConcurrency varied
independently) on the measured capacity curve for a traffic trace, keep those that meet the
p99 SLO with nothing timed out, and recommend the cheapest (fewest pod-seconds); print it as a
kustomize patch for the `predictor` Service."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from loadtest.curve import Curve
from loadtest.kpa import KpaConfig, SimResult, Trace, simulate
from loadtest.traffic import seconds_of

PREDICTOR = Path(__file__).resolve().parents[1] / "knative" / "base" / "predictor.yaml"
ANNOTATION = "autoscaling.knative.dev/"


@dataclass(frozen=True)
class Choice:
    config: KpaConfig
    result: SimResult

    @property
    def cost(self) -> float:
        """Pod-seconds: what the cluster bills."""
        return float(self.result.summary["pod_seconds"])


def candidates(curve: Curve, utilizations: Sequence[float] = (0.5, 0.7, 0.9),
               min_scales: Sequence[int] = (0, 1, 2, 4),
               delays: Sequence[float] = (0, 60, 300)) -> list[KpaConfig]:
    """The grid: the soft target and containerConcurrency varied independently, times
    utilization, min-scale and scale-down delay.

    Knative scales on the soft target (target x utilization in flight per pod) and advises
    containerConcurrency only as a hard limit: it caps each pod's in-flight requests (and so
    its micro-batches) and makes the activator queue the rest. So the target takes every
    measured level, and containerConcurrency every measured level >= 2 at or above it, or 0
    (no limit)."""
    levels = sorted({int(c) for c in curve.c})
    limits = [c for c in levels if c >= 2] + [0]
    pairs = [(cc, t) for cc in limits for t in levels if cc == 0 or t <= cc]
    return [KpaConfig(container_concurrency=cc, target=float(t), utilization=u,
                      min_scale=m, initial_scale=max(1, m), scale_down_delay_s=d)
            for (cc, t), u, m, d in itertools.product(pairs, utilizations, min_scales, delays)]


def current_config(path: Path = PREDICTOR) -> KpaConfig:
    """The settings in the predictor manifest, as the simulator's config."""
    doc = yaml.safe_load(path.read_text())
    template = doc["spec"]["template"]
    notes = template["metadata"]["annotations"]

    def get(key: str, default: str) -> str:
        return str(notes.get(ANNOTATION + key, default))

    return KpaConfig(
        container_concurrency=int(template["spec"].get("containerConcurrency", 0)),
        target=float(get("target", "0")) or None,
        utilization=float(get("target-utilization-percentage", "70")) / 100,
        min_scale=int(get("min-scale", "0")), max_scale=int(get("max-scale", "0")),
        initial_scale=int(get("initial-scale", "1")),
        scale_down_delay_s=seconds_of(get("scale-down-delay", "0s")),
        retention_s=seconds_of(get("scale-to-zero-pod-retention-period", "0s")),
        stable_window_s=seconds_of(get("window", "60s")))


def tune(curve: Curve, load: Trace, cold_start_s: float, slo_p99_ms: float,
         grid: Sequence[KpaConfig] | None = None, dt: float = 0.25,
         workers: int = 2) -> dict[str, Any]:
    """Every candidate simulated; the cheapest that meets the SLO, the runner-up, and the
    current manifest's outcome for comparison."""
    results = [Choice(c, simulate(c, curve, load, cold_start_s, dt=dt, workers=workers))
               for c in (grid if grid is not None else candidates(curve))]
    good = sorted((r for r in results if _meets(r, slo_p99_ms)),
                  key=lambda r: (r.cost, r.result.summary["cold_start_waiters"]))
    current = current_config()
    now = Choice(current, simulate(current, curve, load, cold_start_s, dt=dt, workers=workers))
    best = good[0] if good else None
    if best is not None:  # a ceiling with headroom over the busiest moment simulated
        ceiling = max(2, math.ceil(best.result.summary["max_pods"] * 1.5))
        best = Choice(replace(best.config, max_scale=ceiling), best.result)
    return {"trace": load.name, "seconds": load.seconds, "slo_p99_ms": slo_p99_ms,
            "simulated": len(results), "meeting_slo": len(good),
            "best": _view(best), "runner_up": _view(good[1] if len(good) > 1 else None),
            "current": _view(now)}


def _meets(choice: Choice, slo_p99_ms: float) -> bool:
    s = choice.result.summary
    return bool(s["p99_ms"] <= slo_p99_ms and s["timed_out"] == 0)


def _view(choice: Choice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    return {"config": asdict(choice.config), "summary": choice.result.summary}


def patch(config: dict[str, Any]) -> str:
    """A kustomize patch (JSON 6902) for the predictor Service, as used in the overlays."""
    def annotation(key: str, value: str) -> str:
        return (f"      - op: replace\n"
                f"        path: /spec/template/metadata/annotations/autoscaling.knative.dev~1"
                f"{key}\n        value: \"{value}\"\n")

    ops = [annotation("target", f"{config['target']:g}"),
           annotation("target-utilization-percentage", f"{config['utilization'] * 100:g}"),
           annotation("min-scale", str(config["min_scale"])),
           annotation("max-scale", str(config["max_scale"])),
           annotation("initial-scale", str(config["initial_scale"])),
           annotation("scale-down-delay", f"{config['scale_down_delay_s']:g}s"),
           "      - op: replace\n        path: /spec/template/spec/containerConcurrency\n"
           f"        value: {config['container_concurrency']}\n"]
    return ("patches:\n  - target:\n      group: serving.knative.dev\n      kind: Service\n"
            "      name: predictor\n    patch: |-\n" + "".join(ops)).rstrip("\n")


def explain(outcome: dict[str, Any]) -> str:
    """Why this choice, in a few lines."""
    best, now = outcome["best"], outcome["current"]
    if best is None:
        return (f"None of the {outcome['simulated']} settings meets p99 <= "
                f"{outcome['slo_p99_ms']:g} ms on the {outcome['trace']} trace: add capacity "
                "(bigger pods) or relax the SLO.")
    b, n = best["summary"], now["summary"]
    c = best["config"]
    per_pod = c["target"] * c["utilization"]
    limit = c["container_concurrency"] or "0 (no hard limit)"
    lines = [
        f"Simulated {outcome['simulated']} settings on the {outcome['trace']} trace "
        f"({outcome['seconds']:g} s); {outcome['meeting_slo']} meet p99 <= "
        f"{outcome['slo_p99_ms']:g} ms with nothing timed out.",
        f"Cheapest: target {c['target']:g} x {c['utilization']:.0%} = {per_pod:g} in flight "
        f"per pod (what Knative scales on), containerConcurrency {limit} (the hard limit; "
        "below SURGE_MAX_BATCH_SIZE it also caps each pod's batches), "
        f"min-scale {c['min_scale']}, scale-down-delay "
        f"{c['scale_down_delay_s']:g} s: {b['pod_seconds']:g} pod-seconds, "
        f"p99 {b['p99_ms']:g} ms,"
        f" {b['cold_start_waiters']:g} requests waited on a cold start, at most "
        f"{b['max_pods']} pods (max-scale {c['max_scale']} leaves 50% headroom).",
        f"The manifest now: {n['pod_seconds']:g} pod-seconds, p99 {n['p99_ms']:g} ms, "
        f"{n['timed_out']:g} timed out ({_ratio(b['pod_seconds'], n['pod_seconds'])}).",
    ]
    if outcome["runner_up"]:
        r = outcome["runner_up"]
        lines.append(f"Runner-up: target {r['config']['target']:g}, cc "
                     f"{r['config']['container_concurrency']}, utilization "
                     f"{r['config']['utilization']:.0%}, min-scale {r['config']['min_scale']}, "
                     f"delay {r['config']['scale_down_delay_s']:g} s: "
                     f"{r['summary']['pod_seconds']:g} pod-seconds, p99 "
                     f"{r['summary']['p99_ms']:g} ms.")
    return "\n".join(lines)


def _ratio(new: float, old: float) -> str:
    if not old:
        return "no comparison"
    return f"the recommendation costs {new / old:.0%} of that"

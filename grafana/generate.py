"""Writes the Grafana dashboards in grafana/dashboards/ (`python grafana/generate.py`).

The JSON files are committed (Grafana provisions them as they are); this script is their
source, so every panel is a few readable lines. A test checks the committed files equal this
script's output, that every metric they name is exported by the running services or is a
Knative autoscaler metric (listed in EXTERNAL_METRICS), and that every query parses with
promtool.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DASHBOARDS = HERE / "dashboards"
RULES = HERE / "prometheus" / "rules" / "surgeserve.yml"
# The Prometheus Operator's resources (kube-prometheus-stack): the same rules and dashboards.
OPERATOR = HERE / "kube-prometheus-stack"
# The chart's Prometheus selects PodMonitors and PrometheusRules by its release label (change
# it to your release name, or set the chart's *SelectorNilUsesHelmValues to false); its
# Grafana sidecar loads ConfigMaps labelled grafana_dashboard.
OPERATOR_LABELS = {"app.kubernetes.io/part-of": "surgeserve", "release": "kube-prometheus-stack"}
NS = 'namespace=~"$namespace"'
RATE = "$__rate_interval"

# Knative's autoscaler metrics, which surgeserve does not export. Serving 1.19 moved from
# OpenCensus (`autoscaler_*`, labels namespace_name / service_name) to OpenTelemetry
# (`kn_revision_*` as Prometheus names them, labels k8s_namespace_name / kn_service_name);
# every panel asks for both, `new or old`, so one dashboard serves 1.17 to current releases.
KNATIVE = {  # key: (1.19+ name, 1.17-1.18 name)
    "desired": ("kn_revision_pods_desired", "autoscaler_desired_pods"),
    "pods": ("kn_revision_pods_count", "autoscaler_actual_pods"),
    "not_ready": ("kn_revision_pods_not_ready_count", "autoscaler_not_ready_pods"),
    "target": ("kn_revision_concurrency_target", "autoscaler_target_concurrency_per_pod"),
    "stable": ("kn_revision_concurrency_stable", "autoscaler_stable_request_concurrency"),
    "panic_window": ("kn_revision_concurrency_panic", "autoscaler_panic_request_concurrency"),
    "panic": ("kn_revision_panic_mode", "autoscaler_panic_mode"),
}
EXTERNAL_METRICS = {
    name: f"Knative autoscaler ({'1.19+' if i == 0 else 'up to 1.18'}): {key}"
    for key, names in KNATIVE.items() for i, name in enumerate(names)}


def _kn(agg: str, key: str, service: str) -> tuple[str, str]:
    new, old = KNATIVE[key]
    return (f'{agg}({new}{{k8s_namespace_name=~"$namespace", kn_service_name="{service}"}})',
            f'{agg}({old}{{namespace_name=~"$namespace", service_name="{service}"}})')


def kn(agg: str, key: str, service: str = "predictor") -> str:
    """One Knative autoscaler series for a Knative Service, under either naming."""
    return " or ".join(_kn(agg, key, service))


def kn_ready(service: str = "predictor") -> str:
    """Pods allocated minus pods not ready, under either naming."""
    (pods, old_pods), (not_ready, old_not_ready) = (_kn("sum", "pods", service),
                                                    _kn("sum", "not_ready", service))
    return f"({pods} - {not_ready}) or ({old_pods} - {old_not_ready})"


def quantiles(metric: str, selector: str, by: str = "", qs: tuple[float, ...] = (
        0.5, 0.9, 0.95, 0.99)) -> list[dict[str, str]]:
    """One target per quantile of a histogram."""
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [{"expr": f"histogram_quantile({q}, sum by ({group}) "
                     f"(rate({metric}_bucket{{{selector}}}[{RATE}])))",
             "legendFormat": f"p{round(q * 100)}{suffix}"} for q in qs]


def panel(title: str, targets: list[dict[str, str]], unit: str, description: str = "",
          kind: str = "timeseries") -> dict[str, Any]:
    """A panel (grid position is filled in by `layout`)."""
    return {"type": kind, "title": title, "description": description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [t | {"refId": chr(ord("A") + i),
                             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for i, t in enumerate(targets)]}


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two panels per row, 8 units high."""
    for i, p in enumerate(panels):
        p["id"] = i + 1
        p["gridPos"] = {"x": (i % 2) * 12, "y": (i // 2) * 8, "w": 12, "h": 8}
    return panels


def dashboard(uid: str, title: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    """A dashboard with a data source and a namespace picker."""
    return {
        "uid": uid, "title": title, "tags": ["surgeserve"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "label": "Data source"},
            {"name": "namespace", "type": "query", "label": "Namespace",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(surge_model_info, namespace)", "refId": "ns"},
             "definition": "label_values(surge_model_info, namespace)",
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2},
        ]},
        "panels": layout(panels),
    }


def online() -> dict[str, Any]:
    """The predictor: traffic, latency, cache, batching, autoscaling, drift."""
    pred = f'{NS}, component="predictor"'
    return dashboard("surgeserve-online", "surgeserve / online predictor", [
        *_traffic_panels(pred), *_batching_panels(pred), *_autoscaling_panels(pred),
        *_health_panels(pred), *prediction_events(),
    ])


def _traffic_panels(pred: str) -> list[dict[str, Any]]:
    """Requests, latency, errors and the cache."""
    return [
        panel("Requests by route and status", [
            {"expr": f"sum by (route, status) (rate(surge_requests_total{{{pred}}}[{RATE}]))",
             "legendFormat": "{{route}} {{status}}"}], "reqps"),
        panel("/v1/predict latency", quantiles(
            "surge_request_duration_seconds", f'{pred}, route="/v1/predict"'), "s",
            "Server-side, from the first byte in to the last byte out."),
        panel("Error ratio", [
            {"expr": f'sum(rate(surge_requests_total{{{pred}, status=~"5.."}}[{RATE}])) / '
                     f"sum(rate(surge_requests_total{{{pred}}}[{RATE}]))",
             "legendFormat": "5xx"},
            {"expr": f'sum(rate(surge_requests_total{{{pred}, status=~"4.."}}[{RATE}])) / '
                     f"sum(rate(surge_requests_total{{{pred}}}[{RATE}]))",
             "legendFormat": "4xx"}], "percentunit"),
        panel("Cache hit ratio by tier", [
            {"expr": f'sum by (tier) (rate(surge_cache_lookups_total{{{pred}, result="hit"}}'
                     f"[{RATE}])) / sum by (tier) (rate(surge_cache_lookups_total{{{pred}}}"
                     f"[{RATE}]))", "legendFormat": "{{tier}}"},
            {"expr": f'sum(rate(surge_cache_lookups_total{{{pred}, result="hit"}}[{RATE}])) / '
                     f'sum(rate(surge_cache_lookups_total{{{pred}, tier="lru"}}[{RATE}]))',
             "legendFormat": "overall"}], "percentunit",
            "The LRU sees every lookup, Redis only the LRU's misses."),
    ]


def _batching_panels(pred: str) -> list[dict[str, Any]]:
    """Each model's batcher: batch size, queue wait, forward pass."""
    return [
        panel("Batch size by model", [
            *quantiles("surge_batch_size", pred, by="model", qs=(0.5, 0.9)),
            {"expr": f"sum by (model) (rate(surge_batch_size_sum{{{pred}}}[{RATE}])) / "
                     f"sum by (model) (rate(surge_batch_size_count{{{pred}}}[{RATE}]))",
             "legendFormat": "mean {{model}}"}], "short", "Each model has its own batcher."),
        panel("Queue wait by model", quantiles("surge_queue_wait_seconds", pred, by="model",
                                               qs=(0.5, 0.99)),
              "s", "Time an item waited for a model thread."),
        panel("Forward pass by model", quantiles("surge_forward_seconds", pred, by="model",
                                                 qs=(0.5, 0.99)),
              "s", "Tokenise + forward + softmax, per batch."),
    ]


def _autoscaling_panels(pred: str) -> list[dict[str, Any]]:
    """Concurrency and pods, as surgeserve and Knative's autoscaler see them."""
    return [
        panel("In flight per pod vs the Knative target", [
            {"expr": f"avg(surge_requests_in_flight{{{pred}}})",
             "legendFormat": "in flight per pod (surgeserve)"},
            {"expr": kn("max", "stable"), "legendFormat": "observed, stable window (autoscaler)"},
            {"expr": kn("max", "target"), "legendFormat": "target per pod"}], "short",
            "Knative 1.19+ (kn_revision_*) or 1.17-1.18 (autoscaler_*), whichever is scraped."),
        panel("Pods: desired vs ready", [
            {"expr": kn("sum", "desired"), "legendFormat": "desired"},
            {"expr": kn_ready(),
             "legendFormat": "ready (autoscaler)"},
            {"expr": f"count(surge_ready{{{pred}}} == 1)",
             "legendFormat": "ready (surgeserve /readyz)"},
            {"expr": kn("max", "panic"), "legendFormat": "panic"}],
            "short"),
    ]


def _health_panels(pred: str) -> list[dict[str, Any]]:
    """Load shed, labels, the cache Redis, model versions, connections."""
    return [
        panel("Rejected (overload, deadline) and queued", [
            {"expr": f"sum by (model, reason) (rate(surge_rejected_total{{{pred}}}[{RATE}]))",
             "legendFormat": "{{model}} {{reason}}"},
            {"expr": f"sum by (model) (surge_queue_depth{{{pred}}})",
             "legendFormat": "queued {{model}}"}], "short"),
        panel("Predictions by label", [
            {"expr": f"sum by (model, label) (rate(surge_predictions_total{{{pred}}}[{RATE}]))",
             "legendFormat": "{{model}} {{label}}"}], "short",
            "A shift in the label mix is the first sign of drift."),
        panel("Cache Redis", [
            {"expr": f"min(surge_cache_up{{{pred}}})", "legendFormat": "up (min over pods)"},
            {"expr": f"sum by (operation) (rate(surge_cache_errors_total{{{pred}}}[{RATE}]))",
             "legendFormat": "errors {{operation}}"}], "short"),
        panel("Model versions and load time", [
            {"expr": f"count by (version, k_revision) (surge_model_info{{{pred}}})",
             "legendFormat": "{{version}} {{k_revision}}"},
            {"expr": f"max(surge_model_load_seconds{{{pred}}})",
             "legendFormat": "load seconds (max)"}], "short"),
        panel("Connections: open and closed by the server", [
            {"expr": f"sum(surge_connections_open{{{pred}}})", "legendFormat": "open"},
            {"expr": f"sum by (reason) (rate(surge_connections_closed_total{{{pred}}}"
                     f"[{RATE}]))", "legendFormat": "closed {{reason}}"}], "short",
            "Timeouts (headers, body, idle) and the connection cap (evicted, refused): "
            "slow or idle clients shed before they exhaust file descriptors."),
    ]


def prediction_events() -> list[dict[str, Any]]:
    """Prediction events (SURGE_PAYLOAD_SINK) and the drift consumer (`surgeserve drift`)."""
    return [
        panel("Label drift by model version", [
            {"expr": f"max by (model, version) (surge_drift_distance{{{NS}}})",
             "legendFormat": "distance {{model}} {{version}}"},
            {"expr": f'max by (model, version, label) '
                     f'(surge_drift_share{{{NS}, window="current"}})',
             "legendFormat": "share now {{label}} {{model}} {{version}}"},
            {"expr": f'max by (model, version, label) '
                     f'(surge_drift_share{{{NS}, window="reference"}})',
             "legendFormat": "share before {{label}} {{model}} {{version}}"}], "percentunit",
            "Total variation distance between the label mix of the last window and the "
            "reference window before it; SurgePredictionDrift fires above 0.15."),
        panel("Prediction events", [
            {"expr": f"sum by (component, outcome) (rate(surge_payload_events_total{{{NS}}}"
                     f"[{RATE}]))", "legendFormat": "{{component}} {{outcome}}"},
            {"expr": f"sum by (outcome) (rate(surge_drift_events_total{{{NS}}}[{RATE}]))",
             "legendFormat": "drift consumer: events {{outcome}}"},
            {"expr": f"sum by (window) (surge_drift_window_predictions{{{NS}}})",
             "legendFormat": "drift consumer: predictions in the {{window}} window"}], "short",
            "Predictions sent to the payload sink per second by outcome (anything but sent is "
            "lost: the sink refused, timed out, or the queue was full)."),
    ]


def jobs() -> dict[str, Any]:
    """Bulk jobs: throughput, queue, durations, failures, dead letters."""
    worker = f'{NS}, component="worker"'
    api = f'{NS}, component="jobs"'
    return dashboard("surgeserve-jobs", "surgeserve / bulk jobs", [
        panel("Job throughput (items/s)", [
            {"expr": f"sum by (source) (rate(surge_job_items_total{{{worker}}}[{RATE}]))",
             "legendFormat": "{{source}}"}], "short"),
        panel("Queue depth (chunks waiting)", [
            {"expr": f"max(surge_job_queue_length{{{api}}})", "legendFormat": "chunks"}],
            "short", "The list KEDA scales the workers on."),
        panel("Job duration", quantiles("surge_job_duration_seconds", worker,
                                        qs=(0.5, 0.9, 0.99)), "s",
              "Submission to the last chunk."),
        panel("Chunk time", quantiles("surge_job_chunk_seconds", worker, qs=(0.5, 0.9, 0.99)),
              "s"),
        panel("Chunks by outcome", [
            {"expr": f"sum by (outcome) (rate(surge_job_chunks_total{{{worker}}}[{RATE}]))",
             "legendFormat": "{{outcome}}"}], "short"),
        panel("Jobs submitted and finished", [
            {"expr": f"sum by (source) (rate(surge_jobs_submitted_total{{{api}}}[{RATE}]))",
             "legendFormat": "submitted {{source}}"},
            {"expr": f"sum by (status) (rate(surge_jobs_finished_total{{{worker}}}[{RATE}]))",
             "legendFormat": "finished {{status}}"}], "short"),
        panel("Workers", [
            {"expr": f"count(count by (pod) (surge_job_chunk_seconds_count{{{worker}}}))",
             "legendFormat": "worker pods"}], "short"),
        panel("Errors and dead letters", [
            {"expr": f'sum by (route, status) (rate(surge_requests_total{{{api}, status=~"5.."}}'
                     f"[{RATE}]))", "legendFormat": "{{route}} {{status}}"},
            {"expr": f"sum by (type) (increase(surge_events_dead_lettered_total{{{api}}}[1h]))",
             "legendFormat": "dead-lettered {{type}} (1h)"}], "short"),
    ])


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{d['uid']}.json": json.dumps(d, indent=2) + "\n" for d in (online(), jobs())}


class _Literal(yaml.SafeDumper):
    """Multi-line strings (PromQL) as readable | blocks."""


_Literal.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def render_operator() -> dict[str, str]:
    """File name -> YAML of the PrometheusRule (the dashboards' ConfigMaps are generated by
    kustomize from the JSON files: grafana/kustomization.yaml)."""
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "surgeserve", "labels": OPERATOR_LABELS},
            "spec": yaml.safe_load(RULES.read_text())}
    return {"prometheusrule.yaml": (
        "# Generated by grafana/generate.py from grafana/prometheus/rules/surgeserve.yml: edit "
        "that, then run it.\n" + yaml.dump(rule, Dumper=_Literal, sort_keys=False, width=100))}


def main() -> int:
    DASHBOARDS.mkdir(exist_ok=True)
    for folder, files in ((DASHBOARDS, render()), (OPERATOR, render_operator())):
        for name, text in files.items():
            (folder / name).write_text(text)
            print(folder / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

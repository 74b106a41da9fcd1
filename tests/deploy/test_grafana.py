"""grafana/: dashboards are what generate.py writes, every query parses (promtool), the rules
pass promtool's checks and unit tests, and the metric-name checks catch a missing metric.
(That every named metric is exported by the running services is checked against real
processes in tests/integration/test_observability.py.)"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import checks


def generated() -> Any:
    """grafana/generate.py as a module (grafana/ is not a package)."""
    spec = importlib.util.spec_from_file_location("grafana_generate",
                                                  checks.GRAFANA / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> list[dict[str, Any]]:
    paths = sorted((checks.GRAFANA / "dashboards").glob("*.json"))
    return [json.loads(p.read_text()) for p in paths]


def needs_promtool() -> str:
    binary = checks.promtool()
    if binary is None:
        pytest.skip("promtool not installed (Debian's prometheus package; make install "
                    "unpacks it into .venv where apt-get works)")
    return binary


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120)


def test_committed_dashboards_are_the_generated_ones() -> None:
    rendered = generated().render()
    on_disk = {p.name: p.read_text() for p in (checks.GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == rendered, "run: python grafana/generate.py"


def test_dashboards_cover_what_operators_watch() -> None:
    titles = " | ".join(p["title"].lower() for d in dashboards() for p in d["panels"])
    for topic in ("requests by route and status", "latency", "cache hit ratio", "batch size",
                  "queue wait", "forward pass", "knative target", "desired vs ready",
                  "job throughput", "queue depth", "job duration", "error",
                  "predictions by label"):
        assert topic in titles, topic
    for d in dashboards():
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))
        assert all(t["datasource"]["uid"] == "${datasource}"
                   for p in d["panels"] for t in p["targets"])
    online = next(d for d in dashboards() if d["uid"] == "surgeserve-online")
    latency = next(p for p in online["panels"] if "latency" in p["title"])
    assert [t["legendFormat"] for t in latency["targets"]] == ["p50", "p90", "p95", "p99"]


def test_provisioning_points_at_the_dashboards() -> None:
    provider = yaml.safe_load((checks.GRAFANA / "provisioning/dashboards/surgeserve.yaml")
                              .read_text())["providers"][0]
    assert provider["type"] == "file"
    source = yaml.safe_load((checks.GRAFANA / "provisioning/datasources/prometheus.yaml")
                            .read_text())["datasources"][0]
    assert source["type"] == "prometheus"


def test_promql_lexer_finds_metric_names() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, route) (rate(surge_request_duration_seconds_'
            'bucket{route="/v1/predict", status=~"5.."}[$__rate_interval]))) / ignoring(x) '
            'sum(rate(foo_total[5m] offset 1h)) > 0.25 and on (namespace) bar unless baz{a="b"}'
            ' or vector(0)')
    assert checks.promql_metrics(expr) == {"surge_request_duration_seconds_bucket", "foo_total",
                                           "bar", "baz"}
    assert checks.promql_metrics('count(surge_ready{x="1e3 rate(fake)"} == 1)') == {"surge_ready"}


def test_a_dashboard_naming_a_missing_metric_is_caught() -> None:
    broken = dashboards()[0]
    broken["panels"][0]["targets"][0]["expr"] = "sum(rate(surge_requestz_total[5m]))"
    known = {"surge_requests_total"}
    problems = checks.unknown_metrics(checks.dashboard_queries(broken), known)
    assert any(p.endswith(": surge_requestz_total") for p in problems), problems
    ok = checks.unknown_metrics([("t", "sum(rate(surge_requests_total[5m]))")], known)
    assert ok == []


def test_rules_pass_promtool_checks_and_unit_tests() -> None:
    promtool = needs_promtool()
    checked = run(promtool, "check", "rules", str(checks.RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run(promtool, "test", "rules",
                 str(checks.GRAFANA / "prometheus/tests/surgeserve_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Dashboard queries go through promtool's parser as recording rules (Grafana's
    variables replaced by values a real dashboard would send)."""
    promtool = needs_promtool()
    rules = []
    for i, d in enumerate(dashboards()):
        for j, (_, expr) in enumerate(checks.dashboard_queries(d)):
            concrete = (expr.replace("$__rate_interval", "1m")
                        .replace("$namespace", "surgeserve"))
            rules.append({"record": f"dashboard_{i}_{j}", "expr": concrete})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    checked = run(promtool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    path.write_text(yaml.safe_dump({"groups": [{"name": "broken", "rules": [
        {"record": "x", "expr": "sum(rate(surge_requests_total[5m])"}]}]}))
    assert run(promtool, "check", "rules", str(path)).returncode != 0  # the check can fail


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes service discovery, so the check runs on a
    copy with static targets in its place; the relabelling and rule files are checked as is."""
    promtool = needs_promtool()
    config = yaml.safe_load((checks.GRAFANA / "prometheus/prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": ["127.0.0.1:8080"]}]
    config["rule_files"] = [str(checks.RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    checked = run(promtool, "check", "config", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    labels = {r.get("target_label") for j in config["scrape_configs"]
              for r in j.get("relabel_configs", [])}
    used = {m for d in dashboards() for _, e in checks.dashboard_queries(d)
            for m in re.findall(r"(\w+)=~?\"", e)}
    # Labels the dashboards select on come from relabelling or from the metrics themselves.
    assert {"namespace", "component"} <= labels
    assert {"namespace", "component"} <= used


# --- kube-prometheus-stack (grafana/kube-prometheus-stack) ---------------------------------

OPERATOR = checks.GRAFANA / "kube-prometheus-stack"
# Knative names the user container's port in every revision's pod this way, whatever the
# Service calls it (knative.dev/serving pkg/apis/serving/v1: UserPortName).
KNATIVE_USER_PORT = "user-port"


def operator_docs() -> list[dict[str, Any]]:
    return checks.kustomize(checks.GRAFANA)


def test_committed_operator_files_are_the_generated_ones() -> None:
    rendered = generated().render_operator()
    on_disk = {name: (OPERATOR / name).read_text() for name in rendered}
    assert on_disk == rendered, "run: python grafana/generate.py"


def test_operator_resources_pass_their_schema() -> None:
    docs = operator_docs()
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "ConfigMap", "PodMonitor",
                                               "PodMonitor", "PodMonitor", "PrometheusRule"]
    assert [p for d in docs for p in checks.validate(d)] == []
    monitor = next(d for d in docs if d["metadata"]["name"] == "surgeserve-api")
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"].pop("podMetricsEndpoints")
    assert any("spec.podMetricEndpoints" in p for p in checks.validate(monitor))
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    rule["spec"]["groups"][1]["rules"][0]["annotation"] = {}
    assert any("rules[0].annotation" in p for p in checks.validate(rule))


def test_prometheus_rule_and_dashboard_maps_carry_the_plain_files() -> None:
    docs = operator_docs()
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(checks.RULES.read_text())
    maps = {k: v for d in docs if d["kind"] == "ConfigMap" for k, v in d["data"].items()}
    assert maps == {p.name: p.read_text() for p in (checks.GRAFANA / "dashboards").glob("*.json")}
    assert all(d["metadata"]["labels"]["grafana_dashboard"] == "1"
               for d in docs if d["kind"] == "ConfigMap")


def test_every_alert_has_a_severity_and_a_runbook_page() -> None:
    alerts = [r for g in yaml.safe_load(checks.RULES.read_text())["groups"]
              for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 8
    for alert in alerts:
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        url = alert["annotations"]["runbook_url"]
        assert url.endswith(f"/docs/runbooks/{alert['alert']}.md"), url
        page = (checks.ROOT / "docs" / "runbooks" / f"{alert['alert']}.md").read_text()
        for part in ("What it means", "Confirm", "What to do"):
            assert part in page, (alert["alert"], part)


def test_pod_monitors_select_the_pods_and_their_ports() -> None:
    monitors = {d["metadata"]["name"]: d for d in operator_docs() if d["kind"] == "PodMonitor"}
    workloads = [d for d in checks.kustomize(checks.ROOT / "knative" / "overlays" / "dev")
                 if d["kind"] in ("Service", "Deployment") and checks.containers(d)]

    def scraped(monitor: dict[str, Any]) -> dict[str, set[str]]:
        """Workload name -> the monitor's ports its pods have."""
        selector = monitor["spec"]["selector"]
        found = {}
        for doc in workloads:
            labels = doc["spec"]["template"]["metadata"].get("labels", {})
            if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
                continue
            if not all(labels.get(e["key"]) in e["values"]
                       for e in selector.get("matchExpressions", [])):
                continue
            ports = {p.get("name") for c in checks.containers(doc) for p in c.get("ports", [])}
            if doc["kind"] == "Service":  # a revision's pod: Knative renames the port
                ports = {KNATIVE_USER_PORT}
            found[doc["metadata"]["name"]] = {
                e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} & ports
        return found

    assert scraped(monitors["surgeserve-api"]) == {"predictor": {KNATIVE_USER_PORT},
                                                   "jobs": {KNATIVE_USER_PORT}}
    assert scraped(monitors["surgeserve-worker"]) == {"worker": {"metrics"}}
    for name in ("surgeserve-api", "surgeserve-worker"):  # the label the dashboards select on
        targets = {r["targetLabel"] for e in monitors[name]["spec"]["podMetricsEndpoints"]
                   for r in e["relabelings"]}
        assert "component" in targets

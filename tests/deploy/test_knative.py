"""knative/: both overlays build, every resource passes its real schema, and the manifests
agree with the code (routes, settings, port, event type, queue name, time limits)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Match

from batch import events
from common.settings import Settings
from online.app import create_app
from tests.deploy import checks

KNATIVE = checks.ROOT / "knative"
OVERLAYS = ["dev", "prod"]
OWN_MODEL = ["own-model", "own-model-image"]  # dev + knative/components/own-model(-image)
IMAGE = "ghcr.io/surgeserve/surgeserve"


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: checks.kustomize(KNATIVE / "overlays" / name)
            for name in OVERLAYS + OWN_MODEL} | {"base": checks.kustomize(KNATIVE / "base")}


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def annotation(ksvc: dict[str, Any], key: str) -> str:
    return str(ksvc["spec"]["template"]["metadata"]["annotations"][
        f"autoscaling.knative.dev/{key}"])


def serves(role: str, method: str, path: str) -> bool:
    """Whether the app in this role routes `method path` to a handler (Starlette's own
    matching, so included routers and path parameters count as the server would)."""
    app = create_app(Settings(role=role, redis_url="redis://127.0.0.1:1/0"))  # type: ignore[arg-type]
    scope = {"type": "http", "path": path, "method": method, "root_path": ""}
    return any(route.matches(scope)[0] == Match.FULL for route in app.routes)


def surge_containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for d in docs for c in checks.containers(d) if c["image"].startswith(IMAGE)]


def setting_env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        if choices:
            names |= {str(c) for c in choices}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"SURGE_{name.upper()}")
    return names


@pytest.mark.parametrize("target", ["base", *OVERLAYS, *OWN_MODEL])
def test_every_resource_passes_its_schema(built, target: str) -> None:
    docs = built[target]
    kinds = {d["kind"] for d in docs}
    assert {"Service", "Broker", "Trigger", "SinkBinding", "Deployment", "StatefulSet",
            "ScaledObject", "TriggerAuthentication", "ConfigMap"} <= kinds
    problems = [p for doc in docs for p in checks.validate(doc)]
    assert problems == []


def test_a_broken_manifest_is_caught(built) -> None:
    predictor = copy.deepcopy(find(built["dev"], "Service", "predictor"))
    spec = predictor["spec"]["template"]["spec"]
    spec["containerConcurency"] = 10  # misspelled: cloudcoil alone would drop it silently
    spec["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    predictor["spec"]["template"]["metadata"]["annotations"][
        "autoscaling.knative.dev/minScale"] = "1"  # the old spelling, ignored by Knative now
    problems = checks.validate(predictor)
    assert any("spec.template.spec.containerConcurency" in p for p in problems), problems
    assert any("readinessProbe.httpGet.pathh" in p for p in problems), problems
    assert any("autoscaling.knative.dev/minScale" in p for p in problems), problems

    wrong_type = copy.deepcopy(find(built["dev"], "Service", "predictor"))
    wrong_type["spec"]["template"]["spec"]["containerConcurrency"] = "lots"
    assert checks.validate(wrong_type)

    trigger = copy.deepcopy(find(built["dev"], "Trigger", "bulk-requested"))
    trigger["spec"]["delivery"]["retries"] = 3
    assert any("spec.delivery.retries" in p for p in checks.validate(trigger))

    worker = copy.deepcopy(find(built["dev"], "Deployment", "worker"))
    worker["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    assert any("terminationGracePeriod" in p for p in checks.validate(worker))


def test_probe_paths_are_real_routes(built) -> None:
    for name, role in (("predictor", "all"), ("jobs", "jobs")):
        for container in checks.containers(find(built["dev"], "Service", name)):
            for probe in ("readinessProbe", "livenessProbe"):
                path = container[probe]["httpGet"]["path"]
                assert serves(role, "GET", path), f"{name} {probe} {path} is not a route"
    assert not serves("all", "GET", "/readyzz")  # the check can fail


def test_trigger_delivers_the_accepted_type_to_real_routes(built) -> None:
    trigger = find(built["dev"], "Trigger", "bulk-requested")
    assert trigger["spec"]["filter"]["attributes"]["type"] == events.BULK_REQUESTED
    for target in (trigger["spec"]["subscriber"], trigger["spec"]["delivery"]["deadLetterSink"]):
        assert target["ref"]["name"] == "jobs"
        assert serves("jobs", "POST", target["uri"]), target["uri"]
    assert not serves("jobs", "POST", "/v1/predict")  # the jobs role has no model
    find(built["dev"], "Service", "jobs")  # the subscriber exists in the same build


def test_env_names_and_values_are_real_settings(built, monkeypatch: pytest.MonkeyPatch) -> None:
    known = setting_env_names()
    docs = built["dev"]
    config = find(docs, "ConfigMap", "surgeserve-config")["data"]
    env: dict[str, str] = dict(config)
    for container in surge_containers(docs):
        for var in container.get("env", []):
            assert var["name"] in known, f"{var['name']} is not a setting"
            if "value" in var:
                env[var["name"]] = var["value"]
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] == "surgeserve-config"
    assert set(config) <= known, set(config) - known
    for name, value in env.items():  # the values parse too (types, bounds)
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.job_queue == config["SURGE_JOB_QUEUE"]


def test_secret_references_resolve_in_dev(built) -> None:
    docs = built["dev"]
    secrets = {d["metadata"]["name"]: set(d.get("data", {})) for d in docs
               if d["kind"] == "Secret"}
    refs = [var["valueFrom"]["secretKeyRef"] for d in docs for c in checks.containers(d)
            for var in c.get("env", []) if "secretKeyRef" in var.get("valueFrom", {})]
    refs += [{"name": t["name"], "key": t["key"]}
             for t in find(docs, "TriggerAuthentication", "redis-jobs-auth")["spec"][
                 "secretTargetRef"]]
    assert refs
    for ref in refs:
        assert ref["key"] in secrets.get(ref["name"], set()), ref
    assert not [d for d in built["prod"] if d["kind"] == "Secret"], "prod secrets are external"


def test_ports_agree_with_the_code(built) -> None:
    docs = built["dev"]
    settings = Settings()
    config = find(docs, "ConfigMap", "surgeserve-config")["data"]
    for name in ("predictor", "jobs"):
        ksvc = find(docs, "Service", name)
        (container,) = checks.containers(ksvc)
        assert [p["containerPort"] for p in container["ports"]] == [settings.port]
        meta = ksvc["spec"]["template"]["metadata"]["annotations"]
        assert meta["prometheus.io/port"] == str(settings.port)
        assert meta["prometheus.io/path"] == "/metrics"
    worker = find(docs, "Deployment", "worker")
    (container,) = checks.containers(worker)
    port = int(config["SURGE_WORKER_METRICS_PORT"])
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert worker["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert container["args"] == ["worker"]


def test_worker_scaling_and_shutdown_match_the_queue(built) -> None:
    for overlay in OVERLAYS:
        docs = built[overlay]
        config = find(docs, "ConfigMap", "surgeserve-config")["data"]
        scaled = find(docs, "ScaledObject", "worker")
        assert scaled["spec"]["scaleTargetRef"]["name"] == "worker"
        assert scaled["spec"]["minReplicaCount"] == 0
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == config["SURGE_JOB_QUEUE"]
        namespace = find(docs, "Namespace", docs[0]["metadata"]["name"])["metadata"]["name"]
        host = trigger["metadata"]["address"].split(":")[0]
        assert host == f"redis-jobs.{namespace}.svc.cluster.local"
        find(docs, "Service", "redis-jobs")
        worker = find(docs, "Deployment", "worker")
        grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > int(config["SURGE_CHUNK_TIME_LIMIT_S"])
        assert int(config["SURGE_CHUNK_TIME_LIMIT_S"]) < int(config["SURGE_VISIBILITY_TIMEOUT_S"])
        binding = find(docs, "SinkBinding", "worker-events")
        assert binding["spec"]["subject"]["name"] == "worker"
        assert binding["spec"]["sink"]["ref"]["kind"] == "Broker"


def test_redis_roles_are_configured_for_their_jobs(built) -> None:
    docs = built["dev"]
    cache = " ".join(checks.containers(find(docs, "Deployment", "redis-cache"))[0]["args"])
    assert "--maxmemory-policy allkeys-lru" in cache and "--appendonly no" in cache
    jobs_store = find(docs, "StatefulSet", "redis-jobs")
    args = " ".join(checks.containers(jobs_store)[0]["args"])
    assert "--maxmemory-policy noeviction" in args and "--appendonly yes" in args
    assert jobs_store["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_autoscaling_numbers_are_consistent(built) -> None:
    settings = Settings()
    for overlay in OVERLAYS:
        docs = built[overlay]
        for name in ("predictor", "jobs"):
            ksvc = find(docs, "Service", name)
            spec = ksvc["spec"]["template"]["spec"]
            assert annotation(ksvc, "class") == "kpa.autoscaling.knative.dev"
            assert annotation(ksvc, "metric") == "concurrency"
            assert float(annotation(ksvc, "target")) <= spec["containerConcurrency"]
            low, high = int(annotation(ksvc, "min-scale")), int(annotation(ksvc, "max-scale"))
            assert 0 <= low <= int(annotation(ksvc, "initial-scale")) <= high
            assert spec["timeoutSeconds"] > settings.request_timeout_s
    predictor = find(built["dev"], "Service", "predictor")
    assert annotation(predictor, "min-scale") == "0"  # dev scales to zero


def test_prod_overlay_pins_the_image_and_stays_warm(built) -> None:
    prod, dev = built["prod"], built["dev"]
    assert surge_containers(prod)
    assert all(c["image"].startswith(f"{IMAGE}@sha256:") for c in surge_containers(prod))
    assert all(":dev" in c["image"] for c in surge_containers(dev))
    assert {d["metadata"].get("namespace") for d in prod if d["kind"] != "Namespace"} == {
        "surgeserve"}
    assert int(annotation(find(prod, "Service", "predictor"), "min-scale")) >= 1

    def cpu(docs: list[dict[str, Any]]) -> int:
        (c,) = checks.containers(find(docs, "Service", "predictor"))
        return int(str(c["resources"]["limits"]["cpu"]).removesuffix("m"))

    assert cpu(prod) > cpu(dev)


def test_kubectl_reports_a_broken_kustomization(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(RuntimeError, match=r"missing\.yaml"):
        checks.kustomize(tmp_path)


def model_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])
            if e["name"] in ("SURGE_MODEL_DIR", "SURGE_MODEL_HOME")}


def mounted(container: dict[str, Any], path: str) -> str:
    """The volume holding `path` in this container (the longest mount path above it)."""
    best = max((m for m in container.get("volumeMounts", [])
                if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")),
               key=lambda m: len(m["mountPath"]))
    return str(best["name"])


@pytest.mark.parametrize("overlay", OWN_MODEL)
def test_own_model_init_compiles_where_the_server_looks(built, overlay: str) -> None:
    docs = built[overlay]
    for kind, name in (("Service", "predictor"), ("Deployment", "worker")):
        spec = find(docs, kind, name)["spec"]["template"]["spec"]
        (init,) = spec["initContainers"]
        (main,) = spec["containers"]
        # The build tools' image (the runtime image has no torch), at the server's tag.
        assert main["image"].startswith(f"{IMAGE}:")
        assert init["image"] == main["image"].replace(f"{IMAGE}:", f"{IMAGE}-toolchain:", 1)
        env = model_env(main)
        assert env.keys() == {"SURGE_MODEL_DIR", "SURGE_MODEL_HOME"}
        assert model_env(init) == env  # compiled where the server will look for it
        script = init["args"][0]
        assert init["command"] == ["sh", "-c"] and "surgeserve model compile" in script
        # The script names the paths only through the env (the integration test relies on it).
        assert not any(path in script for path in env.values())
        volumes = {v["name"]: v for v in spec["volumes"]}
        for path in env.values():
            assert mounted(init, path) == mounted(main, path)
            assert mounted(init, path) in volumes
        model_volume = volumes[mounted(main, env["SURGE_MODEL_DIR"])]
        compiled = volumes[mounted(main, env["SURGE_MODEL_HOME"])]
        assert compiled["persistentVolumeClaim"]["claimName"] == "surgeserve-compiled"
        if overlay == "own-model-image":
            assert model_volume["image"]["reference"]
        else:
            assert model_volume["persistentVolumeClaim"]["readOnly"] is True
        mounts = {m["name"]: m for m in init["volumeMounts"] + main["volumeMounts"]}
        assert mounts[model_volume["name"]].get("readOnly") is True
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    expected = {"surgeserve-compiled"} | ({"surgeserve-model"} if overlay == "own-model"
                                          else set())
    assert claims == expected
    find(docs, "Service", "jobs")  # the jobs ingress loads no model: untouched
    assert "initContainers" not in find(docs, "Service", "jobs")["spec"]["template"]["spec"]


def test_a_broken_image_volume_is_caught(built) -> None:
    predictor = copy.deepcopy(find(built["own-model-image"], "Service", "predictor"))
    assert checks.validate(predictor) == []
    predictor["spec"]["template"]["spec"]["volumes"][0]["image"]["referense"] = "x"
    assert any("image volume" in p for p in checks.validate(predictor))
    init = copy.deepcopy(find(built["own-model"], "Service", "predictor"))
    init["spec"]["template"]["spec"]["initContainers"][0]["volumeMount"] = []
    assert any("initContainers.0" in p and "volumeMount" in p for p in checks.validate(init))


def test_the_dev_tag_and_the_version_tag_are_what_make_image_builds(built) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not installed")
    done = subprocess.run([make, "-n", "image"], cwd=checks.ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    tags = set(re.findall(r"-t (\S+)", done.stdout))
    version = tomllib.loads((checks.ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert tags == {f"{IMAGE}:dev", f"{IMAGE}:{version}"}
    assert {c["image"] for c in surge_containers(built["dev"])} == {f"{IMAGE}:dev"}
    assert {c["image"] for c in surge_containers(built["base"])} == {f"{IMAGE}:{version}"}
def test_prediction_events_reach_the_drift_consumer(built) -> None:
    """knative/components/prediction-events (dev includes it, prod does not): the predictor's
    SinkBinding, its payload settings, the Trigger for the prediction type, and the drift
    consumer's command, probe and scrape port as the code has them."""
    from starlette.testclient import TestClient

    from common.drift import LabelWindows
    from common.payload import EVENT_TYPE
    from online.cli import build_parser
    from online.drift import create_drift_app

    docs = built["dev"]
    binding = find(docs, "SinkBinding", "predictor-events")
    assert binding["spec"]["subject"]["kind"] == "Service"
    assert binding["spec"]["subject"]["name"] == "predictor"
    assert binding["spec"]["sink"]["ref"] == {"apiVersion": "eventing.knative.dev/v1",
                                              "kind": "Broker", "name": "surgeserve"}
    for kind, name in (("Service", "predictor"), ("Deployment", "worker")):
        (container,) = checks.containers(find(docs, kind, name))
        env = {v["name"]: v.get("value") for v in container["env"]}
        settings = Settings(payload_sink=env["SURGE_PAYLOAD_SINK"],  # type: ignore[call-arg]
                            K_SINK="http://broker-ingress/ns/surgeserve")
        assert settings.payload_url == "http://broker-ingress/ns/surgeserve", name

    trigger = find(docs, "Trigger", "predictions-to-drift")
    assert trigger["spec"]["filter"]["attributes"]["type"] == EVENT_TYPE
    assert trigger["spec"]["broker"] == find(docs, "Broker", "surgeserve")["metadata"]["name"]
    assert trigger["spec"]["subscriber"]["ref"]["name"] == "drift"
    drift = find(docs, "Service", "drift")
    (container,) = checks.containers(drift)
    args = build_parser().parse_args(container["args"])
    assert args.command == "drift" and args.port == container["ports"][0]["containerPort"]
    meta = drift["spec"]["template"]["metadata"]["annotations"]
    assert meta["prometheus.io/port"] == str(args.port)
    assert annotation(drift, "min-scale") == annotation(drift, "max-scale") == "1"
    with TestClient(create_drift_app(LabelWindows())) as client:
        probe = container["readinessProbe"]["httpGet"]["path"]
        assert client.get(probe).status_code == 200
        assert client.post(trigger["spec"]["subscriber"]["uri"]).status_code == 415  # a sink
        assert client.get(meta["prometheus.io/path"]).status_code == 200
    assert not [d for d in built["prod"] if d["metadata"]["name"] == "drift"]  # opt-in

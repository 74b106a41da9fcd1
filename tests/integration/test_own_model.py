"""Serve your own model (knative/components/own-model): exactly the init container's command
from the rendered overlay compiles a small Hugging Face classifier into the shared volume, a
second pod's init finds it and skips, and the server started the way the predictor starts
answers from the compiled artifact (the transformers path unused)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.processes import server
from tests.deploy import checks

pytestmark = pytest.mark.slow


def init_container(overlay: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The predictor's init container and the main container's env, as rendered."""
    docs = checks.kustomize(checks.ROOT / "knative" / "overlays" / overlay)
    predictor = next(d for d in docs if d["kind"] == "Service"
                     and d["metadata"]["name"] == "predictor")
    spec = predictor["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    main_env = {e["name"]: e["value"] for e in spec["containers"][0]["env"] if "value" in e}
    return init, main_env


def local(path: str, mounts: dict[str, Path]) -> str:
    """A path inside the pod, as the matching directory on this machine."""
    for inside, here in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if path == inside or path.startswith(inside.rstrip("/") + "/"):
            return str(here / os.path.relpath(path, inside))
    raise AssertionError(f"{path} is on no volume")


def run_init(init: dict[str, Any], mounts: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    env = {e["name"]: local(e["value"], mounts) if e["value"].startswith("/") else e["value"]
           for e in init["env"]}
    # `surgeserve` is the console script of this environment (it has the build tools, as the
    # toolchain image the init container runs has).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run([*init["command"], *init["args"]], env=os.environ | env | {
        "PATH": path}, capture_output=True, text=True, timeout=600)


def test_init_command_compiles_once_and_the_server_uses_it(tiny_model_dir: Path,
                                                           tmp_path: Path) -> None:
    init, main_env = init_container("own-model")
    model = tmp_path / "model-volume"
    shutil.copytree(tiny_model_dir, model)
    compiled = tmp_path / "compiled-volume"
    volumes = {"model": model, "compiled": compiled}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in init["volumeMounts"]}

    first = run_init(init, mounts)
    assert first.returncode == 0, first.stdout + first.stderr
    artifacts = [p for p in (compiled / "compiled").iterdir() if not p.name.startswith(".")]
    assert len(artifacts) == 1, artifacts

    started = time.monotonic()  # a second pod (replica, cold start): no compile again
    second = run_init(init, mounts)
    assert second.returncode == 0, second.stderr
    assert "compiled already" in second.stdout
    assert time.monotonic() - started < 10

    env = {"SURGE_MODEL_DIR": local(main_env["SURGE_MODEL_DIR"], mounts),
           "SURGE_MODEL_HOME": local(main_env["SURGE_MODEL_HOME"], mounts),
           "SURGE_CACHE": "off"}
    with server(env, tmp_path / "server.log") as srv:
        info = httpx.get(f"{srv.url}/v1/models", timeout=10).json()["models"][0]
        assert info["backend"] != "transformers", info
        assert info["labels"] == ["anger", "joy", "calm"]
        reply = httpx.post(f"{srv.url}/v1/predict", json={"text": "a calm and joyful day"},
                           timeout=10)
        assert reply.status_code == 200, reply.text
        assert reply.json()["label"] in ("anger", "joy", "calm")

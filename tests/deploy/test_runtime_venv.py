"""The runtime image without Docker (no engine runs here): its venv built from the same pins,
wheels and pruning the Dockerfile uses, then a real `surgeserve serve` from it over the model
laid out as the image ships it (no weights, no OpenVINO blobs, read-only). It runs as this
user: the interpreter here lives under /root, which the image's uid cannot reach (what a
non-root server needs to read is checked in tests/unit: test_training, test_compiled).
Figures go to test-artifacts/runtime-venv.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.compiled import compiled_dir
from common.identity import read_manifest
from common.redis_server import free_port
from tests.deploy.checks import ROOT
from tests.deploy.runtime_venv import (
    BUILD_ONLY,
    LOCK,
    MAX_VENV_MB,
    Venv,
    build,
    clean_env,
    gzipped_mb,
    image_layout,
    tree_bytes,
)

ARTIFACTS = Path(os.environ.get("SURGE_TEST_ARTIFACTS", "test-artifacts"))
# Declared by a pinned package, left out of the lock on purpose (requirements/lock.py).
KNOWN_UNMET = "tokenizers 0.23.3 requires huggingface-hub, which is not installed."


def test_the_lock_is_the_runtime_closure_of_the_tested_venv() -> None:
    """requirements/runtime.txt is what `make lock` writes from this venv (make install
    constrains .venv to it, so the suite runs on the versions the image ships)."""
    done = subprocess.run([sys.executable, str(ROOT / "requirements" / "lock.py")],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == (ROOT / LOCK).read_text(), "the pins are stale: run `make lock`"
    names = {line.split("==")[0].lower() for line in done.stdout.splitlines()
             if line and not line.startswith("#")}
    assert names.isdisjoint(BUILD_ONLY)
    assert {"onnxruntime", "openvino", "tokenizers", "uvicorn", "celery"} <= names


@pytest.fixture(scope="module")
def runtime() -> Iterator[tuple[Venv, Path]]:
    """The runtime venv, in a directory the image's user can read (pytest's own are 0700)."""
    where = Path(tempfile.mkdtemp(prefix="surgeserve-runtime-"))
    where.chmod(0o755)
    try:
        yield build(where), where
    finally:
        for path in [where, *where.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(where)


def report(**figures: Any) -> None:
    """Add figures to test-artifacts/runtime-venv.json (and print them: pytest -s)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    file = ARTIFACTS / "runtime-venv.json"
    data = json.loads(file.read_text()) if file.is_file() else {}
    file.write_text(json.dumps(data | figures, indent=2) + "\n")
    print(f"runtime venv: {figures}")


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first run downloads ~100 MB of wheels
def test_the_runtime_venv_has_no_build_tools_and_fits(runtime: tuple[Venv, Path]) -> None:
    venv, _ = runtime
    found = subprocess.run(
        [str(venv.python), "-c", "import importlib.util as u, sys; print([m for m in "
         "sys.argv[1:] if u.find_spec(m)])", *BUILD_ONLY],
        capture_output=True, text=True, env=clean_env(), timeout=60, check=True)
    assert found.stdout.strip() == "[]"
    assert venv.pip_check == KNOWN_UNMET  # every other declared dependency is pinned
    # Every module serving or a worker can import, imports without the build set (the local
    # stack's Prometheus helper needs PyYAML, a dev dependency: `surgeserve up` only).
    imports = subprocess.run([str(venv.python), "-c", IMPORT_ALL], capture_output=True,
                             text=True, env=clean_env(), timeout=120, cwd=venv.prefix)
    assert imports.returncode == 0, imports.stderr
    assert json.loads(imports.stdout) == {"failed": ["online.localprom"], "heavy": []}
    size = venv.size_mb()
    report(venv_mb=round(size, 1), venv_unpruned_mb=round(venv.unpruned_mb, 1))
    assert size <= MAX_VENV_MB, f"the runtime venv is {size:.1f} MB"


IMPORT_ALL = """
import importlib, json, pkgutil, sys
failed = []
for pkg in ("common", "online", "batch"):
    for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + "."):
        try:
            importlib.import_module(info.name)
        except ImportError:
            failed.append(info.name)
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"failed": failed, "heavy": heavy}))
"""


def served_artifact(model_dir: Path) -> Path:
    return compiled_dir(str(read_manifest(model_dir)["version"]))


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first run downloads ~100 MB of wheels
def test_the_image_layout_serves_the_default_model(runtime: tuple[Venv, Path],
                                                    default_model_dir: Path) -> None:
    """exec -> first 200, the way a scaled-from-zero pod starts: read-only model without its
    weights, no OpenVINO blobs (compiled at start, and not kept: nowhere to write them)."""
    venv, where = runtime
    model, home = image_layout(default_model_dir, served_artifact(default_model_dir),
                               where / "image")
    # What a fresh node pulls besides the base image: the venv and the model, compressed.
    report(model_mb=round(tree_bytes(where / "image") / 1e6, 1),
           venv_and_model_gzip_mb=round(gzipped_mb(venv.prefix, where / "image"), 1))
    artifact = home / "compiled" / served_artifact(default_model_dir).name
    engines = subprocess.run([str(venv.python), "-c", ENGINES, str(artifact)],
                             capture_output=True, text=True, timeout=300, env=clean_env(HOME="/"))
    assert engines.returncode == 0, engines.stderr
    assert json.loads(engines.stdout)["agree"] is True  # pruned OpenVINO still reads the ONNX
    port = free_port()
    env = clean_env(PORT=str(port), HOME="/", SURGE_MODEL_DIR=str(model),
                    SURGE_MODEL_HOME=str(home), SURGE_CACHE="off", SURGE_ACCESS_LOG="false")
    log = (where / "serve.log").open("w")
    started = time.monotonic()
    server = subprocess.Popen([str(venv.surgeserve), "serve"], env=env, cwd=where, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        reply = first_prediction(f"http://127.0.0.1:{port}", server, where / "serve.log")
        cold_start = time.monotonic() - started
        assert reply["label"] == "POSITIVE"
        info = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["models"][0]
        assert info["version"] == read_manifest(default_model_dir)["version"]
        assert info["backend"] in ("onnx", "openvino")
        report(cold_start_exec_to_first_200_s=round(cold_start, 2),
               cold_start_engine=f"{info['backend']} {info['engine']['precision']}")
    finally:
        server.terminate()
        code = server.wait(timeout=60)
        log.close()
    assert code == 0, (where / "serve.log").read_text()[-3000:]
    assert "openvino-cache" not in {p.name for p in artifact.iterdir() if p.is_dir()}


ENGINES = """
import json, sys
from pathlib import Path
from common.compiled import read_meta
from common.engines import Spec, open_engine
from common.engines.openvino import precisions
artifact = Path(sys.argv[1])
texts = ["a wonderful, moving film", "a dull and lifeless mess"]
out = {}
for spec in [Spec("onnx")] + [Spec("openvino", p) for p in precisions()]:
    engine = open_engine(spec, artifact, read_meta(artifact), 128)
    out[spec.label] = engine.logits(engine.encode(texts)).argmax(-1).tolist()
print(json.dumps({"labels": out, "agree": len({json.dumps(v) for v in out.values()}) == 1}))
"""


def first_prediction(url: str, server: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """Poll /v1/predict until it answers 200 (a client's view of a cold start)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            reply = httpx.post(f"{url}/v1/predict", json={"text": "a wonderful, moving film"},
                               timeout=5)
            if reply.status_code == 200:
                return dict(reply.json())
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"no 200 within 120 s: {log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first run downloads ~100 MB of wheels
def test_without_an_artifact_the_runtime_refuses_to_start(runtime: tuple[Venv, Path],
                                                          default_model_dir: Path) -> None:
    """No torch, no transformers fallback: one clear line, exit 78, /readyz says why."""
    venv, where = runtime
    home = where / "empty-home"
    home.mkdir()
    env = clean_env(PORT=str(free_port()), SURGE_MODEL_DIR=str(default_model_dir),
                    SURGE_MODEL_HOME=str(home), SURGE_CACHE="off")
    done = subprocess.run([str(venv.surgeserve), "serve"], env=env, cwd=where,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 78, done.stderr[-3000:]
    said = [json.loads(line)["msg"] for line in done.stderr.splitlines()
            if line.startswith("{") and "cannot serve" in line]
    assert len(said) == 1 and "no compiled artifact matches its weights" in said[0]
    assert "transformers (the eager fallback) is not installed" in said[0]
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr
    readyz = subprocess.run([str(venv.python), "-c", READYZ], env=env, cwd=where,
                            capture_output=True, text=True, timeout=120)
    assert readyz.returncode == 0, readyz.stderr[-3000:]
    status, body = json.loads(readyz.stdout)
    assert status == 503 and body["status"] == "failed"
    assert body["error"].startswith("model_not_found: cannot serve")
    assert "no compiled artifact matches its weights" in body["error"]


READYZ = """
import json, time
from fastapi.testclient import TestClient
from common.settings import Settings
from online.app import create_app
with TestClient(create_app(Settings())) as client:
    while (reply := client.get("/readyz")).json()["status"] == "loading":
        time.sleep(0.05)
    print(json.dumps([reply.status_code, reply.json()]))
"""

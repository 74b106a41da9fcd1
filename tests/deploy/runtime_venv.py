"""The runtime image's venv and model layout, built here the way the Dockerfile builds them
(no Docker engine runs on these machines): the same pins, wheels, pruning, and the model
shipped without its weights or OpenVINO blobs, read-only."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.checks import ROOT

LOCK = "requirements/runtime.txt"
PRUNE = "requirements/prune.py"
# What the Dockerfile's tools stage copies to build the wheels from.
SOURCES = ("pyproject.toml", "README.md", "common", "online", "batch", "loadtest", "client")
BUILD_ONLY = ("torch", "transformers", "onnx", "onnxscript", "safetensors", "matplotlib")
# Dropped from the model the runtime image ships (the Dockerfile's build stage removes them).
NOT_SHIPPED = ("model.safetensors", "openvino-cache")
MAX_VENV_MB = 350


@dataclass(frozen=True)
class Venv:
    """A built runtime venv and what building it reported."""

    prefix: Path
    unpruned_mb: float
    pip_check: str

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python"

    @property
    def surgeserve(self) -> Path:
        return self.prefix / "bin" / "surgeserve"

    def size_mb(self) -> float:
        """Bytes of every file under the venv (links not followed), in MB (10^6)."""
        return tree_bytes(self.prefix) / 1e6


def tree_bytes(tree: Path) -> int:
    return sum(p.lstat().st_size for p in tree.rglob("*") if p.is_file() or p.is_symlink())


def gzipped_mb(*trees: Path) -> float:
    """MB (10^6) of the trees as one gzip-compressed tar (level 6, as `docker push` layers
    are): what a node pulls for them."""
    import gzip
    import tarfile

    class Count(io.RawIOBase):
        size = 0

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            self.size += len(data)
            return len(data)

    counter = Count()
    with gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=6) as zipped, \
            tarfile.open(fileobj=zipped, mode="w") as tar:
        for tree in trees:
            tar.add(tree, arcname=tree.name)
    return counter.size / 1e6


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=clean_env())
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would put this checkout on a venv's path."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | extra


def build(where: Path) -> Venv:
    """`python -m venv`, the pins with --no-deps, the project's wheels with --no-deps (built
    from a copy of what the Docker context holds), then requirements/prune.py."""
    base = getattr(sys, "_base_executable", sys.executable)
    prefix = where / "venv"
    run(base, "-m", "venv", prefix)
    pip = prefix / "bin" / "pip"
    run(pip, "install", "-q", "--no-deps", "-r", ROOT / LOCK)
    context = where / "context"
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", "*.egg-info", "build"))
        else:
            context.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, context / name)
    # This venv's setuptools builds them (the image's build isolation fetches one: same wheel).
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "--wheel-dir", where / "wheels", ".", "./client", cwd=context)
    run(pip, "install", "-q", "--no-deps", *sorted((where / "wheels").glob("*.whl")))
    checked = subprocess.run([str(pip), "check"], capture_output=True, text=True,
                             env=clean_env(), timeout=120)
    unpruned = tree_bytes(prefix) / 1e6
    run(prefix / "bin" / "python", ROOT / PRUNE)
    return Venv(prefix, unpruned, checked.stdout.strip())


def image_layout(model_dir: Path, artifact: Path, where: Path) -> tuple[Path, Path]:
    """The model as the runtime image holds it: (SURGE_MODEL_DIR, SURGE_MODEL_HOME), without
    NOT_SHIPPED, read-only for everyone (the image's directories belong to root)."""
    model, home = where / "model", where / "models"
    ignore = shutil.ignore_patterns(*NOT_SHIPPED)
    shutil.copytree(model_dir, model, ignore=ignore)
    shutil.copytree(artifact, home / "compiled" / artifact.name, ignore=ignore)
    # Root writes into read-only directories anyway: a file where OpenVINO would make its
    # blob cache stands in for the image's directory that its user cannot write.
    (home / "compiled" / artifact.name / "openvino-cache").write_text("read-only image\n")
    for path in [where, *where.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return model, home

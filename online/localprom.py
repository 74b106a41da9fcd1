"""A Prometheus server for `surgeserve up`: Debian's `prometheus` binary (make install unpacks
it into .venv beside promtool), scraping the local API and worker with the project's recording
rules and alerts loaded, so the rules are exercised on real metrics before a cluster sees them.
Absent binary: the stack runs without it and says so."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

RULES = Path(__file__).resolve().parents[1] / "grafana" / "prometheus" / "rules" / "surgeserve.yml"
# The labels the rules and dashboards select on, as the cluster's relabelling sets them.
NAMESPACE = "local"


def prometheus_binary() -> str | None:
    """`prometheus` beside this Python (.venv/bin), else on PATH."""
    local = Path(sys.executable).with_name("prometheus")
    return str(local) if local.is_file() else shutil.which("prometheus")


def write_config(folder: Path, api: str, worker: str, interval_s: float) -> Path:
    """prometheus.yml: the API (as the predictor: it serves the predictor's routes in `up`)
    and the worker, every `interval_s`, with the rule file when this is a checkout."""
    interval = f"{interval_s:g}s"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(RULES)] if RULES.is_file() else [],
        "scrape_configs": [
            {"job_name": "surgeserve-api", "static_configs": [
                {"targets": [api], "labels": {"namespace": NAMESPACE, "component": "predictor",
                                              "pod": "api"}}]},
            {"job_name": "surgeserve-worker", "static_configs": [
                {"targets": [worker], "labels": {"namespace": NAMESPACE,
                                                 "component": "worker", "pod": "worker"}}]},
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start(binary: str, folder: Path, port: int, api: str, worker: str,
          interval_s: float) -> subprocess.Popen[bytes]:
    """Prometheus on 127.0.0.1:port, its data and log in `folder`; returns once it is ready
    (raises if it exits or is not ready within 30 s)."""
    config = write_config(folder, api, worker, interval_s)
    with (folder / "prometheus.log").open("ab") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2d"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    from online.stack import wait_http  # the stack imports this module when it runs it

    if wait_http(f"http://127.0.0.1:{port}/-/ready", process, timeout_s=30):
        return process
    process.kill()
    process.wait()
    raise RuntimeError(f"prometheus did not start; see {folder / 'prometheus.log'}")

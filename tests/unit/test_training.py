"""The build path, on a few examples (the full build runs once in `make test`'s first step)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from common.identity import MANIFEST
from common.loader import load_bundle
from common.training import TrainConfig, build


def test_small_build_is_deterministic_and_loadable(tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, limit=48, batch_size=16)
    first = build(config, tmp_path / "a", progress=False, heldout_limit=100)
    second = build(config, tmp_path / "b", progress=False, heldout_limit=100)
    manifest = json.loads((first / MANIFEST).read_text())
    assert manifest["version"] == json.loads((second / MANIFEST).read_text())["version"]
    assert manifest["labels"] == ["NEGATIVE", "POSITIVE"]
    assert manifest["metrics"]["n_train"] == 48 and manifest["metrics"]["n_test"] == 100
    assert 0.0 <= manifest["metrics"]["heldout_accuracy"] <= 1.0
    assert manifest["training"]["limit"] == 48
    bundle = load_bundle(first, compiled=False)
    assert (bundle.name, bundle.labels) == ("surge-sentiment-minilm", ["NEGATIVE", "POSITIVE"])
    assert not list(tmp_path.glob(".building-*"))  # staging cleaned up
    assert_readable_by_anyone(first)


def assert_readable_by_anyone(tree: Path) -> None:
    """Every directory listable and every file readable by other users: the image's server
    runs as a non-root user over files its root build wrote."""
    for path in [tree, *tree.rglob("*")]:
        mode = path.stat().st_mode
        need = 0o005 if path.is_dir() else 0o004
        assert mode & need == need, f"{path} is {stat.filemode(mode)}"

"""The fast-start artifact: same answers as the eager model, and a safe fallback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.compiled import GUARD, META, MODEL, compile_model, compiled_dir
from common.engines import torch as torch_engine
from common.errors import ModelNotFound, ModelNotServable
from common.identity import MANIFEST, WEIGHT_FILES, weights_hash
from common.loader import EngineRequest, load_bundle
from tests.unit.test_training import assert_readable_by_anyone

TEXTS = ["ok", "a long and winding review " * 20, "Mixed Case TEXT", "x"]


@pytest.fixture(autouse=True)
def model_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Compiled artifacts go to a fresh model home per test."""
    monkeypatch.setenv("SURGE_MODEL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_compiled_bundle_answers_like_the_eager_one(tiny_model_dir: Path) -> None:
    eager = load_bundle(tiny_model_dir, compiled=False, max_tokens=64)
    where = compile_model(tiny_model_dir)
    assert where == compiled_dir(weights_hash(tiny_model_dir))
    assert (where / GUARD).is_file()  # the accuracy guard's texts travel with the artifact
    fast = load_bundle(tiny_model_dir, max_tokens=64, request=EngineRequest(engine="onnx"))
    assert (eager.engine.kind, fast.engine.kind) == ("transformers", "onnx")
    assert fast.identity == eager.identity  # same weights, limit and precision: same answers
    assert (fast.name, fast.version, fast.labels) == (eager.name, eager.version, eager.labels)
    assert fast.lowercase == eager.lowercase and fast.max_tokens == eager.max_tokens
    for got, want in zip(fast.predict(TEXTS, max_forward_batch=3),
                         eager.predict(TEXTS, max_forward_batch=3), strict=True):
        assert [label for label, _ in got] == [label for label, _ in want]
        assert dict(got) == pytest.approx(dict(want), abs=1e-5)


def test_corrupt_artifact_falls_back_to_eager(tiny_model_dir: Path) -> None:
    where = compile_model(tiny_model_dir)
    (where / MODEL).write_bytes(b"not an onnx model")
    bundle = load_bundle(tiny_model_dir)  # auto: measuring fails too, then ONNX, then eager
    assert bundle.engine.kind == "transformers"
    assert len(bundle.predict(["still answers"])[0]) == 3


def test_compiled_can_be_switched_off(tiny_model_dir: Path) -> None:
    compile_model(tiny_model_dir)
    assert (compiled_dir(weights_hash(tiny_model_dir)) / META).is_file()
    assert load_bundle(tiny_model_dir, compiled=False).engine.kind == "transformers"


def test_the_settings_model_home_is_the_one_used(tiny_model_dir: Path, model_home: Path,
                                                 tmp_path: Path) -> None:
    """A server looks for its artifact in its Settings' model home (SURGE_MODEL_HOME, read
    once), passed down to the loader, not wherever the environment says later."""
    from common.loader import load_configured
    from common.settings import Settings

    home = tmp_path / "settings-home"
    where = compile_model(tiny_model_dir, home=home)
    assert where == compiled_dir(weights_hash(tiny_model_dir), home) and where.is_relative_to(home)
    assert not compiled_dir(weights_hash(tiny_model_dir)).exists()  # not the environment's
    settings = Settings(model_home=home, model_dir=tiny_model_dir, engine="onnx", max_tokens=64)
    assert load_configured(settings).engine.kind == "onnx"
    assert load_configured(Settings(model_dir=tiny_model_dir, engine="onnx",
                                    max_tokens=64)).engine.kind == "transformers"


def test_a_model_shipped_without_weights_serves_from_its_artifact(tiny_model_dir: Path,
                                                                  tmp_path: Path) -> None:
    """The runtime image drops the weights (no torch there to use them): the artifact
    compiled from them serves, under the same identity, readable by a non-root server."""
    where = compile_model(tiny_model_dir)
    assert_readable_by_anyone(where)
    full = load_bundle(tiny_model_dir, max_tokens=64, request=EngineRequest(engine="onnx"))
    shipped = tmp_path / "shipped"
    shutil.copytree(tiny_model_dir, shipped,
                    ignore=shutil.ignore_patterns(*WEIGHT_FILES, "model-*.safetensors"))
    (shipped / MANIFEST).write_text(json.dumps({"version": weights_hash(tiny_model_dir)}))
    bundle = load_bundle(shipped, max_tokens=64, request=EngineRequest(engine="onnx"))
    assert (bundle.identity, bundle.engine.kind) == (full.identity, "onnx")
    assert bundle.predict(TEXTS) == full.predict(TEXTS)
    shutil.rmtree(where)
    with pytest.raises(ModelNotFound, match="no weights"):  # nothing left to serve it
        load_bundle(shipped)


def test_without_transformers_a_model_with_no_artifact_is_refused(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime image has no eager fallback: loading says so instead of failing on an
    import (tests/deploy/test_runtime_venv.py shows it in a venv really without torch)."""
    monkeypatch.setattr(torch_engine, "available", lambda: False)
    with pytest.raises(ModelNotServable, match="no compiled artifact matches") as caught:
        load_bundle(tiny_model_dir)
    assert caught.value.detail["weights"] == weights_hash(tiny_model_dir)
    assert "surgeserve model compile" in caught.value.detail["hint"]
    with pytest.raises(ModelNotServable, match="SURGE_ENGINE=transformers"):
        load_bundle(tiny_model_dir, compiled=False)
    compile_model(tiny_model_dir)
    assert load_bundle(tiny_model_dir).engine.kind in ("onnx", "openvino")

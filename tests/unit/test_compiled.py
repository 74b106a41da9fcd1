"""The fast-start artifact: same answers as the eager model, and a safe fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.compiled import GUARD, META, MODEL, compile_model, compiled_dir
from common.identity import weights_hash
from common.loader import EngineRequest, load_bundle

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

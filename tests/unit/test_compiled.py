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

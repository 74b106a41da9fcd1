"""Model identity (issue 15, item 6): the cache key covers everything that changes an answer,
and a manifest whose version no longer matches the weights is caught at load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import common.identity
from common.compiled import compile_model, compiled_dir
from common.identity import MANIFEST, weights_hash
from common.loader import EngineRequest, load_bundle

TEXTS = ["a fine film", "dull " * 30, "Mixed Case TEXT"]
ONNX = EngineRequest(engine="onnx")


def _new_weights(model: Path, seed: int) -> None:
    """Different random weights in place, same config, tokenizer and manifest."""
    import torch
    from transformers import AutoConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    BertForSequenceClassification(AutoConfig.from_pretrained(model)).save_pretrained(model)


@pytest.fixture(scope="module")
def compiled_tiny(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a manifest whose version is its weights hash, compiled once into
    its own model home (model/ and home/ under the returned directory)."""
    root = tmp_path_factory.mktemp("compiled-tiny")
    model = root / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / MANIFEST).write_text(json.dumps({"name": "tiny", "version": weights_hash(model)}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SURGE_MODEL_HOME", str(root / "home"))
        compile_model(model)
    return root


@pytest.fixture
def compiled_copy(compiled_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the compiled tiny model and its home (file times kept) per test."""
    shutil.copytree(compiled_tiny, tmp_path / "copy")
    monkeypatch.setenv("SURGE_MODEL_HOME", str(tmp_path / "copy" / "home"))
    return tmp_path / "copy" / "model"


def test_new_weights_under_an_old_manifest_are_not_served_as_the_old_version(
        compiled_copy: Path) -> None:
    old = weights_hash(compiled_copy)
    before = load_bundle(compiled_copy, request=ONNX, warmup=False)
    assert (before.version, before.engine.kind) == (old, "onnx")
    _new_weights(compiled_copy, seed=1)
    new = weights_hash(compiled_copy)
    assert new != old
    bundle = load_bundle(compiled_copy, request=ONNX, warmup=False)
    eager = load_bundle(compiled_copy, compiled=False, warmup=False)
    # Served as what the weights are, not as the manifest says; so cached under another key.
    assert (bundle.version, bundle.weights) == (new, new)
    assert bundle.keyed(TEXTS[0])[1] != before.keyed(TEXTS[0])[1]
    # The artifact compiled from the old weights is not used: the answers are the new ones.
    assert bundle.engine.kind == "transformers"
    for got, want in zip(bundle.predict(TEXTS), eager.predict(TEXTS), strict=True):
        assert dict(got) == pytest.approx(dict(want), abs=1e-6)


def test_unchanged_weights_are_not_hashed_at_load(compiled_copy: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is cheap: the artifact's recorded file stats stand in for the hash."""
    def no_hashing(path: Path) -> str:
        raise AssertionError("hashed the weights although their stats were unchanged")

    monkeypatch.setattr(common.identity, "weights_hash", no_hashing)
    bundle = load_bundle(compiled_copy, request=ONNX, warmup=False)
    assert bundle.engine.kind == "onnx" and bundle.version == bundle.weights


def test_a_chosen_version_label_is_kept_but_the_key_follows_the_weights(
        compiled_copy: Path) -> None:
    manifest = {"name": "tiny", "version": "release-7"}
    (compiled_copy / MANIFEST).write_text(json.dumps(manifest))
    first = load_bundle(compiled_copy, request=ONNX, warmup=False)
    _new_weights(compiled_copy, seed=2)
    second = load_bundle(compiled_copy, request=ONNX, warmup=False)
    assert first.version == second.version == "release-7"
    assert first.engine.kind == "onnx" and second.engine.kind == "transformers"
    assert first.keyed(TEXTS[0])[1] != second.keyed(TEXTS[0])[1]
    assert compiled_dir(first.weights).is_dir() and not compiled_dir(second.weights).exists()


def test_cache_key_covers_token_limit_and_precision_not_the_engine(
        default_model_dir: Path) -> None:
    def key(**kwargs: object) -> str:
        max_tokens = int(kwargs.pop("max_tokens", 128))  # type: ignore[call-overload]
        bundle = load_bundle(default_model_dir, max_tokens=max_tokens, warmup=False,
                             request=EngineRequest(**kwargs))  # type: ignore[arg-type]
        return bundle.keyed("a long review " * 40)[1]

    onnx128 = key(engine="onnx")
    assert key(engine="onnx", max_tokens=16) != onnx128  # 16 tokens answer differently
    assert key(engine="onnx") == onnx128
    # OpenVINO fp32 computes what ONNX Runtime fp32 does (within float rounding): shared.
    assert key(engine="openvino", precision="fp32") == onnx128
    bf16 = load_bundle(default_model_dir, warmup=False,
                       request=EngineRequest(engine="openvino", precision="bf16"))
    if bf16.precision == "bf16":  # a CPU that computes in bf16
        assert bf16.keyed("a long review " * 40)[1] != onnx128

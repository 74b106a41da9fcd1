"""The loader takes any Hugging Face sequence-classification directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.bundle import MANIFEST, load_bundle, weights_hash
from common.errors import ModelNotFound


def test_labels_come_from_id2label_and_version_from_weights(tiny_model_dir: Path) -> None:
    bundle = load_bundle(tiny_model_dir, warmup=False)
    assert bundle.labels == ["anger", "joy", "calm"]
    assert bundle.version == weights_hash(tiny_model_dir)
    assert bundle.name == tiny_model_dir.name
    assert bundle.lowercase is True  # the packaged MiniLM tokenizer is uncased


def test_manifest_names_the_bundle(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    (copy / MANIFEST).write_text(json.dumps({"name": "emotions", "version": "7"}))
    bundle = load_bundle(copy, warmup=False)
    assert (bundle.name, bundle.version) == ("emotions", "7")


def test_scores_are_ranked_probabilities_in_input_order(tiny_model_dir: Path) -> None:
    bundle = load_bundle(tiny_model_dir)
    texts = ["short", "a much longer text that sorts after the short one " * 3, "mid length"]
    batched = bundle.predict(texts, max_forward_batch=2)
    for text, ranked in zip(texts, batched, strict=True):
        assert sorted(label for label, _ in ranked) == ["anger", "calm", "joy"]
        scores = [score for _, score in ranked]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
        # Padding and length-sorting inside a batch must not change any answer.
        alone = dict(bundle.predict([text])[0])
        assert dict(ranked) == pytest.approx(alone, abs=1e-5)


def test_long_text_is_truncated_not_refused(tiny_model_dir: Path) -> None:
    bundle = load_bundle(tiny_model_dir, max_tokens=16, warmup=False)
    assert len(bundle.predict(["word " * 1000])[0]) == 3


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        load_bundle(tmp_path)

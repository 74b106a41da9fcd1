"""The loader takes any Hugging Face sequence-classification directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.bundle import _chunks
from common.errors import ModelNotFound
from common.identity import MANIFEST, weights_hash
from common.loader import load_bundle


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


def test_forward_passes_bound_padding_tokens_and_items() -> None:
    lengths = [10, 10, 11, 12, 20, 21, 40, 40, 40, 40]
    ids = [[0] * n for n in lengths]
    order = list(range(len(ids)))  # already sorted by length
    passes = _chunks(order, ids, max_items=32, max_tokens=512, max_padding=0.2)
    assert sorted(i for p in passes for i in p) == order  # every text, once
    for p in passes:
        padded, real = len(p) * max(lengths[i] for i in p), sum(lengths[i] for i in p)
        assert padded <= 1.2 * real
    assert [len(p) for p in passes] == [4, 2, 4]  # 10-12, 20-21, 40s: no 10 padded to 40
    # Without the padding bound only the token budget and the item cap cut.
    assert [len(p) for p in _chunks(order, ids, 32, 512)] == [10]
    assert [len(p) for p in _chunks(order, ids, 32, 120)] == [5, 3, 2]
    assert [len(p) for p in _chunks(order, ids, 3, 512)] == [3, 3, 3, 1]


def test_long_text_is_truncated_not_refused(tiny_model_dir: Path) -> None:
    bundle = load_bundle(tiny_model_dir, max_tokens=16, warmup=False)
    assert len(bundle.predict(["word " * 1000])[0]) == 3


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        load_bundle(tmp_path)

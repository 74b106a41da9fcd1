"""The default model: held-out accuracy measured again here, not read from the manifest."""

from __future__ import annotations

from common.training import heldout_examples


def test_heldout_accuracy_at_least_80_percent(default_bundle) -> None:
    examples = heldout_examples()
    assert len(examples) > 2500
    predictions = default_bundle.predict([e.text for e in examples], max_forward_batch=64)
    labels = default_bundle.labels
    correct = sum(int(ranked[0][0] == labels[e.label]) for ranked, e in
                  zip(predictions, examples, strict=True))
    accuracy = correct / len(examples)
    assert accuracy >= 0.80, accuracy
    assert abs(accuracy - default_bundle.manifest["metrics"]["heldout_accuracy"]) < 0.01

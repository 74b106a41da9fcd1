"""The default model: held-out accuracy measured again here, not read from the manifest."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from common.training import heldout_examples


def test_heldout_accuracy_at_least_80_percent(default_bundle) -> None:
    """On the engine the chooser picked for this CPU (bf16 where it won the guard)."""
    examples = heldout_examples()
    assert len(examples) > 2500
    texts, streams = [e.text for e in examples], default_bundle.streams
    with ThreadPoolExecutor(streams) as pool:  # every engine stream busy, as jobs run
        parts = list(pool.map(default_bundle.predict, [texts[k::streams] for k in range(streams)]))
    predictions = [parts[i % streams][i // streams] for i in range(len(texts))]
    labels = default_bundle.labels
    correct = sum(int(ranked[0][0] == labels[e.label]) for ranked, e in
                  zip(predictions, examples, strict=True))
    accuracy = correct / len(examples)
    assert accuracy >= 0.80, accuracy
    assert abs(accuracy - default_bundle.manifest["metrics"]["heldout_accuracy"]) < 0.01

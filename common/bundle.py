"""Load any Hugging Face sequence-classification directory and run batched predictions."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ModelNotFound

log = logging.getLogger(__name__)

MANIFEST = "surgeserve.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# One prediction: every label with its probability, highest first.
Ranked = list[tuple[str, float]]


@dataclass
class ModelBundle:
    """A loaded model with its tokenizer, labels and identity (name, version)."""

    name: str
    version: str
    labels: list[str]
    lowercase: bool
    max_tokens: int
    path: Path
    manifest: dict[str, Any]
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    load_seconds: float = 0.0

    def predict(self, texts: list[str], max_forward_batch: int = 64) -> list[Ranked]:
        """Ranked label scores for each text, in input order; sorted by length inside."""
        import torch

        if not texts:
            return []
        encoded = self.tokenizer(
            texts, truncation=True, max_length=self.max_tokens, add_special_tokens=True
        )
        ids: list[list[int]] = encoded["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        out: list[Ranked] = [[] for _ in texts]
        with torch.inference_mode():
            for start in range(0, len(order), max_forward_batch):
                chunk = order[start : start + max_forward_batch]
                probs = torch.softmax(self._forward([ids[i] for i in chunk]), dim=-1)
                for row, i in zip(probs.tolist(), chunk, strict=True):
                    out[i] = _rank(self.labels, row)
        return out

    def _forward(self, batch_ids: list[list[int]]) -> Any:
        import torch

        width = max(len(x) for x in batch_ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch_ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
        for row, seq in enumerate(batch_ids):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.tokenizer.model_input_names:
            inputs["token_type_ids"] = torch.zeros_like(input_ids)
        return self.model(**inputs).logits.float()

    def info(self) -> dict[str, Any]:
        """What /v1/models and `surgeserve model info` show."""
        return {
            "name": self.name,
            "version": self.version,
            "labels": self.labels,
            "path": str(self.path),
            "max_tokens": self.max_tokens,
            "lowercase": self.lowercase,
            "metrics": self.manifest.get("metrics", {}),
            "load_seconds": round(self.load_seconds, 3),
        }


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
) -> ModelBundle:
    """Load a local Hugging Face sequence-classification directory (no hub access)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    started = time.perf_counter()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelNotFound(
            f"{path} is not a Hugging Face model directory (no config.json)",
            {"hint": "run `surgeserve model build`, or set SURGE_MODEL_DIR"},
        )
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if threads:
        torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    manifest = read_manifest(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    model.eval()
    model_max = int(getattr(tokenizer, "model_max_length", max_tokens) or max_tokens)
    bundle = ModelBundle(
        name=name or manifest.get("name") or path.name,
        version=manifest.get("version") or weights_hash(path),
        labels=_labels(model.config),
        lowercase=_is_uncased(tokenizer),
        max_tokens=min(max_tokens, model_max),
        path=path,
        manifest=manifest,
        model=model,
        tokenizer=tokenizer,
    )
    if warmup:
        bundle.predict(["warm up the model", "x " * bundle.max_tokens])
    bundle.load_seconds = time.perf_counter() - started
    log.info("model loaded", extra={"model": bundle.name, "version": bundle.version,
                                    "seconds": round(bundle.load_seconds, 3)})
    return bundle

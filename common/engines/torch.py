"""transformers (PyTorch eager): any sequence-classification directory, the fallback engine.

Also the reference the export is verified against, and the engine that exports it.
Importing torch and transformers costs seconds of a cold start (README), so the serving path
uses it only when no verified artifact exists or it is asked for (SURGE_ENGINE=transformers).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.engines import Batching, Spec, pad_batch

BATCHING = Batching(max_batch=32, max_forward_tokens=512, max_padding=0.2)


class TorchEngine:
    """transformers' model and tokenizer."""

    kind = "transformers"
    batching = BATCHING

    def __init__(self, model: Any, tokenizer: Any, max_tokens: int, spec: Spec):
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.uses_token_types = "token_type_ids" in tokenizer.model_input_names
        self.spec = spec
        self.precision = spec.precision
        self.streams = spec.streams

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


def available() -> bool:
    """Whether torch and transformers are installed (the `build` extra; not in the runtime
    image), found without importing them."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def open_engine(path: Path, spec: Spec, max_tokens: int) -> TorchEngine:
    """transformers' model and tokenizer from a local directory (no hub access)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if spec.precision != "fp32":
        raise ValueError(f"transformers serves fp32 only, not {spec.precision}")
    torch.set_num_threads(max(1, spec.threads))
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    model.eval()
    model_max = int(getattr(tokenizer, "model_max_length", max_tokens) or max_tokens)
    return TorchEngine(model, tokenizer, min(max_tokens, model_max), spec)


def labels_of(engine: TorchEngine) -> list[str]:
    """The label names in output order (config.id2label)."""
    config = engine.model.config
    id2label = getattr(config, "id2label", None) or {}
    count = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(count)]


def is_uncased(engine: TorchEngine) -> bool:
    """Whether the tokenizer lower-cases (then the cache key lower-cases too)."""
    probe = "Hello World ABC"
    return bool(engine.tokenizer.tokenize(probe) == engine.tokenizer.tokenize(probe.lower()))

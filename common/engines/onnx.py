"""ONNX Runtime over the verified export: today's engine, fp32.

One session serves every stream: ONNX Runtime sessions may be run from several threads at
once, so `streams` model workers each call `run` on it with `threads` intra-op threads each.
With one intra-op thread there is no thread pool at all (nothing spins between passes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.engines import Batching, RustEncoder, Spec, pad_batch, rust_tokenizer

# Measured on this project's 2-core machines (README, Engines): on fp32 a padded token costs
# what a real one costs, so passes stay tight (20% padding) and small (512 padded tokens).
BATCHING = Batching(max_batch=32, max_forward_tokens=512, max_padding=0.2)


class OnnxEngine(RustEncoder):
    """An ONNX Runtime session and a `tokenizers.Tokenizer`: no torch at serve time."""

    kind = "onnx"
    batching = BATCHING

    def __init__(self, session: Any, tokenizer: Any, pad_id: int, spec: Spec):
        self.session = session
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.spec = spec
        self.precision = spec.precision
        self.streams = spec.streams

    def logits(self, batch_ids: list[list[int]]) -> np.ndarray:
        """One forward pass."""
        input_ids, mask = pad_batch(batch_ids, self.pad_id)
        out = self.session.run(None, {"input_ids": input_ids, "attention_mask": mask})
        return np.asarray(out[0], dtype=np.float32)


def session(file: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def open_engine(artifact: Path, meta: dict[str, Any], spec: Spec, max_tokens: int) -> OnnxEngine:
    """The engine for `spec` (fp32 only) over the artifact in `artifact`."""
    if spec.precision != "fp32":
        raise ValueError(f"onnx serves fp32 only, not {spec.precision}")
    return OnnxEngine(session(artifact / "model.onnx", spec.threads),
                      rust_tokenizer(artifact / "tokenizer.json", max_tokens),
                      int(meta["pad_id"]), spec)

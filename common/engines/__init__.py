"""Engines: token ids in, logits out. One module per runtime (onnx, openvino, torch); the one
place that loads a model and picks an engine is common/loader.py, by measurement
(common/chooser.py).

An engine runs `streams` forward passes at once (one per model worker thread), each on
`threads` CPU threads, at one numeric precision. Its `batching` says how the batcher should cut
work for it: the largest batch, the padded-token cap of a pass and the padding a pass may carry
(measured per engine on the CPU at hand: README, Engines).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

ENGINES = ("onnx", "openvino", "transformers")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Batching:
    """How work is cut into forward passes for an engine."""

    max_batch: int = 32
    max_forward_tokens: int = 512
    max_padding: float = 0.2
    # The padding rule for work sorted as a whole (a job chunk): neighbours are close in
    # length, so tight passes stay full; max_padding is for arrival-order batches.
    sorted_padding: float = 0.2

    def overridden(self, max_batch: int | None = None, max_forward_tokens: int | None = None,
                   max_padding: float | None = None) -> Batching:
        """These defaults with the values a person set (None: keep the engine's; a padding
        set by a person rules sorted work too)."""
        changes: dict[str, Any] = {k: v for k, v in (("max_batch", max_batch),
                                                      ("max_forward_tokens", max_forward_tokens),
                                                      ("max_padding", max_padding),
                                                      ("sorted_padding", max_padding))
                                   if v is not None}
        return replace(self, **changes)

    @property
    def for_sorted(self) -> Batching:
        """The rule for work sorted as a whole: its own padding."""
        return replace(self, max_padding=self.sorted_padding)


@dataclass(frozen=True)
class Spec:
    """One candidate: engine x precision x streams (x threads per stream)."""

    engine: str
    precision: str = "fp32"
    streams: int = 1
    threads: int = 1

    @property
    def label(self) -> str:
        """`openvino bf16 2x1`: how reports and logs name it."""
        return f"{self.engine} {self.precision} {self.streams}x{self.threads}"

    def as_dict(self) -> dict[str, Any]:
        """JSON form (recorded with the artifact)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spec:
        """Back from the JSON form."""
        return cls(str(data["engine"]), str(data.get("precision", "fp32")),
                   int(data.get("streams", 1)), int(data.get("threads", 1)))


class Engine(Protocol):
    """Token ids in, logits out; `logits` may be called from up to `streams` threads at once."""

    kind: str
    precision: str
    streams: int
    batching: Batching

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids with special tokens, truncated to the bundle's max_tokens."""
        ...

    def logits(self, batch_ids: list[list[int]]) -> np.ndarray:
        """Float logits [batch, labels] for one forward pass over these sequences."""
        ...


def pad_batch(batch_ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 input ids and attention mask."""
    width = max(len(x) for x in batch_ids)
    input_ids = np.full((len(batch_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch_ids), width), dtype=np.int64)
    for row, seq in enumerate(batch_ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return input_ids, mask


def rust_tokenizer(file: Path, max_tokens: int) -> Any:
    """The artifact's `tokenizers.Tokenizer`, truncating, unpadded (the engines pad)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


class RustEncoder:
    """`encode` for the engines that serve from the artifact (no transformers import)."""

    tokenizer: Any

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids via the Rust tokenizer (truncation set at load)."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)]


def open_engine(spec: Spec, artifact: Path, meta: dict[str, Any], max_tokens: int) -> Engine:
    """An engine serving the compiled artifact in `artifact` as `spec` says. Raises whatever
    the runtime raises (not installed, cannot compile): the loader then tries the next one."""
    if spec.engine == "onnx":
        from common.engines import onnx

        return onnx.open_engine(artifact, meta, spec, max_tokens)
    if spec.engine == "openvino":
        from common.engines import openvino

        return openvino.open_engine(artifact, meta, spec, max_tokens)
    raise ValueError(f"{spec.engine} does not serve a compiled artifact")

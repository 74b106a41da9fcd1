"""OpenVINO over the verified ONNX export: f32, and bf16 where the CPU computes in it.

(int8 was tried: ONNX Runtime static quantisation (QDQ, per-channel weights, calibrated on
256 training snippets) agreed with fp32 on 95.3% of the held-out texts and lost 0.7 points of
accuracy, on ONNX Runtime and on OpenVINO alike: the guard rejects it, so no int8 path.)

`streams` is OpenVINO's own notion (NUM_STREAMS): independent executors, each with `threads`
threads; each model worker thread owns one infer request, so `streams` workers run passes at
once without sharing one thread pool (2 x 1 beat 1 x 2 by 1.75x on the issue's AMX machine).
Compiled blobs are cached beside the artifact (CACHE_DIR; under SURGE_CACHE_DIR when the
artifact is read-only), so a restart skips compilation.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from common.compiled import writable_dir
from common.engines import Batching, RustEncoder, Spec, pad_batch, rust_tokenizer

log = logging.getLogger(__name__)

# Measured here (AMD EPYC Zen 4, 2 cores; texts per CPU-second, 1,200 snippets in arrival
# order, README, Engines): bf16 passes are cheap enough that fewer, wider passes win
# (50% padding 396 texts/s vs 20% 350); f32 behaves like ONNX Runtime fp32 (20%: 216-227,
# 50%: 193-202). Sorted work (job chunks of 256, sorted whole) is another matter: bf16 at
# 20% padding 4.40-4.48 CPU ms/text vs 4.73-4.84 at 50% (neighbours are close in length,
# so tight passes stay full; the whole 4,096-text set sorted: 4.2-4.3 either way).
BATCHING = {"fp32": Batching(max_batch=32, max_forward_tokens=512, max_padding=0.2),
            "bf16": Batching(max_batch=32, max_forward_tokens=512, max_padding=0.5,
                             sorted_padding=0.2)}
_HINT = {"fp32": "f32", "bf16": "bf16"}


_IMPORT = threading.Lock()


def _openvino() -> Any:
    """`import openvino` without its model converter: the package's __init__ imports
    `openvino.tools.ovc` (convert_model) when it can, ~0.1 s of every cold start (0.23-0.26 vs
    0.13-0.16 s here), and nothing here converts models (the artifact is ONNX, read by
    `Core.read_model`). A None in sys.modules makes that import fail, which the package
    catches; the entry goes again right after, so a later `import openvino.tools.ovc` works."""
    with _IMPORT:
        if "openvino" not in sys.modules and "openvino.tools.ovc" not in sys.modules:
            sys.modules["openvino.tools.ovc"] = None  # type: ignore[assignment]
            try:
                import openvino  # noqa: F401
            finally:
                del sys.modules["openvino.tools.ovc"]
        import openvino as ov

        return ov


def capabilities() -> list[str]:
    """What this CPU plugin computes in (OPTIMIZATION_CAPABILITIES: FP32, BF16, INT8...)."""
    ov = _openvino()

    return [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def precisions() -> list[str]:
    """The precisions worth trying on this CPU: bf16 only where it computes in bf16."""
    caps = capabilities()
    return ["fp32"] + (["bf16"] if "BF16" in caps else [])


class OpenVinoEngine(RustEncoder):
    """An OpenVINO compiled model and one infer request per stream, lent to whichever thread
    runs a pass: each request holds its own working memory (tens of MB), so a thread pool of
    64 (a job worker) or 40 (a naive server) must not grow one each."""

    kind = "openvino"

    def __init__(self, compiled: Any, tokenizer: Any, pad_id: int, spec: Spec):
        self.compiled = compiled
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.spec = spec
        self.precision = spec.precision
        self.streams = spec.streams
        self.batching = BATCHING[spec.precision]
        self._tensor = _openvino().Tensor
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(spec.streams):
            self._idle.put(compiled.create_infer_request())

    def logits(self, batch_ids: list[list[int]]) -> np.ndarray:
        """One forward pass on a free infer request (waits for one: `streams` at once)."""
        input_ids, mask = pad_batch(batch_ids, self.pad_id)
        request = self._idle.get()
        try:
            # Tensors that own a copy of the inputs, set whole: `infer(dict)` resizes the
            # request's own tensors and copies into them in Python, and with two streams that
            # deadlocked (both model threads stuck in the input dispatch) within a minute of
            # small passes here.
            request.set_tensor("input_ids", self._tensor(input_ids))
            request.set_tensor("attention_mask", self._tensor(mask))
            request.infer()
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)
        finally:
            self._idle.put(request)


# Compiled kernels kept per input shape. Every (batch, length) pair is a shape: with
# OpenVINO's default (5,000) a 2-stream engine grew from 226 to 805 MB over 4,000 snippets
# here; 16 kept it at 481 MB at the same speed (0: 468 MB, ~8% slower). README, Engines.
SHAPE_CACHE = 16


# oneDNN keeps its own process-wide cache of JIT kernels (default 1,024 entries) beside
# OpenVINO's per-shape cache above; with dynamic shapes it holds one set per shape seen and
# was most of what the server grew under load. Off, measured here (AMD EPYC Zen 4, 2 cores,
# bf16 2x1, 2,000 snippets in arrival order, interleaved): RSS after load 311-312 vs 457-460
# MB in-process (server under k6: 333 vs 494-513 MB), texts per CPU-second the same (281-283
# vs 275-287). An operator's own setting wins. Read when the first kernel is made, so it is
# set before the first compile.
ONEDNN_CACHE = "0"


def _limit_kernel_cache() -> None:
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE)


def _config(spec: Spec) -> dict[str, Any]:
    return {"INFERENCE_PRECISION_HINT": _HINT[spec.precision],
            "NUM_STREAMS": str(spec.streams),
            "INFERENCE_NUM_THREADS": str(spec.streams * spec.threads),
            "CPU_RUNTIME_CACHE_CAPACITY": str(SHAPE_CACHE)}


def open_engine(artifact: Path, meta: dict[str, Any], spec: Spec,
                max_tokens: int) -> OpenVinoEngine:
    """The engine for `spec` over the artifact's ONNX file."""
    ov = _openvino()

    if spec.precision not in BATCHING:
        raise ValueError(f"openvino has no {spec.precision} path")
    model_file = artifact / "model.onnx"
    _limit_kernel_cache()
    core = ov.Core()
    if spec.precision == "bf16" and "BF16" not in core.get_property(
            "CPU", "OPTIMIZATION_CAPABILITIES"):
        # The hint would be ignored and f32 computed under a bf16 name (and cache key).
        raise ValueError("this CPU does not compute in bf16")
    if cache := writable_dir(artifact, "openvino-cache"):
        core.set_property({"CACHE_DIR": str(cache)})
    compiled = core.compile_model(str(model_file), "CPU", _config(spec))
    return OpenVinoEngine(compiled, rust_tokenizer(artifact / "tokenizer.json", max_tokens),
                          int(meta["pad_id"]), spec)

"""Compiled artifacts: a verified ONNX export + the Rust tokenizer, served by ONNX Runtime.

Measured on these 2-core machines (README, Benchmarks): `import torch` alone is 1.3–4 s of a
cold start and importing transformers + `from_pretrained` another ~3 s; ONNX Runtime imports
and opens the same model in ~0.5 s, the process holds ~160 MB instead of ~390 MB, and it runs
~25% more texts/s than a TorchScript trace of the model. Serving from the artifact imports
neither torch nor transformers.

An export can go wrong silently, so compiling *verifies* it against the eager model on padded
and unpadded batches of several shapes, and the Rust tokenizer against the HF tokenizer; on any
mismatch nothing is written and serving stays on the eager (transformers) path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common.bundle import (
    HFBackend,
    ModelBundle,
    load_eager,
    pad_batch,
    read_manifest,
    weights_hash,
)
from common.errors import ModelNotFound
from common.settings import default_model_home

log = logging.getLogger(__name__)

META = "compiled.json"
MODEL = "model.onnx"
TOKENIZER = "tokenizer.json"
FORMAT = "onnx-1"  # bump when the artifact layout changes: old artifacts are then ignored
# Probe texts: short, long, mixed; padded batches and a batch with no padding at all.
_PROBES = [
    ["ok"],
    ["short one", "a much longer sentence with quite a few more tokens than the other one"] * 3,
    ["same length a", "same length b", "same length c"],
    ["word " * 400, "tiny"],
]


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporter warns about axis renames and internals; the result is verified instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def compiled_dir(version: str) -> Path:
    """Where the artifact for a model version lives."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{version}-{FORMAT}")
    return default_model_home() / "compiled" / safe


class OnnxBackend:
    """An ONNX Runtime session and a `tokenizers.Tokenizer`: no torch at serve time."""

    kind = "onnx"

    def __init__(self, session: Any, tokenizer: Any, pad_id: int):
        self.session = session
        self.tokenizer = tokenizer
        self.pad_id = pad_id

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids via the Rust tokenizer (truncation set at load)."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)]

    def logits(self, batch_ids: list[list[int]]) -> np.ndarray:
        """One forward pass (ONNX Runtime sessions are safe to run from several threads)."""
        input_ids, mask = pad_batch(batch_ids, self.pad_id)
        out = self.session.run(None, {"input_ids": input_ids, "attention_mask": mask})
        return np.asarray(out[0])


def _session(file: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def _rust_tokenizer(file: Path, max_tokens: int) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


def _export(backend: HFBackend, target: Path) -> None:
    import torch

    class LogitsOnly(torch.nn.Module):
        """(input_ids, attention_mask) -> logits, the signature the artifact is called with."""

        def __init__(self) -> None:
            super().__init__()
            self.model = backend.model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            extra = ({"token_type_ids": torch.zeros_like(input_ids)}
                     if backend.uses_token_types else {})
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    ids, mask = pad_batch(backend.encode(_PROBES[1]), backend.pad_id)
    batch, length = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("length",
                                                                                  max=8192)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision not installed" etc.
    with _quiet_export():
        program = torch.onnx.export(
            LogitsOnly().eval(), (torch.from_numpy(ids), torch.from_numpy(mask)), dynamo=True,
            input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}), optimize=True,
            verbose=False)
        if program is None:
            raise ValueError("the ONNX exporter returned nothing; not compiling")
        program.save(str(target))


def compile_model(path: Path, *, max_tokens: int = 512) -> Path:
    """Export, verify and write the artifact for the model in `path`; returns its directory."""
    path = Path(path)
    manifest = read_manifest(path)
    version = str(manifest.get("version") or weights_hash(path))
    eager = load_eager(path, version, manifest, max_tokens=max_tokens)
    backend = eager.backend
    assert isinstance(backend, HFBackend)
    if not (path / TOKENIZER).is_file():
        raise ModelNotFound(f"{path} has no {TOKENIZER} (a fast tokenizer is needed to compile)")
    target = compiled_dir(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".compiling-", dir=target.parent))
    try:
        _export(backend, staging / MODEL)
        shutil.copy(path / TOKENIZER, staging / TOKENIZER)
        _verify(backend, _rust_tokenizer(staging / TOKENIZER, eager.max_tokens),
                _session(staging / MODEL, 1))
        meta = {"format": FORMAT, "name": eager.name, "version": version,
                "labels": eager.labels, "lowercase": eager.lowercase,
                "max_tokens": eager.max_tokens, "pad_id": backend.pad_id, "source": str(path)}
        (staging / META).write_text(json.dumps(meta, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _verify(backend: HFBackend, rust: Any, session: Any) -> None:
    for texts in _PROBES:
        hf_ids = backend.encode(texts)
        if [e.ids for e in rust.encode_batch(texts, add_special_tokens=True)] != hf_ids:
            raise ValueError("the Rust tokenizer does not match the HF tokenizer; not compiling")
        want = backend.logits(hf_ids)
        ids, mask = pad_batch(hf_ids, backend.pad_id)
        got = np.asarray(session.run(None, {"input_ids": ids, "attention_mask": mask})[0])
        if want.shape != got.shape or not np.allclose(want, got, atol=1e-4, rtol=1e-4):
            raise ValueError(f"the ONNX export disagrees with the eager model on shape "
                             f"{ids.shape}; not compiling")


def load_compiled(path: Path, version: str, manifest: dict[str, Any], *, max_tokens: int,
                  threads: int | None = None) -> ModelBundle | None:
    """The compiled bundle for exactly this version, or None (then the eager path is used)."""
    where = compiled_dir(version)
    if not (where / META).is_file():
        log.info("no compiled artifact for %s; loading with transformers "
                 "(`surgeserve model compile` makes the next start faster)", version)
        return None
    try:
        meta = json.loads((where / META).read_text())
        if meta.get("version") != version or meta.get("format") != FORMAT:
            return None
        limit = min(max_tokens, int(meta["max_tokens"]))
        backend = OnnxBackend(_session(where / MODEL, threads),
                              _rust_tokenizer(where / TOKENIZER, limit), int(meta["pad_id"]))
    except Exception:
        log.warning("compiled artifact in %s is unusable; loading with transformers", where,
                    exc_info=True)
        return None
    return ModelBundle(name=manifest.get("name") or meta["name"], version=version,
                       labels=list(meta["labels"]), lowercase=bool(meta["lowercase"]),
                       max_tokens=limit, path=path, manifest=manifest, backend=backend)

"""Compiled artifacts: a verified ONNX export + the Rust tokenizer, and what was measured on it.

Measured on these 2-core machines (README, Benchmarks): `import torch` alone is 1.3–4 s of a
cold start and importing transformers + `from_pretrained` another ~3 s; ONNX Runtime and
OpenVINO import and open the same model in ~0.5 s, and the process holds far less memory.
Serving from the artifact imports neither torch nor transformers.

An export can go wrong silently, so compiling *verifies* it against the eager model on padded
and unpadded batches of several shapes, and the Rust tokenizer against the HF tokenizer; on any
mismatch nothing is written and serving stays on the eager (transformers) path.

The artifact lives under the model home, named by the weights hash:
  model.onnx, tokenizer.json   what the engines run
  compiled.json                labels, limits, and the weights it was compiled from
                               (hash + file stats: the cheap identity check at load)
  guard.json                   held-out texts, with their labels when the model has them: what
                               the accuracy guard runs every candidate on
  choices.json                 per CPU: every candidate engine measured, the winner
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common.engines import Spec, pad_batch, rust_tokenizer
from common.engines.onnx import session
from common.engines.torch import TorchEngine, is_uncased, labels_of
from common.engines.torch import open_engine as open_torch
from common.errors import ModelNotFound
from common.identity import read_manifest, weights_hash, weights_stat
from common.settings import default_model_home, local_cache_dir

log = logging.getLogger(__name__)

META = "compiled.json"
MODEL = "model.onnx"
TOKENIZER = "tokenizer.json"
GUARD = "guard.json"
FORMAT = "onnx-1"  # bump when the artifact layout changes: old artifacts are then ignored
# Probe texts: short, long, mixed; padded batches and a batch with no padding at all.
PROBES = [
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


def compiled_dir(weights: str, home: Path | None = None) -> Path:
    """Where the artifact for these weights (their hash) lives under the model home
    (Settings.model_home; None: as Settings reads it now)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{weights}-{FORMAT}")
    return (home or default_model_home()) / "compiled" / safe


def writable_dir(artifact: Path, name: str = "") -> Path | None:
    """Where this machine may write what it measures or compiles for `artifact` (`name`: a
    subdirectory): the artifact's own directory when writable, else its stand-in under
    SURGE_CACHE_DIR (a runtime image's artifact is read-only). None when neither can be
    written: then nothing is kept, and the next start does the work again."""
    for base in places(artifact):
        where = base / name if name else base
        if can_write(where):
            return where
    return None


def places(artifact: Path) -> Iterator[Path]:
    """The artifact's own directory, then its stand-in under SURGE_CACHE_DIR: the second only
    when asked for (finding it reads the settings, ~3 ms, and a writable artifact or a
    record found there needs none)."""
    yield artifact
    yield local_cache_dir() / "compiled" / artifact.name


def can_write(where: Path) -> bool:
    """The directory exists (made now if need be) and this process may write in it."""
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(where, os.W_OK)


def read_meta(where: Path) -> dict[str, Any] | None:
    """The artifact's compiled.json when it is one of this format, else None."""
    try:
        meta = dict(json.loads((where / META).read_text()))
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == FORMAT else None


def write_json(file: Path, data: Any) -> bool:
    """Write atomically (a reader never sees half a file); False where it cannot be written
    (a read-only image: then what was measured is used, not kept)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{file.name}-", dir=file.parent)
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide it from a non-root server
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, file)
    except OSError as exc:
        log.warning("could not write %s (%s); kept in memory only", file, exc)
        return False
    return True


def share(tree: Path) -> None:
    """Let every user read a staged model or artifact: mkdtemp makes its directory 0700 and
    safetensors writes the weights 0600, which hid a root build from the image's non-root
    server."""
    for path in [tree, *tree.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))


def _export(engine: TorchEngine, target: Path) -> None:
    import torch

    class LogitsOnly(torch.nn.Module):
        """(input_ids, attention_mask) -> logits, the signature the artifact is called with."""

        def __init__(self) -> None:
            super().__init__()
            self.model = engine.model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            extra = ({"token_type_ids": torch.zeros_like(input_ids)}
                     if engine.uses_token_types else {})
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    ids, mask = pad_batch(engine.encode(PROBES[1]), engine.pad_id)
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


def compile_model(path: Path, *, max_tokens: int = 512, home: Path | None = None) -> Path:
    """Export, verify and write the artifact for the model in `path`; returns its directory.
    (`common.chooser.choose` then measures the engines on it.)"""
    path = Path(path)
    manifest = read_manifest(path)
    weights = weights_hash(path)
    eager = open_torch(path, Spec("transformers", "fp32", 1, os.cpu_count() or 1), max_tokens)
    if not (path / TOKENIZER).is_file():
        raise ModelNotFound(f"{path} has no {TOKENIZER} (a fast tokenizer is needed to compile)")
    target = compiled_dir(weights, home)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".compiling-", dir=target.parent))
    try:
        _export(eager, staging / MODEL)
        shutil.copy(path / TOKENIZER, staging / TOKENIZER)
        _verify(eager, rust_tokenizer(staging / TOKENIZER, eager.max_tokens),
                session(staging / MODEL, 1))
        labels = labels_of(eager)
        meta = {"format": FORMAT, "name": manifest.get("name") or path.name,
                "version": str(manifest.get("version") or weights), "labels": labels,
                "lowercase": is_uncased(eager), "max_tokens": eager.max_tokens,
                "pad_id": eager.pad_id, "source": str(path),
                "weights": {"hash": weights, "stat": weights_stat(path)}}
        (staging / META).write_text(json.dumps(meta, indent=2) + "\n")
        (staging / GUARD).write_text(json.dumps(guard_set(path, manifest)) + "\n")
        share(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def guard_set(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The texts the accuracy guard runs: the model's held-out split with its labels when the
    manifest names how it was trained (the default model), else unlabelled corpus snippets
    (agreement with fp32 only), else the probes. Kept in the artifact, so a server measuring
    on a new CPU needs neither the corpus nor transformers."""
    try:
        if isinstance(manifest.get("training"), dict):
            from common.corpus import LABELS
            from common.training import TrainConfig, heldout_examples

            examples = heldout_examples(TrainConfig(**manifest["training"]))
            return {"source": "held-out split", "texts": [e.text for e in examples],
                    "labels": [LABELS[e.label] for e in examples]}
        from common.corpus import snippets

        return {"source": "corpus snippets (unlabelled)", "texts": snippets(2000),
                "labels": None}
    except (ModelNotFound, TypeError, OSError) as exc:
        log.info("no held-out texts for %s (%s): the guard compares answers on the probes",
                 path, exc)
        return {"source": "probes", "texts": [t for batch in PROBES for t in batch],
                "labels": None}


def _verify(engine: TorchEngine, rust: Any, onnx_session: Any) -> None:
    for texts in PROBES:
        hf_ids = engine.encode(texts)
        if [e.ids for e in rust.encode_batch(texts, add_special_tokens=True)] != hf_ids:
            raise ValueError("the Rust tokenizer does not match the HF tokenizer; not compiling")
        want = engine.logits(hf_ids)
        ids, mask = pad_batch(hf_ids, engine.pad_id)
        got = np.asarray(onnx_session.run(None, {"input_ids": ids, "attention_mask": mask})[0])
        if want.shape != got.shape or not np.allclose(want, got, atol=1e-4, rtol=1e-4):
            raise ValueError(f"the ONNX export disagrees with the eager model on shape "
                             f"{ids.shape}; not compiling")

"""Compiled artifacts: a verified TorchScript trace + the Rust tokenizer, for a fast cold start.

Measured on these 2-core machines: importing transformers and `from_pretrained` cost ~3 s of
a ~5 s start; `torch.jit.load` of the trace costs 0.2 s (`torch.export.load` of the same model
took 4.3 s, so the deprecated-but-present TorchScript runtime is used on purpose). A trace can
silently bake in shapes or mask shortcuts, so compiling *verifies* the trace against the eager
model on padded and unpadded batches of several shapes, and the Rust tokenizer against the
HF tokenizer; on any mismatch nothing is written and serving stays on the eager path.
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

from common.bundle import HFBackend, ModelBundle, load_eager, pad_batch, read_manifest
from common.errors import ModelNotFound
from common.settings import default_model_home

log = logging.getLogger(__name__)

META = "compiled.json"
TRACE = "traced.pt"
TOKENIZER = "tokenizer.json"
# Probe texts: short, long, mixed; padded batches and a batch with no padding at all.
_PROBES = [
    ["ok"],
    ["short one", "a much longer sentence with quite a few more tokens than the other one"] * 3,
    ["same length a", "same length b", "same length c"],
    ["word " * 400, "tiny"],
]


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch.jit warns that it is deprecated and that traces may not generalise; we know, and
    verify the trace instead (see module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit.*")
        warnings.filterwarnings("ignore", message=".*[Tt]race.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def compiled_dir(version: str) -> Path:
    """Where the artifact for a model version and this torch version lives."""
    import torch

    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{version}-torch{torch.__version__}")
    return default_model_home() / "compiled" / safe


class TracedBackend:
    """A TorchScript module and a `tokenizers.Tokenizer`: no transformers at serve time."""

    kind = "torchscript"

    def __init__(self, module: Any, tokenizer: Any, pad_id: int):
        self.module = module
        self.tokenizer = tokenizer
        self.pad_id = pad_id

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids via the Rust tokenizer (truncation set at load)."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)]

    def logits(self, input_ids: Any, attention_mask: Any) -> Any:
        """One forward pass of the trace."""
        return self.module(input_ids, attention_mask)


def _wrapper(model: Any, uses_token_types: bool) -> Any:
    import torch

    class LogitsOnly(torch.nn.Module):
        """(input_ids, attention_mask) -> logits, the signature the trace is called with."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            extra = {"token_type_ids": torch.zeros_like(input_ids)} if uses_token_types else {}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    return LogitsOnly().eval()


def _rust_tokenizer(file: Path, max_tokens: int) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


def compile_model(path: Path, *, max_tokens: int = 512) -> Path:
    """Trace, verify and write the artifact for the model in `path`; returns its directory."""
    import torch

    path = Path(path)
    manifest = read_manifest(path)
    from common.bundle import weights_hash

    version = str(manifest.get("version") or weights_hash(path))
    eager = load_eager(path, version, manifest, max_tokens=max_tokens)
    backend = eager.backend
    assert isinstance(backend, HFBackend)
    if not (path / TOKENIZER).is_file():
        raise ModelNotFound(f"{path} has no {TOKENIZER} (a fast tokenizer is needed to compile)")
    rust = _rust_tokenizer(path / TOKENIZER, eager.max_tokens)
    example = pad_batch(backend.encode(_PROBES[1]), backend.pad_id)  # padded: mask is traced
    with _quiet_jit(), torch.inference_mode():
        traced = torch.jit.trace(_wrapper(backend.model, backend.uses_token_types), example,
                                 check_trace=False)
        traced = torch.jit.freeze(traced)
    _verify(eager, backend, rust, traced)
    target = compiled_dir(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".compiling-", dir=target.parent))
    try:
        with _quiet_jit():
            torch.jit.save(traced, str(staging / TRACE))
        shutil.copy(path / TOKENIZER, staging / TOKENIZER)
        meta = {"name": eager.name, "version": version, "labels": eager.labels,
                "lowercase": eager.lowercase, "max_tokens": eager.max_tokens,
                "pad_id": backend.pad_id, "source": str(path), "torch": torch.__version__}
        (staging / META).write_text(json.dumps(meta, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _verify(eager: ModelBundle, backend: HFBackend, rust: Any, traced: Any) -> None:
    import torch

    for texts in _PROBES:
        hf_ids = backend.encode(texts)
        if [e.ids for e in rust.encode_batch(texts, add_special_tokens=True)] != hf_ids:
            raise ValueError("the Rust tokenizer does not match the HF tokenizer; not compiling")
        ids, mask = pad_batch(hf_ids, backend.pad_id)
        with torch.inference_mode():
            want, got = backend.logits(ids, mask).float(), traced(ids, mask).float()
        if want.shape != got.shape or not torch.allclose(want, got, atol=1e-4, rtol=1e-4):
            raise ValueError(f"the trace disagrees with the eager model on shape "
                             f"{tuple(ids.shape)}; not compiling")


def load_compiled(path: Path, version: str, manifest: dict[str, Any], *,
                  max_tokens: int) -> ModelBundle | None:
    """The compiled bundle for exactly this version, or None (then the eager path is used)."""
    import torch

    where = compiled_dir(version)
    if not (where / META).is_file():
        log.info("no compiled artifact for %s; loading with transformers "
                 "(`surgeserve model compile` makes the next start faster)", version)
        return None
    try:
        meta = json.loads((where / META).read_text())
        if meta.get("version") != version:
            return None
        limit = min(max_tokens, int(meta["max_tokens"]))
        with _quiet_jit():
            module = torch.jit.load(str(where / TRACE), map_location="cpu")
        backend = TracedBackend(module.eval(), _rust_tokenizer(where / TOKENIZER, limit),
                                int(meta["pad_id"]))
    except Exception:
        log.warning("compiled artifact in %s is unusable; loading with transformers", where,
                    exc_info=True)
        return None
    return ModelBundle(name=manifest.get("name") or meta["name"], version=version,
                       labels=list(meta["labels"]), lowercase=bool(meta["lowercase"]),
                       max_tokens=limit, path=path, manifest=manifest, backend=backend)

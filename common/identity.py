"""What a model is: its manifest, the hash of its weights, and whether the manifest's version
still describes the weights beside it.

A manifest's version that claims to be a weights hash is checked at every load, cheaply: the
artifact records the weight files' size and mtime with the hash it compiled; when those stats
still match, the recorded hash stands; otherwise the weights are hashed again (~0.1 s per
100 MB). Weights changed under an old `surgeserve.json` then serve under their own hash, never
under the old version (whose cached answers and compiled artifact belong to other weights).
A directory shipped without weights (the runtime image) is the artifact's: its record stands.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ModelNotFound

log = logging.getLogger(__name__)

MANIFEST = "surgeserve.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HASH = re.compile(r"[0-9a-f]{16}")  # what weights_hash makes


def read_manifest(path: Path) -> dict[str, Any]:
    """The surgeserve manifest beside the weights, or {} for a plain Hugging Face directory."""
    file = path / MANIFEST
    if not file.is_file():
        return {}
    return dict(json.loads(file.read_text()))


def has_weights(path: Path) -> bool:
    """Whether the directory holds weight files at all."""
    return any((path / name).is_file() for name in WEIGHT_FILES) or any(
        path.glob("model-*.safetensors"))


def weight_files(path: Path) -> list[Path]:
    """The weight files of a model directory, in hashing order."""
    files = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    files += sorted(p for p in path.glob("model-*.safetensors"))
    if not files:
        raise ModelNotFound(f"no weights in {path}", {"expected": list(WEIGHT_FILES)})
    return files


def weights_hash(path: Path) -> str:
    """A short content hash of the weight files: the version of a bundle without a manifest."""
    digest = hashlib.blake2b(digest_size=8)
    for file in weight_files(path):
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def weights_stat(path: Path) -> list[list[Any]]:
    """Name, size and mtime (ns) of each weight file: changes whenever the weights are
    rewritten, at the cost of a few stat calls."""
    return [[f.name, (s := f.stat()).st_size, s.st_mtime_ns] for f in weight_files(path)]


@dataclass(frozen=True)
class Identity:
    """The version a bundle is served under and the hash of the weights it serves."""

    version: str
    weights: str
    stale: bool = False  # the manifest claimed other weights


def resolve(path: Path, manifest: dict[str, Any], recorded: dict[str, Any] | None) -> Identity:
    """The identity of the model in `path`; `recorded` is what an artifact noted about the
    weights it was compiled from ({"hash", "stat"}), if any."""
    claimed = str(manifest.get("version") or "")
    known = str(recorded.get("hash") or "") if recorded else ""
    if known and not has_weights(path):
        # Shipped without its weights (the runtime image: no torch there to use them): the
        # artifact compiled from them serves, so what it recorded is the identity.
        weights = known
    elif known and recorded and recorded.get("stat") == weights_stat(path):
        weights = known
    else:
        weights = weights_hash(path)
    if not claimed:
        return Identity(weights, weights)
    if _HASH.fullmatch(claimed) and claimed != weights:
        log.warning("the manifest's version %s does not match the weights beside it (%s): "
                    "serving as %s; run `surgeserve model compile` for a fast start", claimed,
                    weights, weights, extra={"model_dir": str(path)})
        return Identity(weights, weights, stale=True)
    return Identity(claimed, weights)  # a chosen label (not a hash): kept, weights still known

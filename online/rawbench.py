"""`surgeserve model bench`: raw in-process batched model throughput, the ceiling for the service.

Same texts, same thread count and batch size as the service uses; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.bundle import load_bundle
from common.corpus import snippets
from common.settings import Settings
from common.training import default_model_dir


def measure(texts: list[str], batch_size: int, path: Path, settings: Settings) -> dict[str, float]:
    """Texts per second of bundle.predict over batches of `batch_size`, in the given order,
    with the service's forward-pass settings."""
    bundle = load_bundle(path, threads=settings.threads, compiled=settings.compiled)
    batches = [texts[start : start + batch_size] for start in range(0, len(texts), batch_size)]

    def run(batch: list[str]) -> None:
        bundle.predict(batch, max_forward_batch=batch_size,
                       max_forward_tokens=settings.max_forward_tokens,
                       max_padding=settings.max_padding)

    started = time.perf_counter()
    with ThreadPoolExecutor(settings.workers) as pool:  # the service's worker layout
        list(pool.map(run, batches))
    seconds = time.perf_counter() - started
    return {"texts": len(texts), "batch_size": batch_size, "workers": settings.workers,
            "threads": settings.threads, "seconds": round(seconds, 3),
            "texts_per_s": round(len(texts) / seconds, 2)}


def main(args: argparse.Namespace) -> int:
    """CLI entry."""
    settings = Settings()
    path = Path(args.path) if args.path else (settings.model_dir or default_model_dir())
    result = measure(snippets(args.texts), args.batch_size, path, settings)
    print(json.dumps(result))
    return 0

"""The cached-prediction pipeline: normalise → key → LRU → Redis MGET → compute the misses →
write back. The one place where a text becomes a cached prediction: the online
PredictionService (misses go to the micro-batcher, single-flight) and the jobs ChunkRunner
(a chunk's misses sorted as a whole on every engine stream) both run it; they differ only in
how the misses are computed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Counter

from common.bundle import ModelBundle, Ranked
from common.cache import PredictionCache
from common.payload import PayloadLogger

# The misses' texts by cache key in, their results by key out.
Compute = Callable[[dict[str, str]], Awaitable[dict[str, Ranked]]]


@dataclass(frozen=True)
class Prediction:
    """One answer: the top label and every label's score, highest first."""

    label: str
    score: float
    scores: Ranked
    cached: bool


class CachedPipeline:
    """Cached predictions for one model; `compute` answers what the cache does not hold.

    `writes_back`: the pipeline stores what `compute` returned (the chunk runner). The online
    service stores results itself as each batch settles (False), so that a result is kept
    even when the requests that waited for it have timed out, and written once however many
    requests shared it."""

    def __init__(self, bundle: ModelBundle, cache: PredictionCache | None, compute: Compute,
                 *, writes_back: bool = True, predictions: Counter | None = None,
                 payload: PayloadLogger | None = None):
        self.bundle = bundle
        self.cache = cache
        self.compute = compute
        self.writes_back = writes_back
        self.predictions = predictions  # surge_predictions_total (online only)
        self.payload = payload  # prediction events (SURGE_PAYLOAD_SINK), None when off

    async def run(self, texts: list[str], request_id: str | None = None) -> list[Prediction]:
        """Predictions for texts already checked (common/textnorm.check_texts), order kept;
        duplicates are computed once."""
        started = time.perf_counter()
        keys: list[str] = []
        by_key: dict[str, str] = {}
        for raw in texts:
            text, key = self.bundle.keyed(raw)
            keys.append(key)
            by_key.setdefault(key, text)
        found = await self.cache.lookup(list(by_key)) if self.cache is not None else {}
        misses = {k: t for k, t in by_key.items() if k not in found}
        computed = await self.compute(misses) if misses else {}
        if self.writes_back and computed and self.cache is not None:
            self.cache.store(computed)  # online traffic benefits from batch work
        out = []
        for key in keys:
            cached = key in found
            ranked = found[key] if cached else computed[key]
            out.append(Prediction(ranked[0][0], ranked[0][1], ranked, cached))
            if self.predictions is not None:
                self.predictions.labels(self.bundle.name, ranked[0][0]).inc()
        if self.payload is not None:
            self.payload.log(self.bundle, texts, keys, out, started, request_id)
        return out

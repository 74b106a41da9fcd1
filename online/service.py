"""PredictionService: the cached-prediction pipeline (common/pipeline.py) with its misses
single-flight through the micro-batcher.

Transport-free: HTTP routes, CloudEvents and Celery tasks all call the same methods.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

from common.bundle import ModelBundle, Ranked
from common.cache import PredictionCache
from common.errors import DeadlineExceeded
from common.metrics import Metrics
from common.payload import PayloadLogger
from common.pipeline import CachedPipeline, Prediction
from common.textnorm import check_texts
from online.batcher import MicroBatcher

__all__ = ["Limits", "Prediction", "PredictionService"]


@dataclass(frozen=True)
class Limits:
    max_text_chars: int
    bulk_max_items: int
    request_timeout_s: float


class PredictionService:
    """Cached, single-flight, micro-batched predictions for one model."""

    def __init__(self, bundle: ModelBundle, batcher: MicroBatcher[str, Ranked],
                 cache: PredictionCache | None, metrics: Metrics, limits: Limits,
                 payload: PayloadLogger | None = None):
        self.bundle = bundle
        self.batcher = batcher
        self.cache = cache
        self.metrics = metrics
        self.limits = limits
        self.pipeline = CachedPipeline(bundle, cache, self._compute, writes_back=False,
                                       predictions=metrics.predictions, payload=payload)
        self._inflight: dict[str, asyncio.Future[Ranked]] = {}
        self._to_write: dict[str, Ranked] = {}

    async def predict(self, text: str) -> Prediction:
        """Predict one text."""
        return (await self.predict_many([text], bulk=False))[0]

    async def predict_many(self, texts: list[str], *, bulk: bool = True) -> list[Prediction]:
        """Predict many texts, order kept; duplicates are computed once."""
        check_texts(texts, max_chars=self.limits.max_text_chars,
                    max_items=self.limits.bulk_max_items if bulk else None, indexed=bulk)
        return await self.pipeline.run(texts)

    async def _compute(self, misses: dict[str, str]) -> dict[str, Ranked]:
        """The misses through the micro-batcher; a text already being computed for another
        request is waited for, not computed again."""
        deadline = time.monotonic() + self.limits.request_timeout_s
        new = sum(1 for key in misses if key not in self._inflight)
        self.batcher.admit(new)  # all or nothing: a request is refused before it queues
        futures: dict[str, asyncio.Future[Ranked]] = {}
        for key, text in misses.items():
            future = self._inflight.get(key)
            if future is None:  # first request for this text: it leads, later ones wait on it
                future = self.batcher.submit(text, deadline)
                self._inflight[key] = future
                future.add_done_callback(functools.partial(self._settled, key))
            futures[key] = future
        waiting = asyncio.gather(*(asyncio.shield(f) for f in futures.values()))
        try:
            results = await asyncio.wait_for(waiting, timeout=deadline - time.monotonic())
        except TimeoutError:
            raise DeadlineExceeded(
                f"no answer within {self.limits.request_timeout_s} s",
                {"timeout_s": self.limits.request_timeout_s}) from None
        return dict(zip(futures, results, strict=True))

    def _settled(self, key: str, future: asyncio.Future[Ranked]) -> None:
        self._inflight.pop(key, None)
        if future.cancelled() or future.exception() is not None:
            return
        if self.cache is None:
            return
        # Results of one batch settle in one loop turn: gather them into one cache write.
        if not self._to_write:
            asyncio.get_running_loop().call_soon(self._write_back)
        self._to_write[key] = future.result()

    def _write_back(self) -> None:
        items, self._to_write = self._to_write, {}
        if self.cache is not None:
            self.cache.store(items)

"""PredictionService: normalise → key → LRU → Redis MGET → single-flight → micro-batcher.

Transport-free: HTTP routes, CloudEvents and Celery tasks all call the same methods.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

from common.bundle import ModelBundle, Ranked
from common.cache import PredictionCache
from common.errors import DeadlineExceeded, TooManyItems
from common.metrics import Metrics
from common.payload import PayloadLogger
from common.textnorm import check_text
from online.batcher import MicroBatcher


@dataclass(frozen=True)
class Prediction:
    """One answer: the top label and every label's score, highest first."""

    label: str
    score: float
    scores: Ranked
    cached: bool


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
        self.payload = payload  # prediction events (SURGE_PAYLOAD_SINK), None when off
        self._inflight: dict[str, asyncio.Future[Ranked]] = {}
        self._to_write: dict[str, Ranked] = {}

    async def predict(self, text: str) -> Prediction:
        """Predict one text."""
        return (await self.predict_many([text], bulk=False))[0]

    async def predict_many(self, texts: list[str], *, bulk: bool = True) -> list[Prediction]:
        """Predict many texts, order kept; duplicates are computed once."""
        if bulk and len(texts) > self.limits.bulk_max_items:
            raise TooManyItems(f"at most {self.limits.bulk_max_items} texts per request",
                               {"max_items": self.limits.bulk_max_items, "got": len(texts)})
        started = time.perf_counter()
        keys, by_key = self._keys(texts, bulk=bulk)
        found = await self.cache.lookup(list(by_key)) if self.cache is not None else {}
        computed = await self._compute({k: t for k, t in by_key.items() if k not in found})
        out = []
        for key in keys:
            cached = key in found
            ranked = found[key] if cached else computed[key]
            out.append(Prediction(ranked[0][0], ranked[0][1], ranked, cached))
            self.metrics.predictions.labels(self.bundle.name, ranked[0][0]).inc()
        if self.payload is not None:
            self.payload.log(self.bundle, texts, keys, out, started)
        return out

    def _keys(self, texts: list[str], *, bulk: bool) -> tuple[list[str], dict[str, str]]:
        """Validate and normalise; returns each text's key and the distinct keys' texts."""
        keys: list[str] = []
        by_key: dict[str, str] = {}
        for index, raw in enumerate(texts):
            check_text(raw, max_chars=self.limits.max_text_chars,
                       index=index if bulk else None)
            text, key = self.bundle.keyed(raw)
            keys.append(key)
            by_key.setdefault(key, text)
        return keys, by_key

    async def _compute(self, misses: dict[str, str]) -> dict[str, Ranked]:
        if not misses:
            return {}
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

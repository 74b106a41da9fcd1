"""The process's runtime state: model loading, readiness, draining (Knative runtime contract)."""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from common.bundle import ModelBundle, Ranked
from common.cache import PredictionCache, RedisTier
from common.errors import NotReady
from common.metrics import Metrics
from common.settings import Settings
from common.training import load_configured_model
from online.batcher import MicroBatcher
from online.service import Limits, PredictionService

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a request needs, built once per app."""

    settings: Settings
    metrics: Metrics
    bundle: ModelBundle | None = None
    service: PredictionService | None = None
    cache: PredictionCache | None = None
    draining: bool = False
    load_error: str | None = None
    _loader: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def ready(self) -> bool:
        """Model loaded and warmed, and not draining."""
        return self.service is not None and not self.draining

    def require_service(self) -> PredictionService:
        """The service, or NotReady while loading (or after a failed load)."""
        if self.service is None:
            raise NotReady("the model is still loading", {"load_error": self.load_error},
                           retry_after=self.settings.retry_after_s)
        return self.service

    def begin_drain(self) -> None:
        """SIGTERM: readiness answers 503 from now on; in-flight work continues."""
        if not self.draining:
            log.info("draining: readiness now 503")
        self.draining = True
        self.metrics.ready.set(0)

    async def start(self, bundle: ModelBundle | None,
                    bundle_future: Future[ModelBundle] | None = None) -> None:
        """Build the service now (bundle given), or once the model has loaded in the
        background (a future from a preloading thread, else loaded here in a thread)."""
        if bundle is not None:
            self._wire(bundle)
            return
        self._loader = asyncio.get_running_loop().create_task(self._load(bundle_future))

    async def _load(self, bundle_future: Future[ModelBundle] | None) -> None:
        try:
            if bundle_future is not None:
                bundle = await asyncio.wrap_future(bundle_future)
            else:
                bundle = await asyncio.to_thread(load_configured_model, self.settings)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model load failed")
            return
        self._wire(bundle)

    def _wire(self, bundle: ModelBundle) -> None:
        s, m = self.settings, self.metrics
        self.bundle = bundle
        if s.cache_enabled:
            self.cache = PredictionCache(s.lru_size, RedisTier.from_settings(s, m), m)

        def run_batch(texts: list[str]) -> list[Ranked]:
            with m.forward_seconds.time():
                return bundle.predict(texts, max_forward_batch=s.max_batch_size,
                                      max_forward_tokens=s.max_forward_tokens)

        batcher: MicroBatcher[str, Ranked] = MicroBatcher(
            run_batch, max_batch_size=s.max_batch_size, max_queue=s.max_queue,
            max_wait_ms=s.max_wait_ms, retry_after_s=s.retry_after_s, metrics=m,
            workers=s.workers)
        batcher.start()
        limits = Limits(s.max_text_chars, s.bulk_max_items, s.request_timeout_s)
        self.service = PredictionService(bundle, batcher, self.cache, m, limits)
        m.model_info.labels(bundle.name, bundle.version, s.k_service, s.k_revision,
                            s.k_configuration).set(1)
        m.model_load_seconds.set(bundle.load_seconds)
        # Startup leaves many long-lived objects (with transformers/torch loaded ~180k; a full
        # GC pass over them took 89 ms, a stall every request on the loop waits out). Freeze.
        gc.collect()
        gc.freeze()
        if not self.draining:
            m.ready.set(1)
        log.info("ready", extra={"model": bundle.name, "version": bundle.version})

    async def cache_state(self) -> dict[str, Any]:
        """What /readyz says about the cache."""
        if not self.settings.cache_enabled:
            return {"enabled": False}
        redis = self.cache.redis if self.cache else None
        state = "not configured" if redis is None else ("up" if await redis.ping() else "down")
        return {"enabled": True, "lru_entries": len(self.cache.lru) if self.cache else 0,
                "redis": state}

    async def stop(self) -> None:
        """Finish queued work, flush cache writes, close connections."""
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        if self.service is not None:
            await self.service.batcher.stop()
        if self.cache is not None:
            await self.cache.close()

"""The process's runtime state: model loading, readiness, draining (Knative runtime contract)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from common.bundle import ModelBundle, Ranked, serving_batching
from common.cache import PredictionCache, RedisTier
from common.errors import ModelNotFound, NotReady, UnknownModel
from common.metrics import Metrics
from common.models import ModelSet
from common.payload import SOURCE_ONLINE, PayloadLogger
from common.settings import Settings
from online.batcher import MicroBatcher
from online.service import Limits, PredictionService

log = logging.getLogger(__name__)


Bundles = dict[str, ModelBundle]  # name -> model, the default first


@dataclass
class Runtime:
    """Everything a request needs, built once per app: one cached, micro-batched service per
    model (each with its own batcher), sharing one cache."""

    settings: Settings
    metrics: Metrics
    services: dict[str, PredictionService] = field(default_factory=dict)
    default: str | None = None
    cache: PredictionCache | None = None
    payload: PayloadLogger | None = None
    draining: bool = False
    load_error: str | None = None
    # Called when the model cannot be served (ModelNotFound: waiting will not fix it);
    # `surgeserve serve` then exits 78.
    on_unservable: Callable[[], None] | None = None
    _loader: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def service(self) -> PredictionService | None:
        """The default model's service (None until loaded)."""
        return self.services.get(self.default) if self.default else None

    @property
    def bundle(self) -> ModelBundle | None:
        """The default model (None until loaded)."""
        return self.service.bundle if self.service else None

    @property
    def ready(self) -> bool:
        """Every model loaded and warmed, and not draining."""
        return bool(self.services) and not self.draining

    def require_service(self, name: str | None = None) -> PredictionService:
        """A model's service (None: the default); NotReady while loading (or after a failed
        load), UnknownModel (404) for a name not served."""
        if not self.services:
            raise NotReady("the model is still loading", {"load_error": self.load_error},
                           retry_after=self.settings.retry_after_s)
        service = self.services.get(name or str(self.default))
        if service is None:
            raise UnknownModel(f"no model named {name!r}",
                               {"model": name, "available": list(self.services)})
        return service

    def begin_drain(self) -> None:
        """SIGTERM: readiness answers 503 from now on; in-flight work continues."""
        if not self.draining:
            log.info("draining: readiness now 503")
        self.draining = True
        self.metrics.ready.set(0)

    async def start(self, bundles: Bundles | None,
                    bundles_future: Future[Bundles] | None = None) -> None:
        """Build the services now (models given), or once the models have loaded in the
        background (a future from a preloading thread, else loaded here in a thread)."""
        if bundles:
            self._wire(bundles)
            return
        self._loader = asyncio.get_running_loop().create_task(self._load(bundles_future))

    async def _load(self, bundles_future: Future[Bundles] | None) -> None:
        try:
            if bundles_future is not None:
                bundles = await asyncio.wrap_future(bundles_future)
            else:
                bundles = await asyncio.to_thread(ModelSet(self.settings).load_all)
        except ModelNotFound as exc:  # no model, or no engine for it: one clear line
            self.load_error = f"{exc.code}: {exc.message}"
            log.error("cannot serve: %s", exc.message, extra={"detail": exc.detail})
            if self.on_unservable is not None:
                self.on_unservable()
            return
        except Exception as exc:
            self.load_error = type(exc).__name__  # clients see it: the message is logged
            log.exception("model load failed")
            return
        self._wire(bundles)

    def _wire(self, bundles: Bundles) -> None:
        s, m = self.settings, self.metrics
        if s.cache_enabled:
            self.cache = PredictionCache(s.lru_size, RedisTier.from_settings(s, m), m)
        limits = Limits(s.max_text_chars, s.bulk_max_items, s.request_timeout_s)
        self.payload = PayloadLogger.from_settings(s, m.payload_events, source=SOURCE_ONLINE)
        if self.payload is not None:
            self.payload.start_on_loop()
        services = {}
        for name, bundle in bundles.items():
            batcher = self._batcher(name, bundle)
            batcher.start()
            services[name] = PredictionService(bundle, batcher, self.cache, m, limits,
                                               self.payload)
            m.model_info.labels(bundle.name, bundle.version, s.k_service, s.k_revision,
                                s.k_configuration).set(1)
        self.services, self.default = services, next(iter(bundles))
        m.model_load_seconds.set(sum(b.load_seconds for b in bundles.values()))
        # Startup leaves many long-lived objects (with transformers/torch loaded ~180k; a full
        # GC pass over them took 89 ms, a stall every request on the loop waits out). Freeze.
        gc.collect()
        gc.freeze()
        if not self.draining:
            m.ready.set(1)
        log.info("ready", extra={"models": {n: b.version for n, b in bundles.items()},
                                 "default": self.default})

    def _batcher(self, name: str, bundle: ModelBundle) -> MicroBatcher[str, Ranked]:
        """One model worker per engine stream; batches cut by the engine's own rule unless
        the settings say otherwise."""
        s = self.settings
        forward = self.metrics.forward_seconds.labels(name)
        cut = serving_batching(bundle, s)

        def run_batch(texts: list[str]) -> list[Ranked]:
            with forward.time():
                return bundle.predict(texts, max_forward_batch=cut.max_batch,
                                      max_forward_tokens=cut.max_forward_tokens,
                                      max_padding=cut.max_padding)

        return MicroBatcher(run_batch, max_batch_size=cut.max_batch, max_queue=s.max_queue,
                            max_wait_ms=s.max_wait_s * 1000, retry_after_s=s.retry_after_s,
                            metrics=self.metrics, workers=s.model_workers or bundle.streams,
                            model=name, max_queue_wait_s=s.max_queue_wait_s)

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
        for service in self.services.values():
            await service.batcher.stop()
        if self.cache is not None:
            await self.cache.close()
        if self.payload is not None:  # after the batchers: their last answers are queued
            await self.payload.aclose()

"""`surgeserve serve`: uvicorn with the Knative runtime contract (PORT, SIGTERM drain)."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import Future
from threading import Thread
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from common.bundle import ModelBundle
from common.logs import setup_logging
from common.memory import tune_malloc
from common.settings import Settings

if TYPE_CHECKING:
    from online.runtime import Runtime

log = logging.getLogger(__name__)


def preload(settings: Settings) -> Future[dict[str, ModelBundle]]:
    """Start loading the models (weights, warm-up) in a thread right away, so it overlaps
    importing and starting the web stack: part of cold start."""
    future: Future[dict[str, ModelBundle]] = Future()

    def work() -> None:
        from common.models import ModelSet

        try:
            future.set_result(ModelSet(settings).load_all())
        except BaseException as exc:
            future.set_exception(exc)

    Thread(target=work, name="model-load", daemon=True).start()
    return future


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: readiness turns 503 at once; after drain_delay_s uvicorn stops
    accepting and lets in-flight requests finish (up to shutdown_grace_s)."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime):
        super().__init__(config)
        self.runtime = runtime

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self.runtime.draining
        self.runtime.begin_drain()
        delay = self.runtime.settings.drain_delay_s
        if first and delay > 0:
            log.info("signal %d: draining for %.1f s before closing", sig, delay)
            asyncio.get_running_loop().call_later(delay, self._exit, sig, frame)
            return
        self._exit(sig, frame)

    def _exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after shutdown, so the process would die "by
        # SIGTERM". A drained shutdown is a clean one: exit 0 (the Knative contract).
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list) and sig in (signal.SIGTERM, signal.SIGINT):
            captured[:] = [s for s in captured if s != sig]


def serve(settings: Settings | None = None) -> int:
    """Run the API until a signal; exit 0 after a clean drain."""
    settings = settings or Settings()
    tune_malloc(settings.malloc_arenas, settings.mmap_threshold_bytes)
    setup_logging(settings)
    log.info("starting", extra={"settings": settings.masked()})
    settings.warn_shared_redis()
    models = preload(settings) if settings.role != "jobs" else None
    from online.app import create_app  # after preload: fastapi's import overlaps the load

    app = create_app(settings, bundles_future=models)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        lifespan="on", server_header=False)
    server = DrainingServer(config, app.state.runtime)
    server.run()
    return 0

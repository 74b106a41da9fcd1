"""`surgeserve serve`: uvicorn with the Knative runtime contract (PORT, SIGTERM drain)."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from concurrent.futures import Future
from threading import Thread
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from common.bundle import ModelBundle
from common.logs import setup_logging
from common.memory import tune_malloc
from common.settings import Settings
from online.connections import ConnectionLimits, connection_cap, guarded_protocol, raise_fd_limit

if TYPE_CHECKING:
    from fastapi import FastAPI

    from online.runtime import Runtime

log = logging.getLogger(__name__)
# sysexits' EX_CONFIG: the model cannot be served as configured (none there, or no engine for
# it in this install); restarting will not help, and the log line before says why.
EXIT_UNSERVABLE = 78


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


def server_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for the app: the Knative contract and the connection limits
    (online/connections.py). Tests serve their apps with it too."""
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = connection_cap(settings.max_connections, fd_limit)
    if cap < settings.max_connections:
        log.warning("SURGE_MAX_CONNECTIONS=%d lowered to %d to fit the open-files limit (%d)",
                    settings.max_connections, cap, fd_limit)
    limits = ConnectionLimits(
        header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
        body_min_rate=settings.body_min_rate, max_connections=cap,
        metrics=app.state.runtime.metrics)
    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_config": None, "access_log": False,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s) or None,
        "lifespan": "on", "server_header": False, "http": guarded_protocol(limits),
        "timeout_keep_alive": settings.keep_alive_s} | overrides
    return uvicorn.Config(app, **options)


def serve(settings: Settings | None = None) -> int:
    """Run the API until a signal; exit 0 after a clean drain, 78 when the model cannot be
    served."""
    settings = settings or Settings()
    tune_malloc(settings.malloc_arenas, settings.mmap_threshold_bytes)
    setup_logging(settings)
    log.info("starting", extra={"settings": settings.masked()})
    settings.warn_shared_redis()
    raise_fd_limit()  # connections are capped below it (SURGE_MAX_CONNECTIONS)
    models = preload(settings) if settings.role != "jobs" else None
    from online.app import create_app  # after preload: fastapi's import overlaps the load

    app = create_app(settings, bundles_future=models)
    server = DrainingServer(server_config(app, settings), app.state.runtime)
    refused: list[bool] = []

    def refuse() -> None:  # on the event loop, after the runtime logged why
        refused.append(True)
        server.should_exit = True

    app.state.runtime.on_unservable = refuse
    server.run()
    if refused:
        log.error("exiting %d: the model cannot be served (the line above says why)",
                  EXIT_UNSERVABLE)
        return EXIT_UNSERVABLE
    return 0

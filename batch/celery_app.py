"""The Celery app (a factory: no module-level app, no work at import) and its one task.

Reliability settings, each for a reason:
- JSON only (pickle refused): a broker message must never execute code on a worker.
- acks_late + reject_on_worker_lost: a chunk's message is acknowledged after its results are
  written, so a worker killed mid-chunk leaves it to be redelivered; results are idempotent.
- prefetch 1: a worker holds one chunk at a time, so a dead worker strands at most one.
- visibility_timeout (broker and result backend) above the longest chunk: otherwise Redis
  redelivers a chunk that is still running. A dead worker's chunk comes back much sooner: its
  heartbeat expires and the sweeper puts its message back (batch/liveness.py).
- a full jobs Redis never stops the worker: chunks wait for room (batch/runner.py), and an
  acknowledgement it refuses restarts the consumer instead (broker_channel_error_retry).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from common.errors import SurgeError
from common.settings import Settings

log = logging.getLogger(__name__)

RUN_CHUNK = "surgeserve.run_chunk"
# An unacked message no live worker lists is taken back only once older than this: a worker
# lists a message milliseconds after kombu records it.
RECLAIM_GRACE_S = 5.0
_runner: Any = None  # one ChunkRunner per worker process: the model loads once, not per task
_app: Celery | None = None  # `celery -A batch.celery_app`'s app, built on first access


def __getattr__(name: str) -> Any:
    """`celery -A batch.celery_app inspect ping | active`, `... flower`: Celery looks up
    `app` here; it is built from Settings (SURGE_REDIS_URL) on that first access (PEP 562),
    so importing this module still does no work."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_celery(Settings())
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_celery(settings: Settings) -> Celery:
    """A Celery app on the jobs Redis with the task registered."""
    if not settings.redis_url:
        raise ValueError("SURGE_REDIS_URL (the jobs Redis) is required for jobs")
    app = Celery("surgeserve", broker=settings.redis_url, backend=settings.redis_url)
    # kombu sweeps for messages of dead workers every interval x throttle seconds (default
    # 10 x 10 = ~100 s on top of the visibility timeout; measured: a SIGKILLed worker's chunk
    # came back after 76 s). One cheap sweep every <= 10 s instead.
    transport = {"visibility_timeout": settings.visibility_timeout_s,
                 "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 2)),
                 "unacked_restore_throttle": 1}
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_default_queue=settings.job_queue, task_ignore_result=True,
        broker_transport_options=transport, result_backend_transport_options=transport,
        task_soft_time_limit=settings.chunk_soft_time_limit_s,
        task_time_limit=settings.chunk_time_limit_s,
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        # A full jobs Redis refuses kombu's acknowledgement (a MULTI: every queued command is
        # refused at maxmemory, deletions too) with a channel error; without this the worker
        # logs "Unrecoverable error" and exits. With it the consumer reconnects and the
        # message stays unacknowledged (the sweeper puts it back once no one holds it).
        broker_channel_error_retry=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Task events (received / started / succeeded) for Flower and `celery events`: a few
        # small messages per chunk of hundreds of texts.
        worker_send_task_events=True, task_send_sent_event=True,
    )
    app.task(name=RUN_CHUNK, bind=True, max_retries=settings.chunk_max_retries,
             autoretry_for=(ConnectionError, TimeoutError, OSError), retry_backoff=True,
             retry_backoff_max=60, retry_jitter=True)(run_chunk)
    app.conf.surge_settings = settings
    return app


def enqueue_chunk(app: Any, settings: Settings, job_id: str, chunk: int) -> None:
    """One chunk message on the chunk queue (the API at submit, the sweeper on a loss)."""
    app.send_task(RUN_CHUNK, args=[job_id, chunk], queue=settings.job_queue)


def run_chunk(task: Any, job_id: str, chunk: int) -> dict[str, Any]:
    """Thin task: ids in, one runner call. Transient Redis errors retry with backoff."""
    import redis

    settings = task.app.conf.surge_settings
    runner = _worker_runner(settings)
    try:
        outcome = runner.run(job_id, chunk)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        runner.metrics.chunks.labels("retried").inc()
        raise ConnectionError(str(exc)) from exc  # autoretry: the jobs Redis may be restarting
    except Exception as exc:
        # Not transient (the model failed on this chunk): retrying would fail the same way.
        # End the job as failed, tell K_SINK, and let Celery record the task failure.
        log.exception("chunk failed", extra={"job": job_id, "chunk": chunk})
        runner.metrics.chunks.labels("failed").inc()
        # Our own errors say what went wrong (an unknown model); others only their type.
        reason = exc.message if isinstance(exc, SurgeError) else type(exc).__name__
        if runner.store.fail(job_id, f"chunk {chunk}: {reason}"):
            runner.job_ended(job_id)
            _announce(settings, runner.store, job_id)
        raise
    if outcome.finished_job:
        _announce(settings, runner.store, job_id)
    return {"job": job_id, "chunk": chunk, "computed": outcome.computed,
            "cached": outcome.cached, "skipped": outcome.skipped}


def _announce(settings: Settings, store: Any, job_id: str) -> None:
    """Send the job's end event now; any failure leaves it in the outbox for the sweeper."""
    import redis

    from batch.events import deliver_ended

    try:
        deliver_ended(settings, store, job_id)
    except redis.RedisError as exc:
        log.warning("end event left in the outbox: %s", type(exc).__name__,
                    extra={"job": job_id})


def _worker_runner(settings: Settings) -> Any:
    global _runner
    if _runner is None:
        from batch.runner import ChunkRunner
        from batch.store import JobStore
        from common.models import ModelSet

        models = ModelSet(settings)
        default = models.get(None)  # the default loads now; others on their first job
        _runner = ChunkRunner(models, JobStore.from_url(str(settings.redis_url),
                                                        ttl_s=settings.job_ttl_s), settings)
        log.info("worker model loaded", extra={"model": default.name,
                                               "version": default.version})
    return _runner


def run_worker(settings: Settings | None = None) -> int:
    """`surgeserve worker`: one solo-pool worker process on the chunk queue."""
    from common.logs import setup_logging
    from common.memory import tune_malloc

    settings = settings or Settings()
    # Before any thread starts, as in the API: a 10-minute soak grew the worker's RSS 6.6%
    # without it (glibc arenas per thread, a growing mmap threshold).
    tune_malloc(settings.malloc_arenas, settings.mmap_threshold_bytes)
    setup_logging(settings)
    app = create_celery(settings)
    runner = _worker_runner(settings)  # load before taking work: the first chunk is not slower
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.worker_metrics_port, registry=runner.metrics.registry)
            log.info("worker metrics on :%d/metrics", settings.worker_metrics_port)
        except OSError as exc:  # chunks matter more than their metrics: keep working
            log.error("worker metrics port %d unavailable: %s", settings.worker_metrics_port,
                      exc)
    _start_heartbeat(settings)
    if settings.job_sweep_s:
        _start_sweeper(app, settings, runner)
    # Heartbeats on: Flower shows a worker online only while they arrive (every 2 s, one
    # small publish). Gossip and mingle stay off: nothing here needs workers to know about
    # each other, and with many workers each would process every other worker's events.
    app.worker_main(["worker", "--pool=solo", "--concurrency=1", "-Q", settings.job_queue,
                     "--loglevel=INFO", "--without-gossip", "--without-mingle"])
    return 0


def _start_heartbeat(settings: Settings) -> None:
    """This worker's heartbeat, listing the messages it holds from their arrival to their
    chunk's end (batch/liveness.py): a dead worker's chunk runs again within seconds."""
    import redis
    from celery import signals

    from batch.liveness import Heartbeat

    client = redis.Redis.from_url(str(settings.redis_url), socket_timeout=2,
                                  socket_connect_timeout=2, decode_responses=True)
    heartbeat = Heartbeat(client, settings.worker_heartbeat_s)
    tags: dict[str, str] = {}  # task id -> delivery tag, for the messages held now

    def received(request: Any, **_: Any) -> None:
        tag = str(request.message.delivery_tag)
        tags[request.id] = tag
        heartbeat.hold(tag)

    def ended(task_id: str | None = None, request: Any = None, **_: Any) -> None:
        tag = tags.pop(str(task_id or getattr(request, "id", "")), None)
        if tag is not None:
            heartbeat.release(tag)

    signals.task_received.connect(received, weak=False)
    signals.task_postrun.connect(ended, weak=False)
    signals.task_revoked.connect(ended, weak=False)
    heartbeat.start()
    log.info("worker heartbeat", extra={"worker": heartbeat.id})


def _start_sweeper(app: Celery, settings: Settings, runner: Any) -> None:
    """Recover chunks the broker lost or a dead worker held, and send pending end events
    (batch/sweeper.py), on its own Redis connection."""
    from batch.events import drain_outbox
    from batch.store import JobStore
    from batch.sweeper import BrokerKeys, ChunkSweeper

    store = JobStore.from_url(str(settings.redis_url), ttl_s=settings.job_ttl_s)
    ChunkSweeper(store, lambda: BrokerKeys.from_celery(app, settings.job_queue), RUN_CHUNK,
                 lambda job_id, chunk: enqueue_chunk(app, settings, job_id, chunk),
                 interval_s=settings.job_sweep_s, metrics=runner.metrics,
                 reclaim_grace_s=RECLAIM_GRACE_S,
                 # younger events are being sent by the worker that ended the job
                 drain=lambda: drain_outbox(settings, store, min_age_s=10)).start()

"""Every Prometheus metric, declared once with a fixed label set, on a per-app registry.

The processes export them: the API (`Metrics`: HTTP, batcher, cache, model, and the jobs
API's counters), the Celery worker (`WorkerMetrics`: cache and chunk/job metrics, served
on SURGE_WORKER_METRICS_PORT), and the drift consumer (`DriftMetrics`, `surgeserve drift`).
Dashboards and alert rules in grafana/ name only these (a test scrapes the processes and
checks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from common.drift import DriftRow

# Latency buckets from 1 ms to 30 s: cache hits sit at the bottom, queued misses in the middle.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# A chunk takes seconds; a whole job seconds to hours.
CHUNK_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)


# Where a prediction offered to the payload sink ended (common/payload.py): the fixed set.
PAYLOAD_OUTCOMES = ("sent", "failed", "dropped_full", "dropped_closed")


def _payload_events(registry: CollectorRegistry) -> Counter:
    """Both the API and the worker send prediction events."""
    return Counter(
        "surge_payload_events_total",
        "Predictions offered to the payload sink (SURGE_PAYLOAD_SINK), by outcome: sent, failed "
        "(the sink refused or did not answer), dropped_full (the queue was full), "
        "dropped_closed (still queued at shutdown). Unsampled predictions are not counted.",
        ["outcome"], registry=registry)


class CacheMetrics:
    """The cache's families: both the API and the worker look up and fill the cache."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.cache_lookups = Counter(
            "surge_cache_lookups_total",
            "Cache lookups by tier (lru, redis) and result (hit, miss).",
            ["tier", "result"], registry=r)
        self.cache_errors = Counter(
            "surge_cache_errors_total", "Cache Redis failures by operation (get, set, connect).",
            ["operation"], registry=r)
        self.cache_up = Gauge(
            "surge_cache_up", "1 when the Redis cache tier is usable, 0 while backing off.",
            registry=r)


class Metrics(CacheMetrics):
    """The API process's families. A fresh registry per app keeps tests independent."""

    def __init__(self, registry: CollectorRegistry | None = None):
        super().__init__(registry)
        r = self.registry
        self.requests = Counter(
            "surge_requests_total", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram(
            "surge_request_duration_seconds", "HTTP request duration by route template.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "surge_requests_in_flight", "HTTP requests being served now.", registry=r)
        self.connections_open = Gauge(
            "surge_connections_open", "Open client connections (HTTP/1.1).", registry=r)
        self.connections_closed = Counter(
            "surge_connections_closed_total",
            "Connections the server closed, by reason (headers_timeout, body_timeout, idle, "
            "headers_too_large, evicted: displaced by a new one past the cap, refused: over "
            "the cap, all busy).",
            ["reason"], registry=r)
        # Batcher families carry the model: each model has its own batcher.
        self.batch_size = Histogram(
            "surge_batch_size", "Items per model batch.", ["model"], buckets=BATCH_BUCKETS,
            registry=r)
        self.queue_wait = Histogram(
            "surge_queue_wait_seconds", "Time an item waited in the batch queue.", ["model"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.forward_seconds = Histogram(
            "surge_forward_seconds", "Model time per batch: tokenise, forward pass, softmax.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "surge_queue_depth", "Items waiting in the batch queue.", ["model"], registry=r)
        self.rejected = Counter(
            "surge_rejected_total",
            "Items refused by the batcher, by model and reason (overloaded, expired).",
            ["model", "reason"], registry=r)
        self.predictions = Counter(
            "surge_predictions_total", "Predictions served by top label (drift watch).",
            ["model", "label"], registry=r)
        self.model_info = Gauge(
            "surge_model_info", "Loaded model and Knative revision (value 1).",
            ["model", "version", "k_service", "k_revision", "k_configuration"], registry=r)
        self.model_load_seconds = Gauge(
            "surge_model_load_seconds", "Seconds spent loading and warming the model.", registry=r)
        self.ready = Gauge(
            "surge_ready", "1 when /readyz answers 200.", registry=r)
        self.payload_events = _payload_events(r)
        # Jobs API (mounted when SURGE_REDIS_URL is set).
        self.jobs_submitted = Counter(
            "surge_jobs_submitted_total", "Jobs created, by how they came (http, cloudevent).",
            ["source"], registry=r)
        self.events_dead_lettered = Counter(
            "surge_events_dead_lettered_total",
            "CloudEvents the Broker gave up delivering, received on /events/dead-letter.",
            ["type"], registry=r)

    def watch_queue(self, length: Callable[[], float]) -> None:
        """Export the jobs queue length, read (cheaply, bounded) at each scrape."""
        self.registry.register(_QueueLength(length))


class _QueueLength(Collector):
    def __init__(self, length: Callable[[], float]):
        self._length = length

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "surge_job_queue_length",
            "Chunk messages waiting in the jobs queue (NaN when the jobs Redis is unreachable).",
            value=self._length())


class WorkerMetrics(CacheMetrics):
    """The Celery worker's families (served on SURGE_WORKER_METRICS_PORT)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        super().__init__(registry)
        r = self.registry
        self.chunks = Counter(
            "surge_job_chunks_total",
            "Chunks handled by outcome (done, skipped, failed, retried; recovered: lost by the "
            "broker and enqueued again by the sweeper; reclaimed: held by a dead worker, put "
            "back on the queue by the sweeper).",
            ["outcome"], registry=r)
        self.broker_parse_errors = Counter(
            "surge_job_broker_parse_errors_total",
            "Broker data the sweeper could not read (message: a queued or unacked message; "
            "layout: kombu's key names), e.g. after a kombu upgrade changed its Redis layout.",
            ["what"], registry=r)
        self.items = Counter(
            "surge_job_items_total", "Job items answered, by source (computed, cached).",
            ["source"], registry=r)
        self.chunk_seconds = Histogram(
            "surge_job_chunk_seconds", "Wall time per chunk: read, predict, write.",
            buckets=CHUNK_BUCKETS, registry=r)
        self.jobs_finished = Counter(
            "surge_jobs_finished_total", "Jobs that ended, by status (succeeded, failed).",
            ["status"], registry=r)
        self.job_seconds = Histogram(
            "surge_job_duration_seconds", "Job time from submission to its last chunk.",
            buckets=JOB_BUCKETS, registry=r)
        self.payload_events = _payload_events(r)


class DriftMetrics:
    """The drift consumer's families: what it received, and each model version's label mix
    in the current and reference windows with their distance (read at each scrape)."""

    def __init__(self, rows: Callable[[], Iterable[DriftRow]],
                 registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "surge_drift_events_total",
            "Prediction CloudEvents received by the drift consumer, by outcome (accepted, "
            "rejected: malformed or another type).", ["outcome"], registry=self.registry)
        self.registry.register(_DriftWindows(rows))


class _DriftWindows(Collector):
    def __init__(self, rows: Callable[[], Iterable[DriftRow]]):
        self._rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
        count = GaugeMetricFamily(
            "surge_drift_window_predictions",
            "Predictions of a model version in the current and reference windows.",
            labels=["model", "version", "window"])
        share = GaugeMetricFamily(
            "surge_drift_share", "Share of each label in the current and reference windows.",
            labels=["model", "version", "window", "label"])
        distance = GaugeMetricFamily(
            "surge_drift_distance",
            "Total variation distance between the current and reference label mix (0..1); "
            "absent while either window holds too few predictions.",
            labels=["model", "version"])
        for row in self._rows():
            for window, counts in (("current", row.current), ("reference", row.reference)):
                total = sum(counts.values())
                count.add_metric([row.model, row.version, window], total)
                for label, n in sorted(counts.items()):
                    share.add_metric([row.model, row.version, window, label], n / total)
            if row.distance is not None:
                distance.add_metric([row.model, row.version], row.distance)
        yield from (count, share, distance)

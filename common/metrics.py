"""Every Prometheus metric, declared once with a fixed label set, on a per-app registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets from 1 ms to 30 s: cache hits sit at the bottom, queued misses in the middle.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The metric families of one process. A fresh registry per app keeps tests independent."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "surge_requests_total", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram(
            "surge_request_duration_seconds", "HTTP request duration by route template.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "surge_requests_in_flight", "HTTP requests being served now.", registry=r)
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
        self.batch_size = Histogram(
            "surge_batch_size", "Items per model batch.", buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "surge_queue_wait_seconds", "Time an item waited in the batch queue.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.forward_seconds = Histogram(
            "surge_forward_seconds", "Model time per batch: tokenise, forward pass, softmax.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "surge_queue_depth", "Items waiting in the batch queue.", registry=r)
        self.rejected = Counter(
            "surge_rejected_total",
            "Items refused by the batcher, by reason (overloaded, expired).",
            ["reason"], registry=r)
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

"""Prediction events (payload logging, after KServe's InferenceService `logger`).

Each sampled prediction request of the API, and each chunk of a job, is offered here once it
is answered; a background thread sends the predictions to SURGE_PAYLOAD_SINK (a Knative
Broker in the cluster) as binary-mode CloudEvents of type `dev.surgeserve.prediction` whose
data is `{"predictions": [record, ...]}`, one record per text.

Several requests share one event (up to SURGE_PAYLOAD_BATCH predictions; a job chunk is
always one event of its own): one HTTP request per prediction would cost more CPU than a
cached answer does. The CloudEvents batch format (`application/cloudevents-batch+json`) would
do the same, but a Knative Broker's ingress accepts only binary and structured mode
(knative/eventing#6797), so a batch is one ordinary event.

It never slows or fails a reply: the answering path appends references to a bounded queue (no
serialisation, no I/O); the thread builds and sends the events. A full queue drops (counted
`dropped_full`), a sink that refuses, fails or does not answer within SEND_TIMEOUT_S loses that
event (`failed`) and is left alone for a backoff, so a dead sink costs neither CPU nor memory.
"""

from __future__ import annotations

import atexit
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from cloudevents.core.bindings.http import to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from prometheus_client import Counter

from common.logs import request_id as current_request_id
from common.settings import Settings

if TYPE_CHECKING:
    from common.bundle import ModelBundle, Ranked

log = logging.getLogger(__name__)

EVENT_TYPE = "dev.surgeserve.prediction"
SOURCE_ONLINE = "/surgeserve/predictor"
SOURCE_JOBS = "/surgeserve/jobs"
FLUSH_S = 0.5  # a part-filled event waits at most this long for more predictions
SEND_TIMEOUT_S = 2.0
BACKOFF_MAX_S = 5.0
CLOSE_TIMEOUT_S = 2.0
_FORMAT = JSONFormat()


class Answer(Protocol):
    """One answered text (online.service.Prediction is one)."""

    @property
    def scores(self) -> Ranked: ...

    @property
    def cached(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Answered:
    """An Answer for callers without a Prediction (the chunk runner)."""

    scores: Ranked
    cached: bool


@dataclass(frozen=True, slots=True)
class _Group:
    """One request's (or chunk's) predictions as queued: references only, the sender thread
    turns them into records."""

    meta: dict[str, str]
    request_id: str
    texts: Sequence[str]
    keys: Sequence[str]
    answers: Sequence[Answer]
    latency_ms: float
    at: float


class PayloadLogger:
    """Samples predictions, queues them (bounded) and sends them in the background."""

    def __init__(self, url: str, counter: Counter, *, source: str, mode: str = "all",
                 sample: float = 1.0, text: bool = False, batch: int = 100,
                 max_queue: int = 10_000):
        self.url = url
        self.source = source
        self.request_side = mode in ("request", "all")
        self.response_side = mode in ("response", "all")
        self.sample = sample
        self.text = text and self.request_side
        self.batch = batch
        self.max_queue = max_queue
        self._outcome = {name: counter.labels(name)
                         for name in ("sent", "failed", "dropped_full", "dropped_closed")}
        self._groups: deque[_Group] = deque()
        self._queued = 0  # predictions in _groups
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._meta: dict[tuple[str, str], dict[str, str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, counter: Counter, *,
                      source: str) -> PayloadLogger | None:
        """The configured logger, or None when SURGE_PAYLOAD_SINK is unset (or says k_sink
        and there is no K_SINK)."""
        url = settings.payload_url
        if not url:
            if settings.payload_sink:
                log.warning("SURGE_PAYLOAD_SINK=k_sink but K_SINK is unset: no prediction "
                            "events")
            return None
        return cls(url, counter, source=source, mode=settings.payload_mode,
                   sample=settings.payload_sample, text=settings.payload_text,
                   batch=settings.payload_batch, max_queue=settings.payload_queue)

    def log(self, bundle: ModelBundle, texts: Sequence[str], keys: Sequence[str],
            answers: Sequence[Answer], started: float, request_id: str | None = None) -> None:
        """Offer one answered request (or chunk) started at `started` (perf_counter); the
        request id defaults to the current request's."""
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        n = len(keys)
        group = _Group(self._bundle_meta(bundle), request_id or current_request_id.get(),
                       texts, keys, answers, round((time.perf_counter() - started) * 1000, 3),
                       time.time())
        with self._lock:
            accepted = not self._closing.is_set() and self._queued + n <= self.max_queue
            if accepted:
                self._groups.append(group)
                self._queued += n
                full = self._queued >= self.batch
        if not accepted:
            self._outcome["dropped_closed" if self._closing.is_set() else "dropped_full"].inc(n)
            return
        if self._thread is None:
            self._start()
        if full:
            self._wake.set()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is queued (for up to `timeout` s), then stop; the rest is dropped."""
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        atexit.unregister(self.close)
        with self._lock:
            left, self._queued = self._queued, 0
            self._groups.clear()
        if left:
            self._outcome["dropped_closed"].inc(left)

    def _bundle_meta(self, bundle: ModelBundle) -> dict[str, str]:
        meta = self._meta.get((bundle.name, bundle.version))
        if meta is None:
            meta = {"model": bundle.name, "version": bundle.version,
                    "engine": str(getattr(bundle.backend, "kind", "unknown"))}
            self._meta[(bundle.name, bundle.version)] = meta
        return meta

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="payload-sender",
                                            daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a worker's last chunk is not lost on a clean exit

    def _run(self) -> None:
        backoff = 0.0
        with httpx.Client(timeout=SEND_TIMEOUT_S) as client:
            while True:
                self._wake.wait(FLUSH_S)
                self._wake.clear()
                failed = self._drain(client)
                if self._closing.is_set():
                    return
                if failed:  # leave a dead sink alone for a while; the queue bound holds
                    backoff = min(BACKOFF_MAX_S, max(0.25, backoff * 2))
                    self._closing.wait(backoff)
                else:
                    backoff = 0.0

    def _drain(self, client: httpx.Client) -> bool:
        """Send everything queued, one event per batch; True when a send failed."""
        while groups := self._take():
            if not self._send(client, groups):
                return True
        return False

    def _take(self) -> list[_Group]:
        """Whole groups up to `batch` predictions (at least one group: a chunk is one event)."""
        out: list[_Group] = []
        n = 0
        with self._lock:
            while self._groups and (not out or n + len(self._groups[0].keys) <= self.batch):
                group = self._groups.popleft()
                out.append(group)
                n += len(group.keys)
            self._queued -= n
        return out

    def _send(self, client: httpx.Client, groups: list[_Group]) -> bool:
        n = sum(len(group.keys) for group in groups)
        try:
            records = [record for group in groups for record in self._records(group)]
            body = json.dumps({"predictions": records}, separators=(",", ":")).encode()
            event = CloudEvent(attributes={
                "type": EVENT_TYPE, "source": self.source, "id": uuid.uuid4().hex,
                "time": datetime.now(UTC), "datacontenttype": "application/json"}, data=body)
            message = to_binary(event, _FORMAT)
            reply = client.post(self.url, content=message.body, headers=message.headers)
            ok = reply.status_code < 300
        except httpx.HTTPError as exc:
            log.debug("payload sink: %s", type(exc).__name__)
            ok = False
        except Exception:  # a bug here must not stop the thread: later events still go
            log.exception("prediction event not built")
            ok = False
        self._outcome["sent" if ok else "failed"].inc(n)
        return ok

    def _records(self, group: _Group) -> list[dict[str, Any]]:
        out = []
        for text, key, answer in zip(group.texts, group.keys, group.answers, strict=True):
            record: dict[str, Any] = {
                **group.meta, "request_id": group.request_id, "time": group.at,
                "hash": key.rpartition(":")[2]}  # the cache key's text hash
            if self.request_side:
                record["chars"] = len(text)
                if self.text:
                    record["text"] = text
            if self.response_side:
                record |= {"label": answer.scores[0][0], "scores": dict(answer.scores),
                           "cached": answer.cached, "latency_ms": group.latency_ms}
            out.append(record)
        return out

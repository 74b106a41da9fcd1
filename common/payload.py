"""Prediction events (payload logging, after KServe's InferenceService `logger`).

Each sampled prediction request of the API, and each chunk of a job, is offered here once it
is answered; a sender in the background (a task on the API's event loop, a thread in the
worker) sends the predictions to SURGE_PAYLOAD_SINK (a Knative Broker in the cluster) as
binary-mode CloudEvents of type `dev.surgeserve.prediction` whose data is
`{"predictions": [record, ...]}`, one record per text.

Several requests share one event (up to SURGE_PAYLOAD_BATCH predictions; a job chunk is
always one event of its own): one HTTP request per prediction would cost more CPU than a
cached answer does. The CloudEvents batch format (`application/cloudevents-batch+json`) would
do the same, but a Knative Broker's ingress accepts only binary and structured mode
(knative/eventing#6797), so a batch is one ordinary event.

It never slows or fails a reply: the answering path appends references to a bounded queue (no
serialisation, no I/O); the sender builds and sends the events. A full queue drops (counted
`dropped_full`), a sink that refuses, fails or does not answer within SEND_TIMEOUT_S loses that
event (`failed`) and is left alone for a backoff, so a dead sink costs neither CPU nor memory.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import random
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from cloudevents.core.bindings.http import to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from prometheus_client import Counter

from common.logs import request_id as current_request_id
from common.settings import Settings
from common.sinkclient import SinkClient, SinkError

if TYPE_CHECKING:
    import httpx

    from common.bundle import ModelBundle, Ranked

log = logging.getLogger(__name__)

EVENT_TYPE = "dev.surgeserve.prediction"
SOURCE_ONLINE = "/surgeserve/predictor"
SOURCE_JOBS = "/surgeserve/jobs"
FLUSH_S = 0.5  # a part-filled event waits at most this long for more predictions
SEND_TIMEOUT_S = 2.0
BACKOFF_MAX_S = 5.0
CLOSE_TIMEOUT_S = 2.0
FRAGMENTS = 4096  # hot keys whose record parts are kept (a few MB at most)
_FORMAT = JSONFormat()
_BOOL = {True: "true", False: "false"}
_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # C: "…", escaped


class Answer(Protocol):
    """One answered text (online.service.Prediction is one)."""

    @property
    def scores(self) -> Ranked: ...

    @property
    def cached(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Answered:
    """The smallest Answer (common/pipeline.Prediction is what the pipeline logs)."""

    scores: Ranked
    cached: bool


# One request's (or chunk's) predictions as queued: references only, a plain tuple (the
# cheapest thing to make on the answering path); the sender turns it into records.
# (bundle, request id, texts, keys, answers, seconds taken, epoch time)
_Group = tuple["ModelBundle", str, Sequence[str], Sequence[str], Sequence[Answer], float, float]


class PayloadLogger:
    """Samples predictions and queues them (bounded); a sender drains the queue in the
    background: a task on the server's event loop (`start_on_loop`), else a thread started by
    the first prediction (the worker, whose loops last one chunk)."""

    def __init__(self, url: str, counter: Counter, *, source: str, mode: str = "all",
                 sample: float = 1.0, text: bool = False, batch: int = 500,
                 max_queue: int = 10_000, pack: bool = True):
        self.url = url
        self.source = source
        self.request_side = mode in ("request", "all")
        self.response_side = mode in ("response", "all")
        self.sample = sample
        self.text = text and self.request_side
        self.batch = batch
        self.max_queue = max_queue
        self.pack = pack  # several requests per event; False: each one its own (job chunks)
        self._outcome = {name: counter.labels(name)
                         for name in ("sent", "failed", "dropped_full", "dropped_closed")}
        self._groups: deque[_Group] = deque()
        self._queued = 0  # predictions in _groups
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False  # the same, as a plain attribute for the answering path
        self._wake = threading.Event()  # the thread's; the task has its own
        self._wake_task: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._meta: dict[tuple[str, str], str] = {}
        # cache key -> (the scores it was made from, its part of a record as JSON)
        self._fragments: dict[str, tuple[Ranked, str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, counter: Counter, *, source: str,
                      pack: bool = True) -> PayloadLogger | None:
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
                   batch=settings.payload_batch, max_queue=settings.payload_queue, pack=pack)

    def log(self, bundle: ModelBundle, texts: Sequence[str], keys: Sequence[str],
            answers: Sequence[Answer], started: float, request_id: str | None = None) -> None:
        """Offer one answered request (or chunk) started at `started` (perf_counter); the
        request id defaults to the current request's. With a loop sender, call it on that
        loop."""
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        n = len(keys)
        with self._lock:
            accepted = not self._closed and self._queued + n <= self.max_queue
            if accepted:
                self._groups.append((bundle, request_id or current_request_id.get(), texts,
                                     keys, answers, time.perf_counter() - started, time.time()))
                self._queued += n
                full = self._queued >= self.batch or not self.pack
        if not accepted:
            self._outcome["dropped_closed" if self._closed else "dropped_full"].inc(n)
        elif self._wake_task is not None:
            if full:
                self._wake_task.set()
        elif self._thread is None:
            self._start_thread()
        elif full:
            self._wake.set()

    def start_on_loop(self) -> None:
        """Send from a task on the running loop (the API's): a sender thread would take the
        GIL from the loop in the middle of its requests, its work landing as pauses on the
        requests in flight rather than between them."""
        self._wake_task = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run_task(),
                                                            name="payload-sender")

    async def aclose(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is queued (for up to `timeout` s), then stop; the rest is dropped."""
        self._closed = True
        self._closing.set()
        if self._wake_task is not None and self._task is not None:
            self._wake_task.set()
            # On timeout wait_for cancels the task: what it held is counted dropped.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task, timeout)
        if self._thread is not None:
            await asyncio.to_thread(self.close, timeout)
        self._drop_queued()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """The sender thread's `aclose`."""
        self._closed = True
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        atexit.unregister(self.close)
        self._drop_queued()

    def _drop_queued(self) -> None:
        with self._lock:
            left, self._queued = self._queued, 0
            self._groups.clear()
        if left:
            self._outcome["dropped_closed"].inc(left)

    def _bundle_meta(self, bundle: ModelBundle) -> str:
        meta = self._meta.get((bundle.name, bundle.version))
        if meta is None:
            meta = json.dumps({"model": bundle.name, "version": bundle.version,
                               "engine": bundle.engine.kind,
                               "precision": bundle.precision})[1:-1]
            self._meta[(bundle.name, bundle.version)] = meta
        return meta

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run_thread, name="payload-sender",
                                            daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a worker's last chunk is not lost on a clean exit

    def _run_thread(self) -> None:
        import httpx  # here, not at import: ~0.03-0.12 s of every server's cold start

        backoff = 0.0
        with httpx.Client(timeout=SEND_TIMEOUT_S) as client:
            while not self._closing.is_set():
                everything = not self._wake.wait(FLUSH_S) or self._closing.is_set()
                self._wake.clear()
                failed = False
                while not failed and (groups := self._take(everything)):
                    failed = not self._sent(groups, self._post(client, groups))
                backoff = _backoff(backoff, failed)
                if backoff:  # leave a dead sink alone for a while; the queue bound holds
                    self._closing.wait(backoff)

    async def _run_task(self) -> None:
        assert self._wake_task is not None
        backoff = 0.0
        client = SinkClient(self.url, SEND_TIMEOUT_S)
        try:
            while not self._closing.is_set():
                try:
                    await asyncio.wait_for(self._wake_task.wait(), FLUSH_S)
                    everything = self._closing.is_set()
                except TimeoutError:
                    everything = True
                self._wake_task.clear()
                failed = False
                while not failed and (groups := self._take(everything)):
                    try:
                        ok = await self._apost(client, groups)
                    except asyncio.CancelledError:  # shutdown ran out of time mid-send
                        self._outcome["dropped_closed"].inc(_count(groups))
                        raise
                    failed = not self._sent(groups, ok)
                backoff = _backoff(backoff, failed)
                if backoff and not self._closing.is_set():
                    await asyncio.sleep(backoff)
        finally:
            client.close()

    def _take(self, everything: bool) -> list[_Group]:
        """Whole groups up to `batch` predictions (at least one group), or one group when not
        packing; nothing while fewer than `batch` wait, unless `everything` (FLUSH_S is up,
        or closing): while one event is on its way the next fills up, rather than many small
        ones going out back to back."""
        out: list[_Group] = []
        n = 0
        with self._lock:
            if not self.pack and self._groups:
                group = self._groups.popleft()
                self._queued -= len(group[3])
                return [group]
            if not everything and self._queued < self.batch:
                return out
            while self._groups and (not out or n + len(self._groups[0][3]) <= self.batch):
                group = self._groups.popleft()
                out.append(group)
                n += len(group[3])
            self._queued -= n
        return out

    def _post(self, client: httpx.Client, groups: list[_Group]) -> bool:
        try:
            headers, body = self._message(groups)
            return client.post(self.url, content=body, headers=headers).status_code < 300
        except Exception as exc:  # the sink's failures, and ours, are counted
            _log_failure(exc)
            return False

    async def _apost(self, client: SinkClient, groups: list[_Group]) -> bool:
        try:
            headers, body = self._message(groups)
            return 200 <= await client.post(headers, body) < 300
        except Exception as exc:  # the sink's failures, and ours, are counted
            _log_failure(exc)
            return False

    def _sent(self, groups: list[_Group], ok: bool) -> bool:
        self._outcome["sent" if ok else "failed"].inc(_count(groups))
        return ok

    def _message(self, groups: list[_Group]) -> tuple[dict[str, str], bytes]:
        """One binary-mode CloudEvent holding these groups' predictions."""
        records = ",".join(record for group in groups for record in self._records(group))
        body = f'{{"predictions":[{records}]}}'.encode()
        event = CloudEvent(attributes={
            "type": EVENT_TYPE, "source": self.source, "id": uuid.uuid4().hex,
            "time": datetime.now(UTC), "datacontenttype": "application/json"}, data=body)
        message = to_binary(event, _FORMAT)
        return dict(message.headers), message.body

    def _records(self, group: _Group) -> list[str]:
        """Each prediction's record as JSON, written directly (strings through json's own C
        escaper; numbers are finite floats and ints): json.dumps of a dict per record cost
        the server more than the cached answer it describes."""
        bundle, request_id, texts, keys, answers, seconds, at = group
        head = f'{{{self._bundle_meta(bundle)},"request_id":{_quote(request_id)},"time":{at!r}'
        ms = seconds * 1000
        fragment = self._fragment
        if not self.request_side:  # response: what came out, never the text
            return [f'{head}{fragment(k, a)},"cached":{_BOOL[a.cached]},"latency_ms":{ms:.3f}}}'
                    for k, a in zip(keys, answers, strict=True)]
        out = []
        for raw, key, answer in zip(texts, keys, answers, strict=True):
            text = f',"text":{_quote(raw)}' if self.text else ""
            if self.response_side:
                out.append(f'{head}{fragment(key, answer)},"chars":{len(raw)}{text},'
                           f'"cached":{_BOOL[answer.cached]},"latency_ms":{ms:.3f}}}')
            else:
                out.append(f'{head}{fragment(key, answer)},"chars":{len(raw)}{text}}}')
        return out

    def _fragment(self, key: str, answer: Answer) -> str:
        """What depends only on the cache key and its answer (the text hash, and in response
        mode the label and scores), kept for hot keys: most predictions are hits of a few
        texts, and an LRU hit hands back the very same scores object."""
        kept = self._fragments.get(key)
        if kept is not None and (kept[0] is answer.scores or not self.response_side):
            return kept[1]
        fragment = f',"hash":{_quote(key.rpartition(":")[2])}'  # the cache key's hash
        if self.response_side:
            scores = ",".join(f"{_quote(label)}:{score!r}" for label, score in answer.scores)
            fragment += f',"label":{_quote(answer.scores[0][0])},"scores":{{{scores}}}'
        if len(self._fragments) >= FRAGMENTS:
            self._fragments.clear()
        self._fragments[key] = (answer.scores, fragment)
        return fragment


def _count(groups: list[_Group]) -> int:
    return sum(len(group[3]) for group in groups)


def _backoff(previous: float, failed: bool) -> float:
    """Seconds to leave the sink alone after a failed send: doubling, capped; 0 after a good one."""
    return min(BACKOFF_MAX_S, max(0.25, previous * 2)) if failed else 0.0


def _log_failure(exc: Exception) -> None:
    # httpx's errors come only from the sender thread, which imported it; the loop's sender
    # (SinkClient) never does, and importing it here would stall the loop on its first failure.
    httpx = sys.modules.get("httpx")
    expected = (SinkError, TimeoutError, *((httpx.HTTPError,) if httpx else ()))
    if isinstance(exc, expected):
        log.debug("payload sink: %s", type(exc).__name__)
    else:  # a bug here must not stop the sender: later events still go
        log.exception("prediction event not sent")

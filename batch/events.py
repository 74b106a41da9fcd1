"""CloudEvents for jobs (cloudevents 2.x core API, used consistently): ingress parsing,
reply events, and the end events (completed, failed, cancelled) sent to K_SINK from the
outbox the job store fills when a job ends (at least once, same id each time)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import httpx
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http,
    to_binary,
    to_structured,
)
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from batch.items import ItemIds, split_items
from batch.store import JobStore
from common.errors import InvalidInput, UnknownEventType, UnsupportedMediaType, printable
from common.payload import EVENT_TYPE as PREDICTION
from common.schemas import media_type
from common.settings import Settings
from common.textnorm import is_text

log = logging.getLogger(__name__)

SOURCE = "/surgeserve/jobs"
BULK_REQUESTED = "dev.surgeserve.bulk.requested"
JOB_ACCEPTED = "dev.surgeserve.job.accepted"
JOB_COMPLETED = "dev.surgeserve.job.completed"
JOB_FAILED = "dev.surgeserve.job.failed"
JOB_CANCELLED = "dev.surgeserve.job.cancelled"
END_TYPES = {"succeeded": JOB_COMPLETED, "failed": JOB_FAILED, "cancelled": JOB_CANCELLED}
_FORMAT = JSONFormat()


def decode(headers: dict[str, str], body: bytes) -> tuple[Any, bool]:
    """Any CloudEvent 1.0 in a request (binary or structured mode) and whether it was binary."""
    lowered = {k.lower(): v for k, v in headers.items()}
    binary = any(k.startswith("ce-") for k in lowered)
    ctype = media_type(lowered.get("content-type"))
    if not binary and ctype != "application/cloudevents+json":
        raise UnsupportedMediaType("send a CloudEvent: binary mode (ce-* headers) or "
                                   "structured mode (application/cloudevents+json)",
                                   {"content_type": ctype or None})
    if binary and lowered.get("ce-specversion") != "1.0":
        raise InvalidInput("unsupported CloudEvents specversion",
                           {"specversion": lowered.get("ce-specversion"), "supported": ["1.0"]})
    _require_attributes(lowered, body, binary)
    try:
        event = from_http(HTTPMessage(headers=lowered, body=body), _FORMAT)
    except Exception as exc:  # the SDK raises several types for malformed events
        raise InvalidInput("malformed CloudEvent", {"reason": type(exc).__name__}) from exc
    if event.get_specversion() != "1.0":
        raise InvalidInput("unsupported CloudEvents specversion",
                           {"specversion": event.get_specversion(), "supported": ["1.0"]})
    return event, binary


REQUIRED = ("id", "source", "type", "specversion")


def _require_attributes(headers: dict[str, str], body: bytes, binary: bool) -> None:
    """The spec's required attributes must be sent (the SDK would invent a missing id, and
    then redelivery would no longer be idempotent)."""
    if binary:
        present = {k[3:] for k in headers if k.startswith("ce-")}
    else:
        try:
            envelope = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            raise InvalidInput("malformed CloudEvent", {"reason": "body is not JSON"}) from exc
        present = set(envelope) if isinstance(envelope, dict) else set()
    missing = [name for name in REQUIRED if name not in present]
    if missing:
        raise InvalidInput("CloudEvent lacks required attributes", {"missing": missing})


def parse(headers: dict[str, str], body: bytes) -> tuple[Any, bool]:
    """The bulk request CloudEvent in a request; any other type is refused."""
    event, binary = decode(headers, body)
    if event.get_type() != BULK_REQUESTED:
        raise UnknownEventType("this sink accepts only " + BULK_REQUESTED,
                               {"type": str(event.get_type())[:200]})
    for name in ("source", "id"):  # they make the idempotency key: Unicode text only
        if not is_text(str(event.get_attributes().get(name, ""))):
            raise InvalidInput("malformed CloudEvent",
                               {"reason": f"{name} holds a lone UTF-16 surrogate"})
    return event, binary


# The only values surge_events_dead_lettered_total{type} takes: client input is never a label.
# Every type this system sends or takes (a dead-lettered one is counted by its type).
KNOWN_TYPES = frozenset({BULK_REQUESTED, JOB_ACCEPTED, *END_TYPES.values(), PREDICTION})
ATTRIBUTE_MAX_CHARS = 1024


def type_label(kind: object) -> str:
    """The metric label for an event type: the type when it is one of ours, else "other"."""
    return kind if isinstance(kind, str) and kind in KNOWN_TYPES else "other"


def dead_letter_record(event: Any, max_bytes: int) -> dict[str, Any]:
    """What to keep of an event the Broker gave up on, bounded: its attributes (with Knative's
    knativeerror* extensions saying where and why delivery failed), each cut to
    ATTRIBUTE_MAX_CHARS, and its data, cut to `max_bytes` of JSON when larger."""
    attributes = {printable(str(k))[:64]: printable(str(v))[:ATTRIBUTE_MAX_CHARS]
                  for k, v in list(event.get_attributes().items())[:64]}
    data = event.get_data()
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    encoded = json.dumps(data, separators=(",", ":"), default=str)  # ASCII: surrogates safe
    record: dict[str, Any] = {"attributes": attributes, "data": data,
                              "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "received_ts": round(time.time(), 3)}
    if len(encoded) > max_bytes:
        record |= {"data": encoded[:max_bytes], "data_truncated": True,
                   "data_bytes": len(encoded)}
    return record


def job_of(event: Any) -> tuple[list[str], ItemIds | None, str | None]:
    """The texts of the event data's `texts` list (each a string or {"id", "text"}), their
    ids (None: none has one) and the optional `model` name."""
    data = event.get_data()
    if isinstance(data, bytes | str):
        raise InvalidInput("event data must be JSON: {\"texts\": [...]}")
    found = (data or {}).get("texts") if isinstance(data, dict) else None
    if not isinstance(found, list):
        raise InvalidInput("event data must be {\"texts\": [string, ...], \"model\"?: string}")
    texts, ids = split_items(found)
    model = data.get("model") if isinstance(data, dict) else None
    if model is not None and not isinstance(model, str):
        raise InvalidInput("\"model\" in the event data must be a model name (string)")
    return texts, ids, model


def reply(job: dict[str, Any], *, binary: bool) -> HTTPMessage:
    """The `job.accepted` reply event, in the request's content mode."""
    event = CloudEvent(attributes={"type": JOB_ACCEPTED, "source": SOURCE,
                                   "id": str(uuid.uuid4()), "subject": job["id"],
                                   "datacontenttype": "application/json"},
                       data={"job_id": job["id"], "status": job["status"],
                             "total": job["total"]})
    return to_binary(event, _FORMAT) if binary else to_structured(event, _FORMAT)


def end_event(job_id: str, status: str, job: dict[str, Any] | None) -> CloudEvent:
    """The job's end event; its id is stable (`<job>-ended`), so a resend is a duplicate a
    receiver can drop."""
    data = ({k: job.get(k) for k in ("id", "status", "total", "done", "model", "version",
                                     "finished_at")} if job else
            {"id": job_id, "status": status})
    return CloudEvent(attributes={"type": END_TYPES.get(status, JOB_COMPLETED), "source": SOURCE,
                                  "id": f"{job_id}-ended", "subject": job_id,
                                  "datacontenttype": "application/json"}, data=data)


def deliver_ended(settings: Settings, store: JobStore, job_id: str) -> bool:
    """Send one job's end event from the outbox to K_SINK (one try; the sweeper retries):
    True when it left the outbox. Without K_SINK there is no one to tell: it just leaves."""
    entry = store.outbox_entry(job_id)
    if entry is None:
        return True
    if not settings.k_sink:
        store.event_delivered(job_id)
        return True
    message = to_structured(end_event(job_id, str(entry.get("type")), store.get(job_id)),
                            _FORMAT)
    try:
        response = httpx.post(settings.k_sink, content=message.body, headers=message.headers,
                              timeout=5)
    except httpx.HTTPError as exc:
        log.warning("K_SINK delivery failed: %s", type(exc).__name__, extra={"job": job_id})
        return False
    if response.status_code >= 300:
        log.warning("K_SINK answered %d", response.status_code, extra={"job": job_id})
        return False
    store.event_delivered(job_id)  # only now: a kill before this sends it again (same id)
    return True


def drain_outbox(settings: Settings, store: JobStore, *, min_age_s: float = 0.0,
                 now: float | None = None) -> int:
    """Send the end events waiting in the outbox (those older than `min_age_s`: younger
    ones are being sent by the worker that ended the job); returns how many left it."""
    now = time.time() if now is None else now
    sent = 0
    for job_id, entry in store.outbox().items():
        if float(entry.get("at", 0)) <= now - min_age_s and deliver_ended(settings, store,
                                                                          job_id):
            sent += 1
    return sent

"""common/payload.py without a network: the records it writes by hand are the JSON a
json.dumps of the same values would give (hostile strings included), events never split a
request or chunk, and the queue bound holds."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from common.metrics import PAYLOAD_OUTCOMES
from common.payload import Answered, PayloadLogger

HOSTILE = ['plain', 'quote " and \\ backslash', "new\nline\ttab\x00nul\x1f", "é ✓ 😀 \u2028",
           "</script>", ""]


@dataclass
class Backend:
    kind: str = "onnx"


@dataclass
class Bundle:
    """What the logger reads of a ModelBundle."""

    name: str = "m"
    version: str = 'v"1'
    engine: Backend = field(default_factory=Backend)
    precision: str = "fp32"


def logger(**kw: Any) -> tuple[PayloadLogger, Counter]:
    counter = Counter("t_total", "t", ["outcome"], registry=CollectorRegistry())
    return PayloadLogger("http://127.0.0.1:9/", counter, source="/t", **kw), counter


def count(counter: Counter, outcome: str) -> float:
    return counter.labels(outcome)._value.get()  # type: ignore[attr-defined, no-any-return]


def group(request_id: str, texts: list[str], labels: list[str], cached: bool = False,
          ) -> tuple[Any, ...]:
    keys = [f"surge:pred:m:v1:{i:032x}" for i, _ in enumerate(texts)]
    answers = [Answered([(label, 0.875), ("other \"x\"", 0.125)], cached) for label in labels]
    return (Bundle(), request_id, texts, keys, answers, 0.0123456, 1700000000.25)


@pytest.mark.parametrize("mode", ["all", "request", "response"])
def test_records_are_the_json_of_their_values(mode: str) -> None:
    payload, _ = logger(mode=mode, text=True)
    groups = [group(rid, HOSTILE, HOSTILE[::-1], cached=i % 2 == 0)
              for i, rid in enumerate(HOSTILE)]
    headers, body = payload._message(groups)  # type: ignore[arg-type]
    assert headers["ce-type"] == "dev.surgeserve.prediction"
    records = json.loads(body)["predictions"]
    expected = []
    for i, rid in enumerate(HOSTILE):
        for j, (text, label) in enumerate(zip(HOSTILE, HOSTILE[::-1], strict=True)):
            record: dict[str, Any] = {"model": "m", "version": 'v"1', "engine": "onnx",
                                      "precision": "fp32",
                                      "request_id": rid, "time": 1700000000.25,
                                      "hash": f"{j:032x}"}
            if mode != "response":
                record |= {"chars": len(text), "text": text}
            if mode != "request":
                record |= {"label": label, "scores": {label: 0.875, 'other "x"': 0.125},
                           "cached": i % 2 == 0, "latency_ms": 12.346}
            expected.append(record)
    assert records == expected
    assert body.isascii()  # non-ASCII is escaped, as json.dumps does by default


def test_the_text_is_left_out_unless_configured() -> None:
    payload, _ = logger(mode="all")
    _, body = payload._message([group("r", ["secret words"], ["a"])])  # type: ignore[list-item]
    assert b"secret" not in body and json.loads(body)["predictions"][0]["chars"] == 12


async def test_events_hold_whole_requests_and_the_queue_is_bounded() -> None:
    payload, counter = logger(batch=5, max_queue=14)
    payload.start_on_loop()  # its task does not run before the test awaits
    started = time.perf_counter()
    for size in (2, 2, 3, 6, 1, 1):  # 15 offered; the last does not fit in 14
        texts = [f"t{i}" for i in range(size)]
        keys = [f"surge:pred:m:v1:{i:032x}" for i in range(size)]
        answers = [Answered([("a", 1.0)], False)] * size
        payload.log(Bundle(), texts, keys, answers, started, "r")  # type: ignore[arg-type]
    assert count(counter, "dropped_full") == 1
    assert payload._take(everything=False) != []  # 14 queued >= batch: a full event goes
    sizes = [[len(g[3]) for g in payload._take(everything=True)] for _ in range(4)]
    assert sizes == [[3], [6], [1], []]  # whole requests only; a larger one alone
    await payload.aclose(timeout=0.5)
    assert {o: count(counter, o) for o in PAYLOAD_OUTCOMES} == {
        "sent": 0, "failed": 0, "dropped_full": 1, "dropped_closed": 0}


async def test_a_part_filled_event_waits_for_the_flush() -> None:
    payload, _ = logger(batch=5)
    payload.start_on_loop()
    payload.log(Bundle(), ["a"], ["surge:pred:m:v1:" + "0" * 32],  # type: ignore[arg-type]
                [Answered([("a", 1.0)], False)], time.perf_counter(), "r")
    assert payload._take(everything=False) == []
    assert len(payload._take(everything=True)) == 1
    await payload.aclose(timeout=0.5)


async def test_job_chunks_are_one_event_each() -> None:
    payload, _ = logger(batch=500, pack=False)
    payload.start_on_loop()  # its task does not run before the test awaits
    for size in (100, 50):
        payload.log(Bundle(), ["t"] * size, [f"surge:pred:m:v1:{i:032x}" for i in range(size)],  # type: ignore[arg-type]
                    [Answered([("a", 1.0)], False)] * size, time.perf_counter(), "job:0")
    sizes = [[len(g[3]) for g in payload._take(everything=False)] for _ in range(3)]
    assert sizes == [[100], [50], []]
    await payload.aclose(timeout=0.5)


def test_the_sink_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.settings import Settings

    assert Settings().payload_url is None  # off by default
    assert Settings(payload_sink="http://broker-ingress/ns/b").payload_url == (
        "http://broker-ingress/ns/b")
    assert Settings(payload_sink="k_sink").payload_url is None  # no SinkBinding: off
    monkeypatch.setenv("K_SINK", "http://broker-ingress/ns/surgeserve")
    assert Settings(payload_sink="K_SINK").payload_url == "http://broker-ingress/ns/surgeserve"
    for wrong in ("broker", "ftp://x/"):
        with pytest.raises(ValueError):
            Settings(payload_sink=wrong)
    with pytest.raises(ValueError):
        Settings(payload_sample=1.5)

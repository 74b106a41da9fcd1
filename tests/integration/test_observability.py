"""Every metric a dashboard or rule names is exported by the running services: the API on
real uvicorn, a real worker process and the drift consumer (fed by both's prediction events),
scraped after exercising predictions, jobs (HTTP and CloudEvent) and the dead-letter sink."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
from cloudevents.core.bindings.http import to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from batch.store import DEAD_LETTERS
from common.drift import LabelWindows
from common.redis_server import free_port
from online.drift import create_drift_app
from tests.deploy import checks
from tests.integration.test_jobs import CHUNK, jobs_redis, start_worker, wait_done

__all__ = ["jobs_redis", "start_worker"]  # fixtures used by name


def scrape(url: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = httpx.get(url, timeout=5)
            if reply.status_code == 200:
                return reply.text
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no metrics at {url}")
        time.sleep(0.2)


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of one series in an exposition (0 when absent)."""
    for line in exposition.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    return 0.0


def exercise(client: httpx.Client, jobs_redis_url: str) -> None:
    """Traffic that makes every family the dashboards use show up with samples."""
    for _ in range(2):  # a miss, then a hit
        reply = client.post("/v1/predict", json={"text": "a gorgeous, moving film"})
        assert reply.status_code == 200
    assert client.post("/v1/bulk-predict", json={"texts": ["dull", "superb"]}).status_code == 200
    assert client.post("/v1/predict", json={"text": ""}).status_code == 422
    job = client.post("/v1/jobs", json={"texts": [f"review number {i}" for i in range(150)]})
    assert job.status_code == 202
    event = CloudEvent(attributes={"type": "dev.surgeserve.bulk.requested", "source": "/test",
                                   "id": "obs-1", "datacontenttype": "application/json"},
                       data={"texts": ["fine", "awful"]})
    message = to_binary(event, JSONFormat())
    evented = client.post("/events", content=message.body, headers=message.headers)
    assert evented.status_code == 202
    for job_id in (job.json()["id"], json.loads(evented.content)["job_id"]):
        assert wait_done(client, job_id)["status"] == "succeeded"
    dead = CloudEvent(attributes={"type": "dev.surgeserve.bulk.requested", "source": "/broker",
                                  "id": "dl-1", "knativeerrorcode": "503",
                                  "knativeerrordest": "http://jobs/events",
                                  "datacontenttype": "application/json"},
                      data={"texts": ["lost?"]})
    message = to_binary(dead, JSONFormat())
    dead_reply = client.post("/events/dead-letter", content=message.body,
                             headers=message.headers)
    assert dead_reply.status_code == 202
    kept = [json.loads(r) for r in redis.Redis.from_url(jobs_redis_url).lrange(DEAD_LETTERS, 0, -1)]
    assert kept[0]["attributes"]["knativeerrorcode"] == "503"
    assert kept[0]["data"] == {"texts": ["lost?"]}


def test_dashboards_and_rules_name_only_exported_metrics(make_app, live_server, jobs_redis,
                                                         cache_redis, start_worker) -> None:
    with live_server(create_drift_app(LabelWindows(min_count=1))) as drift:
        app = make_app(redis_url=jobs_redis.url, cache_url=cache_redis.url,
                       job_chunk_size=CHUNK, payload_sink=drift.url)
        with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as api:
            port = free_port()
            start_worker(SURGE_WORKER_METRICS_PORT=str(port), SURGE_PAYLOAD_SINK=drift.url)
            worker_text = scrape(f"http://127.0.0.1:{port}/metrics")  # up before the work
            exercise(api, jobs_redis.url)
            # The events go out in the background (the API's up to FLUSH_S after its
            # answers) and each sender counts one once the sink has answered it: wait for
            # the drift consumer to have them all, then for both senders to have counted.
            drift_text = _drift_after(drift.url, 4 + 150 + 2)  # predictions + job items
            api_text = _sent_counted(f"{srv.url}/metrics")
            worker_text = _sent_counted(f"http://127.0.0.1:{port}/metrics")

    exported = (checks.families(api_text) | checks.families(worker_text)
                | checks.families(drift_text))
    queries, recorded = checks.rule_queries(_yaml(checks.RULES))
    for path in sorted((checks.GRAFANA / "dashboards").glob("*.json")):
        queries += checks.dashboard_queries(json.loads(path.read_text()))
    external = set(_generate_module().EXTERNAL_METRICS)
    assert checks.unknown_metrics(queries, exported | recorded | external) == []

    # The reverse: every surgeserve family is watched somewhere.
    named = {checks.base_metric(m) for _, q in queries for m in checks.promql_metrics(q)}
    unwatched = {f for f in exported if f.startswith("surge_")} - named
    assert unwatched == set()

    # And the traffic above really moved them.
    assert sample(api_text, "surge_jobs_submitted_total", source="http") == 1
    assert sample(api_text, "surge_jobs_submitted_total", source="cloudevent") == 1
    assert sample(api_text, "surge_events_dead_lettered_total") == 1
    assert sample(api_text, "surge_job_queue_length") == 0
    assert sample(api_text, "surge_cache_lookups_total", tier="lru", result="hit") >= 1
    assert sample(worker_text, "surge_job_items_total", source="computed") >= 150
    assert sample(worker_text, "surge_jobs_finished_total", status="succeeded") == 2
    assert sample(worker_text, "surge_job_duration_seconds_count") == 2
    assert sample(worker_text, "surge_job_chunks_total", outcome="done") == 3  # 100 + 50, 2
    assert sample(api_text, "surge_payload_events_total", outcome="sent") >= 1
    assert sample(worker_text, "surge_payload_events_total", outcome="sent") >= 1
    assert sample(drift_text, "surge_drift_events_total", outcome="accepted") >= 2


def scrape_until(url: str, ready: Callable[[str], bool], timeout: float) -> str:
    """The exposition once `ready` holds for it, else the last one after `timeout` s (what
    the metrics count is updated in the background: by senders, by other processes)."""
    deadline = time.monotonic() + timeout
    while not ready(text := scrape(url)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return text


def _sent_counted(url: str, timeout: float = 10) -> str:
    """An exposition once its prediction events are counted as sent (a sender counts an event
    after the sink's reply, which may come just after the sink counted it); the test's
    assertion says what was counted instead if they never are."""
    return scrape_until(url, lambda text: sample(text, "surge_payload_events_total",
                                                 outcome="sent") >= 1, timeout)


def _drift_after(url: str, predictions: int, timeout: float = 20) -> str:
    """The drift consumer's metrics once it has counted `predictions` (events arrive in
    the background, up to half a second after the answers)."""
    def counted(text: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("surge_drift_window_predictions{"))

    text = scrape_until(f"{url}/metrics", lambda t: counted(t) == predictions, timeout)
    if counted(text) != predictions:
        raise TimeoutError(f"the drift consumer counted {counted(text)} of {predictions}")
    return text


def _yaml(path: Path) -> dict:  # type: ignore[type-arg]
    import yaml

    return dict(yaml.safe_load(path.read_text()))


def _generate_module():  # type: ignore[no-untyped-def]
    from tests.deploy.test_grafana import generated

    return generated()

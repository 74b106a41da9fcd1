"""The online API over real HTTP (uvicorn on a free port) with the real default model."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """One sample's value from /metrics (0 when absent)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_predict_shape_and_sentiment(make_app, live_server) -> None:
    with live_server(make_app(cache="off")) as srv, httpx.Client(base_url=srv.url) as client:
        good = client.post("/v1/predict", json={"text": "A warm, funny and moving film."})
        bad = client.post("/v1/predict", json={"text": "Dull, lifeless and far too long."})
    assert good.status_code == 200, good.text
    body = good.json()
    assert set(body) == {"label", "score", "scores", "model", "version", "cached"}
    assert body["label"] == "POSITIVE" and bad.json()["label"] == "NEGATIVE"
    assert body["scores"][0]["label"] == body["label"]
    assert sum(s["score"] for s in body["scores"]) == pytest.approx(1.0, abs=1e-4)
    assert body["model"] == "surge-sentiment-minilm" and body["cached"] is False
    assert good.headers["x-request-id"]


def test_bulk_keeps_order_and_computes_duplicates_once(make_app, live_server) -> None:
    texts = ["Loved it.", "Hated it.", "loved   it.", "Loved it.", "An utter bore."]
    with live_server(make_app(cache="off")) as srv, httpx.Client(base_url=srv.url) as client:
        response = client.post("/v1/bulk-predict", json={"texts": texts})
        computed = metric(client, "surge_batch_size_sum")
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 5
    assert [r["label"] for r in results] == ["POSITIVE", "NEGATIVE", "POSITIVE", "POSITIVE",
                                             "NEGATIVE"]
    assert results[0] == results[2] == results[3]
    assert computed == 3  # "Loved it." and "loved   it." normalise to one uncased text


def test_second_request_is_a_cache_hit_visible_in_metrics(make_app, live_server) -> None:
    with live_server(make_app()) as srv, httpx.Client(base_url=srv.url) as client:
        first = client.post("/v1/predict", json={"text": "Crisp and clever."}).json()
        second = client.post("/v1/predict", json={"text": "  crisp AND clever. "}).json()
        hits = metric(client, "surge_cache_lookups_total", tier="lru", result="hit")
    assert first["cached"] is False and second["cached"] is True
    assert second["scores"] == first["scores"]
    assert hits == 1


def test_redis_tier_serves_a_fresh_process(make_app, live_server, cache_redis) -> None:
    text = {"text": "The best thriller of the year."}
    with live_server(make_app(cache_url=cache_redis.url)) as srv:
        assert httpx.post(f"{srv.url}/v1/predict", json=text).json()["cached"] is False
        srv.server.should_exit = True  # shutdown flushes the write-back
    with live_server(make_app(cache_url=cache_redis.url)) as srv, \
            httpx.Client(base_url=srv.url) as client:
        again = client.post("/v1/predict", json=text).json()
        redis_hits = metric(client, "surge_cache_lookups_total", tier="redis", result="hit")
    assert again["cached"] is True
    assert redis_hits == 1


def test_health_readiness_models_metrics_docs(make_app, live_server) -> None:
    with live_server(make_app()) as srv, httpx.Client(base_url=srv.url) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        models = client.get("/v1/models").json()["models"]
        text = client.get("/metrics").text
        docs = client.get("/docs")
        spec = client.get("/openapi.json").json()
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["model"] == models[0]["name"]
    assert models[0]["labels"] == ["NEGATIVE", "POSITIVE"]
    assert models[0]["metrics"]["heldout_accuracy"] >= 0.8
    for name in ("surge_requests_total", "surge_request_duration_seconds", "surge_model_info",
                 "surge_batch_size", "surge_queue_wait_seconds", "surge_forward_seconds",
                 "surge_requests_in_flight", "surge_queue_depth", "surge_cache_lookups_total",
                 "surge_predictions_total"):
        assert name in text, name
    assert docs.status_code == 200
    assert {"/v1/predict", "/v1/bulk-predict", "/readyz"} <= set(spec["paths"])


@pytest.mark.parametrize("kwargs,status,code", [
    ({"content": b'{"text": "hi"}', "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ({"content": b'{"text": ', "headers": {"content-type": "application/json"}}, 422,
     "invalid_input"),
    ({"json": {"text": "   \n\t "}}, 422, "empty_text"),
    ({"json": {"text": "x" * 5001}}, 422, "text_too_long"),
    ({"json": {"txt": "typo"}}, 422, "invalid_input"),
    ({"json": {"text": 42}}, 422, "invalid_input"),
    ({"json": ["not", "an", "object"]}, 422, "invalid_input"),
    ({"content": b'{"text": "' + b"a" * 2_000_000 + b'"}',
      "headers": {"content-type": "application/json"}}, 413, "payload_too_large"),
])
def test_bad_input_gets_one_error_shape(make_app, live_server, kwargs, status, code) -> None:
    with live_server(make_app()) as srv:
        response = httpx.post(f"{srv.url}/v1/predict", **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert "Traceback" not in response.text


def test_bulk_limits_name_the_bad_item(make_app, live_server) -> None:
    with live_server(make_app(bulk_max_items=3)) as srv, httpx.Client(base_url=srv.url) as c:
        too_many = c.post("/v1/bulk-predict", json={"texts": ["a", "b", "c", "d"]})
        empty_list = c.post("/v1/bulk-predict", json={"texts": []})
        blank_item = c.post("/v1/bulk-predict", json={"texts": ["fine", " "]})
        unknown = c.get("/v1/nope")
    assert too_many.status_code == 422
    assert too_many.json()["error"]["code"] == "too_many_items"
    assert empty_list.status_code == 422
    assert blank_item.json()["error"] == {"code": "empty_text", "detail": {"index": 1},
                                          "message": "text is empty or only whitespace"}
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_chunked_body_over_limit_is_refused(make_app, live_server) -> None:
    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"text": "'
        for _ in range(40):
            yield b"b" * 65536
        yield b'"}'

    with live_server(make_app()) as srv:
        response = httpx.post(f"{srv.url}/v1/predict", content=chunks(),
                              headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert json.loads(response.text)["error"]["code"] == "payload_too_large"


def test_a_failed_model_load_is_not_told_to_clients(live_server) -> None:  # type: ignore[no-untyped-def]
    """A load error's message (paths, library internals) goes to the log; clients get 503
    not_ready naming only the error's type."""
    from concurrent.futures import Future

    from common.metrics import Metrics
    from common.settings import Settings
    from online.app import create_app

    loading: Future[dict[str, object]] = Future()
    loading.set_exception(OSError("/srv/secret-models/x: permission denied"))
    app = create_app(Settings(access_log=False), bundles_future=loading, metrics=Metrics())
    with live_server(app) as srv, httpx.Client(base_url=srv.url) as client:
        for _ in range(200):  # the load fails on the loop, just after startup
            if client.get("/readyz").json()["status"] == "failed":
                break
        reply = client.post("/v1/predict", json={"text": "hello"})
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "not_ready"
    assert "secret" not in reply.text
    assert reply.json()["error"]["detail"] == {"load_error": "OSError"}

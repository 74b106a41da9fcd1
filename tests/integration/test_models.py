"""Several models in one process: each by name with its own batcher, the default on
/v1/predict, cache keys and metrics per model, /v1/models listing both, jobs naming a model."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from common.loader import load_bundle
from common.metrics import Metrics
from common.models import ModelSet
from common.settings import Settings
from online.app import create_app
from tests.integration.test_jobs import jobs_redis, start_worker, wait_done

__all__ = ["jobs_redis", "start_worker"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    return load_bundle(tiny_model_dir, name="tiny", compiled=False)


@pytest.fixture
def two_models(default_bundle, tiny, live_server):  # type: ignore[no-untyped-def]
    settings = Settings(access_log=False)
    app = create_app(settings, bundles={default_bundle.name: default_bundle, "tiny": tiny},
                     metrics=Metrics())
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client


def test_each_model_by_name_and_the_default(two_models, default_bundle) -> None:
    client = two_models
    text = "a quietly moving film"
    default = client.post("/v1/predict", json={"text": text}).json()
    assert default["model"] == default_bundle.name
    assert {s["label"] for s in default["scores"]} == {"POSITIVE", "NEGATIVE"}
    named = client.post(f"/v1/models/{default_bundle.name}/predict", json={"text": text}).json()
    assert named["model"] == default_bundle.name and named["cached"] is True
    tiny = client.post("/v1/models/tiny/predict", json={"text": text}).json()
    assert tiny["model"] == "tiny" and tiny["cached"] is False  # its own cache keys
    assert {s["label"] for s in tiny["scores"]} == {"anger", "joy", "calm"}
    bulk = client.post("/v1/models/tiny/bulk-predict", json={"texts": [text, "x"]}).json()
    assert bulk["model"] == "tiny" and bulk["results"][0]["cached"] is True

    missing = client.post("/v1/models/nope/predict", json={"text": text})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_model"
    assert set(missing.json()["error"]["detail"]["available"]) == {default_bundle.name, "tiny"}

    listed = client.get("/v1/models").json()["models"]
    assert [(m["name"], m["default"]) for m in listed] == [(default_bundle.name, True),
                                                           ("tiny", False)]
    assert client.get("/readyz").json()["models"] == {default_bundle.name: default_bundle.version,
                                                     "tiny": listed[1]["version"]}


def test_metrics_are_labelled_by_model(two_models, default_bundle) -> None:
    client = two_models
    client.post("/v1/models/tiny/predict", json={"text": "metrics by model"})
    client.post("/v1/predict", json={"text": "metrics by model"})
    text = client.get("/metrics").text
    for name in (default_bundle.name, "tiny"):
        assert re.search(rf'surge_batch_size_count{{model="{name}"}} [1-9]', text), name
        assert re.search(rf'surge_forward_seconds_count{{model="{name}"}} [1-9]', text), name
        assert f'surge_queue_depth{{model="{name}"}}' in text
        assert re.search(rf'surge_model_info{{[^}}]*model="{name}"', text)
    assert 'surge_predictions_total{label="joy",model="tiny"}' in text or \
        re.search(r'surge_predictions_total{label="(anger|joy|calm)",model="tiny"}', text)


def test_model_set_from_settings(default_model_dir: Path, tiny_model_dir: Path) -> None:
    settings = Settings(models=f"sentiment={default_model_dir},tiny={tiny_model_dir}",
                        default_model="tiny", compiled=False)
    models = ModelSet(settings)
    assert models.names() == ["tiny", "sentiment"] and models.default_name == "tiny"
    assert models.get("sentiment").name == "sentiment"
    with pytest.raises(Exception, match="no model named 'other'"):
        models.get("other")
    with pytest.raises(ValueError, match="listed twice"):
        Settings(models=f"a={tiny_model_dir},a={tiny_model_dir}")
    with pytest.raises(ValueError, match="expected name=path"):
        Settings(models="just-a-path")
    with pytest.raises(ValueError, match="is not one of"):
        Settings(models=f"a={tiny_model_dir}", default_model="b").model_specs()


def test_a_job_names_its_model(make_app, live_server, jobs_redis, start_worker,
                               default_model_dir: Path, tiny_model_dir: Path) -> None:
    spec = f"sentiment={default_model_dir},tiny={tiny_model_dir}"
    start_worker(SURGE_MODELS=spec, SURGE_COMPILED="false")
    app = make_app(redis_url=jobs_redis.url, models=spec, job_chunk_size=10)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        tiny_job = client.post("/v1/jobs", json={"texts": ["one", "two", "three"],
                                                 "model": "tiny"}).json()
        plain = client.post("/v1/jobs", json={"texts": ["a warm, funny film"]}).json()
        ndjson = client.post("/v1/jobs?model=tiny", content=b"first\nsecond\n",
                             headers={"content-type": "application/x-ndjson"}).json()
        unknown = client.post("/v1/jobs", json={"texts": ["x"], "model": "nope"})
        assert unknown.status_code == 422
        assert unknown.json()["error"]["code"] == "unknown_model_input"
        for job, model, labels in ((tiny_job, "tiny", {"anger", "joy", "calm"}),
                                   (ndjson, "tiny", {"anger", "joy", "calm"}),
                                   (plain, "sentiment", {"POSITIVE", "NEGATIVE"})):
            done = wait_done(client, job["id"])
            assert done["status"] == "succeeded" and done["model"] == model
            page = client.get(f"/v1/jobs/{job['id']}/results").json()["results"]
            assert {r["label"] for r in page} <= labels


def test_an_all_role_api_refuses_a_job_for_a_model_it_does_not_serve(
        make_app, live_server, jobs_redis, default_bundle) -> None:
    """No model names in the settings (SURGE_MODELS, SURGE_MODEL_NAME unset): an API that
    serves the models itself (role all; its workers load the same settings) knows them once
    loaded, so a job naming another is a 422 at submit, not a job that fails later."""
    app = make_app(redis_url=jobs_redis.url)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        unknown = client.post("/v1/jobs", json={"texts": ["x"], "model": "nope"})
        assert unknown.status_code == 422, unknown.text
        error = unknown.json()["error"]
        assert error["code"] == "unknown_model_input"
        assert error["detail"] == {"model": "nope", "available": [default_bundle.name]}
        named = client.post("/v1/jobs", json={"texts": ["x"], "model": default_bundle.name})
        assert named.status_code == 202, named.text

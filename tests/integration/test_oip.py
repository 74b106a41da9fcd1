"""Open Inference Protocol (v2 REST) with a real client library of the protocol
(tritonclient.http), JSON and binary tensors, through the same cache and batcher."""

from __future__ import annotations

from concurrent.futures import Future

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from common.metrics import Metrics
from common.settings import Settings
from online.app import create_app
from tests.integration.test_models import tiny

__all__ = ["tiny"]


@pytest.fixture
def server(default_bundle, tiny, live_server):  # type: ignore[no-untyped-def]
    app = create_app(Settings(access_log=False),
                     bundles={default_bundle.name: default_bundle, "tiny": tiny},
                     metrics=Metrics())
    with live_server(app) as srv:
        yield srv


def text_of(value: bytes | str) -> str:
    """BYTES elements come back as bytes from binary tensors, str from JSON ones."""
    return value.decode() if isinstance(value, bytes) else value


def client(srv) -> triton.InferenceServerClient:  # type: ignore[no-untyped-def]
    return triton.InferenceServerClient(srv.url.removeprefix("http://"))


def texts_input(texts: list[str], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_),
                               binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False])
def test_triton_client_infers(server, default_bundle, binary: bool) -> None:
    tc = client(server)
    assert tc.is_server_live() and tc.is_server_ready()
    name = default_bundle.name
    assert tc.is_model_ready(name)
    meta = tc.get_model_metadata(name)
    assert meta["versions"] == [default_bundle.version]
    assert [o["name"] for o in meta["outputs"]] == ["label", "score", "scores"]
    texts = ["a warm, funny and moving film", "a dull, lifeless mess"]
    outputs = [triton.InferRequestedOutput(n, binary_data=binary)
               for n in ("label", "score", "scores")]
    result = tc.infer(name, [texts_input(texts, binary)], outputs=outputs, request_id="r1")
    labels = [text_of(v) for v in result.as_numpy("label")]
    assert labels == ["POSITIVE", "NEGATIVE"]
    scores = result.as_numpy("score")
    assert scores.dtype == np.float32 and scores.shape == (2,) and (scores > 0.5).all()
    table = result.as_numpy("scores")
    assert table.shape == (2, len(default_bundle.labels))
    assert np.allclose(table.sum(axis=1), 1, atol=1e-3)
    assert result.get_response()["id"] == "r1"
    assert result.get_response()["model_version"] == default_bundle.version


def test_same_cache_and_batcher_as_v1(server, default_bundle) -> None:
    text = "cached across protocols"
    with httpx.Client(base_url=server.url) as http:
        first = http.post("/v1/predict", json={"text": text}).json()
        before = http.get("/metrics").text
        tc = client(server)
        result = tc.infer(default_bundle.name, [texts_input([text], False)])
        assert text_of(result.as_numpy("label")[0]) == first["label"]
        after = http.get("/metrics").text
    assert _hits(after) == _hits(before) + 1  # answered from the LRU the v1 call filled


def _hits(text: str) -> float:
    for line in text.splitlines():
        if line.startswith('surge_cache_lookups_total{result="hit",tier="lru"}'):
            return float(line.split()[-1])
    return 0.0


def test_second_model_and_protocol_errors(server) -> None:
    tc = client(server)
    result = tc.infer("tiny", [texts_input(["one", "two", "three"], True)])
    assert {text_of(v) for v in result.as_numpy("label")} <= {"anger", "joy", "calm"}
    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        tc.infer("nope", [texts_input(["x"], False)])
    assert not tc.is_model_ready("nope")
    with httpx.Client(base_url=server.url) as http:
        def infer(body: object) -> httpx.Response:
            return http.post("/v2/models/tiny/infer", json=body)

        cases = [
            {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
            {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]},
            {"inputs": []},
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [""]}]},
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
             "outputs": [{"name": "logits"}]},
        ]
        for body in cases:
            reply = infer(body)
            assert reply.status_code == 400, body
            assert isinstance(reply.json()["error"], str) and reply.json()["error"]
        assert http.post("/v2/models/tiny/infer", content=b"{not json").status_code == 400
        nested = infer({"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES",
                                    "data": [["a"], ["b"]]}], "outputs": [{"name": "label"}]})
        assert nested.status_code == 200
        assert [o["name"] for o in nested.json()["outputs"]] == ["label"]
        assert nested.json()["outputs"][0]["shape"] == [2]
        version = http.get("/v2/models/tiny").json()["versions"][0]
        assert http.post(f"/v2/models/tiny/versions/{version}/infer", json={
            "inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
        ).status_code == 200
        assert http.get("/v2/models/tiny/versions/0000/ready").status_code == 404
        assert http.get("/v2").json()["name"] == "surgeserve"


def test_protocol_answers_while_the_model_loads(live_server) -> None:  # type: ignore[no-untyped-def]
    """Before the models load, model readiness says `ready: false` (503) and the rest is the
    protocol's 503 error, not the API's error shape."""
    app = create_app(Settings(access_log=False), bundles_future=Future(), metrics=Metrics())
    with live_server(app) as srv, httpx.Client(base_url=srv.url) as http:
        for path in ("/v2/models/tiny/ready", "/v2/models/tiny/versions/1/ready"):
            reply = http.get(path)
            assert reply.status_code == 503 and reply.json() == {"name": "tiny", "ready": False}
        for reply in (http.get("/v2/models/tiny"),
                      http.post("/v2/models/tiny/infer", json={"inputs": []})):
            assert reply.status_code == 503
            assert reply.json() == {"error": "the model is still loading"}

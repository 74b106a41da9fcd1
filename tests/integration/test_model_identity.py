"""Two instances sharing one cache Redis answer from the cache only what their own model would
answer (issue 15, item 6: a 16-token instance's answers were served by a 128-token one)."""

from __future__ import annotations

from pathlib import Path

import httpx

from common.loader import EngineRequest, load_bundle
from common.metrics import Metrics
from common.settings import Settings
from online.app import create_app

# Long enough that 16 tokens see only its opening, which reads the other way.
LONG = ("a brilliant, moving, wonderful opening act, " + "but then it drags, the plot "
        "collapses, the acting is wooden and the ending is an insult to the audience. " * 4)


def test_a_cached_answer_is_served_only_to_the_same_token_limit(
        default_model_dir: Path, cache_redis, live_server) -> None:  # type: ignore[no-untyped-def]
    def app(max_tokens: int):  # type: ignore[no-untyped-def]
        bundle = load_bundle(default_model_dir, max_tokens=max_tokens,
                             request=EngineRequest(engine="onnx"))
        settings = Settings(access_log=False, cache_url=cache_redis.url, lru_size=0)
        return create_app(settings, bundle=bundle, metrics=Metrics())

    with live_server(app(16)) as short, live_server(app(128)) as full:
        first = httpx.post(f"{short.url}/v1/predict", json={"text": LONG}, timeout=30).json()
        again = httpx.post(f"{short.url}/v1/predict", json={"text": LONG}, timeout=30).json()
        other = httpx.post(f"{full.url}/v1/predict", json={"text": LONG}, timeout=30).json()
        models = httpx.get(f"{full.url}/v1/models", timeout=30).json()["models"]
    assert (first["cached"], again["cached"]) == (False, True)  # the cache works...
    assert other["cached"] is False  # ...but not across token limits
    assert first["version"] == other["version"]  # the same weights, version and name
    card = models[0]
    assert card["engine"]["name"] == "onnx" and card["engine"]["precision"] == "fp32"
    assert card["identity"].endswith(".t128.fp32")

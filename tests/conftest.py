"""Shared fixtures: real redis-server processes, the default model, a tiny model, live servers."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def cache_redis(tmp_path: Path) -> Iterator[object]:
    """A real cache-role redis-server on a free port."""
    from common.redis_server import RedisServer

    server = RedisServer("cache", tmp_path / "redis-cache").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The default bundle (built once if missing; `make test` builds it before pytest)."""
    from common.training import ensure_default_model

    return ensure_default_model(progress=False)


@pytest.fixture(scope="session")
def default_bundle(default_model_dir: Path):  # type: ignore[no-untyped-def]
    """The default model, loaded once per test session."""
    from common.loader import load_bundle

    return load_bundle(default_model_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random 3-label BERT classifier with the packaged tokenizer: any-HF-dir loading."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from common.training import encoder_dir

    path = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=3,
                        id2label={0: "anger", 1: "joy", 2: "calm"},
                        label2id={"anger": 0, "joy": 1, "calm": 2})
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(encoder_dir()).save_pretrained(path)
    return path


class LiveServer:
    """uvicorn serving an app on a free port in a background thread (real sockets, real HTTP)."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        import uvicorn

        from online.server import server_config

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        runtime = getattr(app.state, "runtime", None)
        if runtime is not None:  # the production configuration (connection limits included)
            config = server_config(app, runtime.settings, host="127.0.0.1", port=self.port,
                                   timeout_graceful_shutdown=None)
        else:  # another app (the drift consumer): uvicorn's defaults
            config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                    access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live_server():  # type: ignore[no-untyped-def]
    """Factory: `with live_server(app) as srv: srv.url`."""
    return LiveServer


@pytest.fixture
def make_app(default_bundle):  # type: ignore[no-untyped-def]
    """Factory: an app over the already-loaded default model with settings overrides."""
    from common.metrics import Metrics
    from common.settings import Settings
    from online.app import create_app

    def factory(**overrides: Any):  # type: ignore[no-untyped-def]
        settings = Settings(access_log=False, **overrides)
        return create_app(settings, bundle=default_bundle, metrics=Metrics())

    return factory

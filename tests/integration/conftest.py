from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from common.metrics import Metrics
from common.settings import Settings
from online.app import create_app


@pytest.fixture
def make_app(default_bundle) -> Callable[..., Any]:  # type: ignore[no-untyped-def]
    """Factory: an app over the already-loaded default model with settings overrides."""

    def factory(**overrides: Any):  # type: ignore[no-untyped-def]
        settings = Settings(access_log=False, **overrides)
        return create_app(settings, bundle=default_bundle, metrics=Metrics())

    return factory

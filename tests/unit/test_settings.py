import pytest

from common.settings import Settings, mask_url


def test_port_from_knative_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("K_REVISION", "predictor-00007")
    settings = Settings()
    assert settings.port == 9123
    assert settings.k_revision == "predictor-00007"


@pytest.mark.parametrize("value,enabled", [("off", False), ("false", False), ("0", False),
                                           ("on", True), ("TRUE", True)])
def test_cache_switch(monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool) -> None:
    monkeypatch.setenv("SURGE_CACHE", value)
    assert Settings().cache_enabled is enabled


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]


def test_secrets_masked_in_logged_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SURGE_CACHE_URL", "redis://:hunter2@cache:6379/0")
    monkeypatch.setenv("SURGE_REDIS_URL", "rediss://app:s3cret@jobs:6380/1")
    dumped = str(Settings().masked())
    assert "hunter2" not in dumped and "s3cret" not in dumped
    assert "rediss://app:***@jobs:6380/1" in dumped


def test_mask_url_leaves_plain_urls() -> None:
    assert mask_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_invalid_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SURGE_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValueError):
        Settings()

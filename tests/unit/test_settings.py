import json
from pathlib import Path

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


def test_api_keys_and_models_are_parsed_once_into_typed_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = "a" * 64, "B" * 64
    monkeypatch.setenv("SURGE_API_KEYS", f"alice:{alice}, bob:{bob}")
    monkeypatch.setenv("SURGE_MODELS", "one=/models/a,two=/models/b")
    monkeypatch.setenv("SURGE_DEFAULT_MODEL", "two")
    settings = Settings()
    assert settings.api_keys == {"alice": alice, "bob": bob.lower()}
    assert settings.models == {"one": Path("/models/a"), "two": Path("/models/b")}
    assert settings.model_specs() == [("two", Path("/models/b")), ("one", Path("/models/a"))]
    assert settings.masked()["api_keys"] == ["alice", "bob"]
    assert Settings(api_keys={"carol": "c" * 64}).api_keys == {"carol": "c" * 64}
    with pytest.raises(ValueError, match="64 hex"):
        Settings(api_keys={"carol": "not-a-hash"})
    monkeypatch.setenv("SURGE_DEFAULT_MODEL", "three")
    with pytest.raises(ValueError, match="is not one of"):
        Settings()


def test_model_home_is_a_setting_with_the_same_default(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.delenv("SURGE_MODEL_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert Settings().model_home == Path.home() / ".cache" / "surgeserve" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Settings().model_home == tmp_path / "xdg" / "surgeserve" / "models"
    monkeypatch.setenv("SURGE_MODEL_HOME", str(tmp_path / "home"))
    assert Settings().model_home == tmp_path / "home"
    assert Settings().masked()["model_home"] == str(tmp_path / "home")


def test_max_wait_is_in_seconds_and_the_old_ms_setting_still_works(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert Settings().max_wait_s == 0.0
    monkeypatch.setenv("SURGE_MAX_WAIT_S", "0.004")
    assert Settings().max_wait_s == pytest.approx(0.004) and not caplog.records
    monkeypatch.delenv("SURGE_MAX_WAIT_S")
    monkeypatch.setenv("SURGE_MAX_WAIT_MS", "5")  # an existing deployment's setting
    assert Settings().max_wait_s == pytest.approx(0.005)
    assert "SURGE_MAX_WAIT_MS is deprecated" in caplog.text
    assert "max_wait_ms" not in Settings().masked()
    monkeypatch.setenv("SURGE_MAX_WAIT_S", "0")  # the new manifest's default beside it
    assert Settings().max_wait_s == pytest.approx(0.005)
    monkeypatch.setenv("SURGE_MAX_WAIT_S", "0.002")
    with pytest.raises(ValueError, match="disagree"):
        Settings()
    monkeypatch.setenv("SURGE_MAX_WAIT_MS", "5000")  # the old bound still holds
    with pytest.raises(ValueError):
        Settings()


def test_the_local_cache_dir_is_a_setting_and_blank_means_unset(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SURGE_CACHE_DIR is read by Settings like every SURGE_* name (a read-only artifact's
    engine choice and OpenVINO blobs go there); set but empty, it is unset, never the
    working directory."""
    from common.settings import local_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SURGE_CACHE_DIR", str(tmp_path / "chosen"))
    assert Settings().cache_dir == tmp_path / "chosen" == local_cache_dir()
    assert json.loads(json.dumps(Settings().masked()))["cache_dir"] == str(tmp_path / "chosen")
    monkeypatch.setenv("SURGE_CACHE_DIR", " ")
    assert Settings().cache_dir is None
    assert local_cache_dir() == tmp_path / "xdg" / "surgeserve" / "local"

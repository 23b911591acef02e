"""url/token resolution: arguments, then environment, then the local server's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probe.client.config import DEFAULT_URL, ClientConfig


def _local_server_files(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:8123"}))
    (home / "local-token").write_text("local-secret\n")


def test_local_files_need_no_configuration(tmp_path: Path) -> None:
    _local_server_files(tmp_path)
    config = ClientConfig.from_env(env={"OPTISCOPE_HOME": str(tmp_path)})
    assert (config.url, config.token, config.home) == ("http://127.0.0.1:8123", "local-secret", tmp_path)
    assert config.api == "http://127.0.0.1:8123/api/v1"
    assert config.spool_dir == tmp_path / "spool"


def test_environment_beats_files_and_arguments_beat_environment(tmp_path: Path) -> None:
    _local_server_files(tmp_path)
    env = {"OPTISCOPE_HOME": str(tmp_path), "OPTISCOPE_URL": "http://env:1/", "OPTISCOPE_TOKEN": "env-tok"}
    assert (ClientConfig.from_env(env=env).url, ClientConfig.from_env(env=env).token) == ("http://env:1", "env-tok")
    config = ClientConfig.from_env("http://arg:2/api/v1", "arg-tok", env=env)
    assert (config.url, config.token) == ("http://arg:2", "arg-tok")


def test_defaults_without_anything(tmp_path: Path) -> None:
    config = ClientConfig.from_env(home=tmp_path / "empty", env={})
    assert (config.url, config.token) == (DEFAULT_URL, None)


def test_corrupt_server_json_falls_back_to_default(tmp_path: Path) -> None:
    (tmp_path / "server.json").write_text("{not json")
    assert ClientConfig.from_env(home=tmp_path, env={}).url == DEFAULT_URL


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("flush_interval", 0, "flush_interval"), ("queue_size", 0, "queue_size"), ("fsync", "sometimes", "fsync")],
)
def test_invalid_settings_raise_value_error(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClientConfig(**{field: value})


def test_tuning_from_environment(tmp_path: Path) -> None:
    env = {"OPTISCOPE_SPOOL_MAX_BYTES": "1000000", "OPTISCOPE_FLUSH_INTERVAL": "2", "OPTISCOPE_FSYNC": "none"}
    config = ClientConfig.from_env(home=tmp_path, env=env)
    assert (config.spool_max_bytes, config.flush_interval, config.fsync) == (1_000_000, 2.0, "none")
    assert ClientConfig.from_env(home=tmp_path, env=env, flush_interval=0.1).flush_interval == 0.1
    with pytest.raises(ValueError, match="OPTISCOPE_SPOOL_MAX_BYTES"):
        ClientConfig.from_env(home=tmp_path, env={"OPTISCOPE_SPOOL_MAX_BYTES": "1GB"})

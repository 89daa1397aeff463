"""The scorer's config takes its defaults from the one settings object: what the RayService's
builder deploys (explicit args > environment > defaults, no secret in what the Ray dashboard
shows), where a replica finds Redis, and the input limits stated once. No Serve is started."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from contract.auth import digest
from contract.keys import StreamKeys
from contract.settings import Settings
from scorer.app import build_app
from scorer.config import ScorerConfig
from vlae.images import Limits

INGEST_KEY = "ingest-key-of-line-one-0123"
FILE_KEY = "operator-key-from-the-file-0123"
PASSWORD = "redis-password-never-shown"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """An environment without the test machine's settings, run from ``tmp_path``."""
    for name in list(os.environ):
        if name.startswith("VLAEWATCH_") or name in {"REDIS_URL", "REDIS_URL_FILE", "RAY_ADDRESS"}:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def _deployed(args: dict[str, Any]) -> dict[str, Any]:
    """The ``user_config`` the builder binds: what every replica gets and the dashboard shows."""
    user_config: dict[str, Any] = build_app(args)._bound_deployment.user_config
    return user_config


def test_build_app_defaults_come_from_the_settings(env: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:  # fmt: skip
    bare = _deployed({})
    assert bare["checkpoint"] == str((tmp_path / ".vlaewatch" / "models").resolve())
    assert bare["key_prefix"] == StreamKeys.prefix
    assert bare["api_key_digests"] == {} and bare["api_keys_file"] is None

    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"{FILE_KEY}:operator:ops\n")
    env.setenv("VLAEWATCH_MODEL_STORE", str(tmp_path / "store"))
    env.setenv("VLAEWATCH_KEY_PREFIX", "plant2")
    env.setenv("VLAEWATCH_API_KEYS", f"{INGEST_KEY}:ingest:line-1")
    env.setenv("VLAEWATCH_API_KEYS_FILE", str(keys_file))
    env.setenv("REDIS_URL", f"redis://:{PASSWORD}@redis.example:6379/0")
    cfg = _deployed({"retention_s": 60})
    assert cfg["checkpoint"] == str((tmp_path / "store").resolve())
    assert cfg["key_prefix"] == "plant2"
    assert cfg["retention_s"] == 60
    assert cfg["api_key_digests"] == {digest(INGEST_KEY): ("ingest", "line-1")}
    assert cfg["api_keys_file"] == str(keys_file.resolve())
    # Redis stays each replica's own to read: neither the URL nor its password is deployed.
    assert cfg["redis_url"] is None and cfg["redis_url_file"] is None
    shown = json.dumps(cfg)
    assert PASSWORD not in shown and INGEST_KEY not in shown and FILE_KEY not in shown

    explicit = _deployed({"checkpoint": "/models", "key_prefix": "given",
                          "api_key_digests": {}, "api_keys_file": None})  # fmt: skip
    assert explicit["checkpoint"] == "/models" and explicit["key_prefix"] == "given"
    assert explicit["api_key_digests"] == {} and explicit["api_keys_file"] is None


def test_from_settings_is_what_build_app_deploys(env: pytest.MonkeyPatch) -> None:
    env.setenv("VLAEWATCH_KEY_PREFIX", "plant3")
    cfg = ScorerConfig.from_settings(Settings(), max_batch_size=8)
    assert cfg.key_prefix == "plant3" and cfg.max_batch_size == 8
    assert cfg.model_dump() == _deployed({"max_batch_size": 8})


def test_a_replica_finds_redis_in_its_config_then_its_settings(env: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:  # fmt: skip
    in_file = tmp_path / "redis-url"
    in_file.write_text("redis://:from-file@filehost:6379/0\n")
    cfg = ScorerConfig(checkpoint="/models")
    with pytest.raises(ValueError, match="no Redis"):
        cfg.resolved_redis_url()
    env.setenv("REDIS_URL_FILE", str(in_file))
    assert cfg.resolved_redis_url() == "redis://:from-file@filehost:6379/0"
    # As everywhere else the settings are read: REDIS_URL first, then the file.
    env.setenv("REDIS_URL", "redis://envhost:6379/0")
    assert cfg.resolved_redis_url() == "redis://envhost:6379/0"
    # The config's own values come first (the file by path: the dashboard shows the config).
    by_file = cfg.model_copy(update={"redis_url_file": str(in_file)})
    assert by_file.resolved_redis_url() == "redis://:from-file@filehost:6379/0"
    by_url = by_file.model_copy(update={"redis_url": "redis://confighost:6379/0"})
    assert by_url.resolved_redis_url() == "redis://confighost:6379/0"
    missing = cfg.model_copy(update={"redis_url_file": str(tmp_path / "absent")})
    with pytest.raises(ValueError, match="cannot read the Redis URL"):
        missing.resolved_redis_url()


def test_the_input_limits_are_the_image_readers() -> None:
    cfg = ScorerConfig(checkpoint="/models")
    assert cfg.limits() == Limits()
    assert ScorerConfig(checkpoint="/models", max_items=3, resize=True).limits() == Limits(
        max_items=3, resize=True
    )

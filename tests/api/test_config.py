"""The API's config takes its defaults from the one settings object: explicit values first,
then the environment, then the config's own defaults."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from api.config import ApiConfig
from contract.keys import StreamKeys
from contract.settings import SCORER_URL, Settings

VIEWER_KEY = "viewer-key-of-the-dashboards-0123"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without the test machine's settings."""
    for name in list(os.environ):
        if name.startswith("VLAEWATCH_") or name in {"REDIS_URL", "REDIS_URL_FILE", "RAY_ADDRESS"}:
            monkeypatch.delenv(name)
    return monkeypatch


def test_api_config_defaults_come_from_the_settings(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="redis_url"):
        ApiConfig.from_settings(Settings())
    bare = ApiConfig.from_settings(Settings(), redis_url="redis://localhost:6379/0")
    assert bare.key_prefix == StreamKeys.prefix and bare.scorer_url == SCORER_URL
    assert bare.api_keys == {} and bare.public_metrics and bare.grafana_url is None

    env.setenv("REDIS_URL", "redis://envhost:6379/0")
    env.setenv("VLAEWATCH_KEY_PREFIX", "plant2")
    env.setenv("VLAEWATCH_SCORER_URL", "http://scorer:8000")
    env.setenv("VLAEWATCH_API_KEYS", f"{VIEWER_KEY}:viewer:dashboards")
    env.setenv("VLAEWATCH_PUBLIC_METRICS", "false")
    cfg = ApiConfig.from_settings(Settings(), initial_fpr=0.05)
    assert cfg.redis_url == "redis://envhost:6379/0" and cfg.key_prefix == "plant2"
    assert cfg.scorer_url == "http://scorer:8000" and not cfg.public_metrics
    assert cfg.api_keys[VIEWER_KEY].name == "dashboards" and cfg.initial_fpr == 0.05

    given = ApiConfig.from_settings(Settings(), key_prefix="given", api_keys={})
    assert given.key_prefix == "given" and given.api_keys == {}

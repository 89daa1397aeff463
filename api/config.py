"""The API's configuration, built once by the command line from ``contract.settings`` and
passed to ``create_app`` (its keys and roles: ``contract.auth``)."""

from __future__ import annotations

import os
import socket
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from contract.auth import Principal, load_api_keys
from contract.keys import StreamKeys
from contract.settings import SCORER_URL, Settings

SCORES_GROUP = "api"


def default_consumer() -> str:
    """A consumer name unique to this process: a restarted process is a new consumer, and the
    entries its predecessor left pending are reclaimed after ``reclaim_idle_ms``."""
    return f"api-{socket.gethostname()}-{os.getpid()}"


class ApiConfig(BaseModel):
    """Everything the API process needs; ``api_keys`` empty means open access (loopback only,
    enforced by the command line)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    redis_url: str
    key_prefix: str = StreamKeys.prefix
    scorer_url: str | None = Field(default=SCORER_URL, description="scorer base URL, for previews")
    api_keys: dict[str, Principal] = Field(default_factory=dict)
    public_metrics: bool = Field(default=True, description="/metrics readable without a key")
    consumer: str = Field(default_factory=default_consumer)
    consume: bool = True
    batch_size: int = Field(default=256, ge=1, le=10_000)
    block_ms: int = Field(default=500, ge=1)
    reclaim_idle_ms: int = Field(default=30_000, ge=100)
    max_deliveries: int = Field(
        default=5, ge=1,
        description="a score entry delivered this many times and never stored is dead-lettered",
    )  # fmt: skip
    initial_fpr: float = Field(
        default=0.01,
        ge=0,
        lt=1,
        description="target false-alarm rate of the default threshold set automatically when "
        "the first score arrives and no threshold exists (0: none, alerts wait for an operator)",
    )
    window_s: float = Field(default=3600, gt=0, description="default what-if / stats window")
    max_window_entries: int = Field(default=200_000, ge=100)
    preview_cache_s: int = Field(default=600, ge=0)
    preview_timeout_s: float = Field(default=30.0, gt=0)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    rate_limit_per_s: float = Field(
        default=100.0, ge=0, description="requests per second per API key (0: no limit)"
    )
    rate_burst: int = Field(default=200, ge=1, description="requests a key may send at once")
    login_failures_per_s: float = Field(
        default=1.0, ge=0,
        description="failed authentications per second per client address, past the burst "
        "(0: no limit)",
    )  # fmt: skip
    max_streams_per_key: int = Field(
        default=8, ge=1, description="live streams (/v1/stream) one key may hold open at once"
    )
    max_streams: int = Field(
        default=256, ge=1, description="live streams this API process serves at once"
    )
    login_failure_burst: int = Field(
        default=30, ge=1, description="failed authentications an address may make at once"
    )
    alert_retention_s: int = Field(default=30 * 86400, ge=60)
    scores_group: str = SCORES_GROUP
    grafana_url: str | None = Field(
        default=None, description="annotate threshold changes and model swaps in this Grafana"
    )
    grafana_token: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **values: Any) -> ApiConfig:
        """A config of ``values`` (fields; they win), the rest from ``settings`` where the two
        overlap: Redis, the key prefix, the scorer, the key ring, /metrics and Grafana."""
        defaults: dict[str, Any] = {
            "key_prefix": settings.key_prefix,
            "scorer_url": settings.scorer_url,
            "public_metrics": settings.public_metrics,
            "grafana_url": settings.grafana_url,
            "grafana_token": settings.grafana_token,
        }
        if settings.redis_url is not None:
            defaults["redis_url"] = settings.redis_url
        if "api_keys" not in values:
            defaults["api_keys"] = load_api_keys(settings.api_keys, settings.api_keys_file)
        return cls.model_validate(defaults | values)

"""The API's configuration, built once by the command line from ``vlaewatch.settings`` and
passed to ``create_app``; and the API keys with their roles."""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
SCORES_GROUP = "api"


class KeyConfigError(ValueError):
    """An API key specification that cannot be parsed."""


@dataclass(frozen=True)
class Principal:
    """Who makes a request: the name recorded in threshold history and alert events."""

    name: str
    role: Role

    def may(self, role: Role) -> bool:
        """Operators may do everything viewers may."""
        return ROLES.index(self.role) >= ROLES.index(role)


def parse_api_keys(text: str) -> dict[str, Principal]:
    """``key:role[:name]`` entries separated by commas or newlines (``#`` starts a comment).

    Without a name, a key is recorded as ``<role>-<first 8 hex of its SHA-256>``, so history
    never shows a key itself."""
    keys: dict[str, Principal] = {}
    for raw in text.replace(",", "\n").splitlines():
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        parts = [p.strip() for p in entry.split(":")]
        if len(parts) not in (2, 3) or not parts[0]:
            raise KeyConfigError(f"API key entry {_mask(entry)!r}: use key:role or key:role:name")
        key, role = parts[0], parts[1]
        if role not in ROLES:
            raise KeyConfigError(f"API key {_mask(key)!r}: role {role!r} is not one of {ROLES}")
        if len(key) < 8:
            raise KeyConfigError(f"API key {_mask(key)!r}: use at least 8 characters")
        name = parts[2] if len(parts) == 3 and parts[2] else None
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        keys[key] = Principal(name=name or f"{role}-{digest}", role=role)
    return keys


def load_api_keys(spec: str | None, file: Path | None) -> dict[str, Principal]:
    """Keys from the ``VLAEWATCH_API_KEYS`` value and/or a file of the same format."""
    keys = parse_api_keys(spec or "")
    if file is not None:
        try:
            keys.update(parse_api_keys(Path(file).read_text()))
        except OSError as exc:
            raise KeyConfigError(f"cannot read API keys file {file}: {exc}") from exc
    return keys


def _mask(text: str) -> str:
    return text[:2] + "…" if len(text) > 2 else "…"


def default_consumer() -> str:
    """A consumer name unique to this process: a restarted process is a new consumer, and the
    entries its predecessor left pending are reclaimed after ``reclaim_idle_ms``."""
    return f"api-{socket.gethostname()}-{os.getpid()}"


class ApiConfig(BaseModel):
    """Everything the API process needs; ``api_keys`` empty means open access (loopback only,
    enforced by the command line)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    redis_url: str
    key_prefix: str = "vlaewatch"
    scorer_url: str | None = Field(
        default="http://127.0.0.1:8000", description="scorer base URL, for previews"
    )
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
    alert_retention_s: int = Field(default=30 * 86400, ge=60)
    scores_group: str = SCORES_GROUP
    grafana_url: str | None = Field(
        default=None, description="annotate threshold changes and model swaps in this Grafana"
    )
    grafana_token: str | None = None

"""All configuration from the environment in one place: ``VLAEWATCH_*`` variables, plus the
ecosystem's own ``REDIS_URL`` and ``RAY_ADDRESS``. Commands build one ``Settings`` and pass
values down; the scorer's and the API's configs take their defaults from it
(``ScorerConfig.from_settings``, ``ApiConfig.from_settings``), and so does each scorer replica
for the Redis it reads from its own environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.keys import StreamKeys

SCORER_URL = "http://127.0.0.1:8000"  # where the scorer listens by default, and the API looks


class Settings(BaseSettings):
    """Service settings; every field can be set as ``VLAEWATCH_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="VLAEWATCH_", extra="ignore")

    home: Path = Field(
        default=Path(".vlaewatch"),
        description="Working directory of the embedded defaults (models, runs, Redis data).",
    )
    model_store: Path | None = Field(
        default=None, description="Directory of versioned checkpoints (default: HOME/models)."
    )
    runs_dir: Path | None = Field(
        default=None, description="Ray Train storage path (default: HOME/runs)."
    )
    data_dir: Path | None = Field(
        default=None, description="Root of torchvision datasets (MNIST, FashionMNIST)."
    )
    ray_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RAY_ADDRESS", "VLAEWATCH_RAY_ADDRESS"),
        description="Ray cluster to join; a local loopback cluster is started when unset.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "VLAEWATCH_REDIS_URL"),
        description="Redis to use; the bundled redis-server is started on loopback when unset.",
    )

    blob_uri: str | None = Field(
        default=None,
        description="Where scored items' images too large for Redis go: a folder, file://, "
        "s3://bucket/prefix (default: HOME/blobs).",
    )
    key_prefix: str = Field(
        default=StreamKeys.prefix,
        pattern=r"^([A-Za-z0-9._\-]{1,64}|\{[A-Za-z0-9._\-]{1,62}\})$",
        description="Prefix of every Redis key, so several deployments can share one Redis; "
        "in braces ({vlaewatch}) a hash tag, which keeps the keys in one Redis Cluster slot.",
    )
    scorer_url: str = Field(default=SCORER_URL, description="Scorer base URL (the API's previews).")
    api_keys: str | None = Field(
        default=None,
        description="API keys with roles: 'key:role[:name],...', role viewer or operator.",
    )
    api_keys_file: Path | None = Field(
        default=None, description="A file of API keys, one 'key:role[:name]' per line."
    )
    public_metrics: bool = Field(default=True, description="/metrics readable without a key.")
    grafana_url: str | None = Field(
        default=None, description="Grafana to provision, and to annotate changes in."
    )
    grafana_token: str | None = Field(default=None, description="Grafana service account token.")
    # Secrets may come from files (Kubernetes and Docker secrets mount them) rather than the
    # environment, where every process of the user can read them.
    redis_url_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL_FILE", "VLAEWATCH_REDIS_URL_FILE"),
        description="A file holding REDIS_URL (with its password), read when REDIS_URL is unset.",
    )
    grafana_token_file: Path | None = Field(
        default=None, description="A file holding the Grafana token, read when it is unset."
    )

    @model_validator(mode="after")
    def _read_secret_files(self) -> Settings:
        if self.redis_url is None and self.redis_url_file is not None:
            self.redis_url = self.redis_url_file.read_text().strip()
        if self.grafana_token is None and self.grafana_token_file is not None:
            self.grafana_token = self.grafana_token_file.read_text().strip()
        return self

    def redacted(self) -> dict[str, Any]:
        """The settings as ``vlaewatch info`` shows them: no key, token or password."""
        out: dict[str, Any] = json.loads(self.model_dump_json())
        if self.api_keys:
            n = len([e for e in self.api_keys.replace(",", "\n").splitlines() if e.strip()])
            out["api_keys"] = f"<{n} key(s), redacted>"
        if self.grafana_token:
            out["grafana_token"] = "<redacted>"
        if self.redis_url:
            out["redis_url"] = redact_url(self.redis_url)
        return out

    @property
    def store_path(self) -> Path:
        return (self.model_store or self.home / "models").resolve()

    @property
    def runs_path(self) -> Path:
        return (self.runs_dir or self.home / "runs").resolve()

    @property
    def blob_location(self) -> str:
        return self.blob_uri or str((self.home / "blobs").resolve())


def redact_url(url: str) -> str:
    """``url`` with its password (and a user name beside it) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if user else f":***@{host}"))

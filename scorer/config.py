"""Scorer configuration: what a replica does (``user_config``, changeable live) and how the
deployment is sized (replicas, autoscaling, CPUs, GPUs)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.auth import Role, digests, load_api_keys
from contract.keys import StreamKeys, valid_line
from contract.settings import Settings
from vlae.images import Limits

# Images larger than this go to the blob store by default. What is kept of an item is the
# smaller of the file as received and the pixels scored (at the model's input size): a 28 x 28
# digit (about 460 bytes) or a 64 x 64 part (4 KB grey, 12 KB colour at most) stays in Redis
# beside its score; a 128 x 128 colour part (up to 48 KB) or a 256 x 256 one goes out
# (docs/operations.md, "Sizing Redis and the blob store").
INLINE_MAX_BYTES = 16 * 1024


class ScorerConfig(BaseModel):
    """A replica's ``user_config``: a new value is applied to running replicas in place."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoint: str = Field(description="checkpoint directory, or model store (newest version)")
    model_version: str | None = Field(default=None, description="version to load from a store")
    line_models: dict[str, str] = Field(
        default_factory=dict,
        description="line -> checkpoint (directory, or model store: its newest version) of "
        "the model that scores that line; lines not listed: ``checkpoint``",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis to publish to; shown by the Ray dashboard, so without a password. "
        "None: ``redis_url_file``, else the replica's own settings (REDIS_URL, else "
        "REDIS_URL_FILE)",
    )
    redis_url_file: str | None = Field(
        default=None, description="a file holding the Redis URL that every node mounts"
    )
    key_prefix: str = StreamKeys.prefix
    api_key_digests: dict[str, tuple[Role, str]] = Field(
        default_factory=dict,
        description="the key ring as SHA-256 hex digest -> (role, name) (``contract.auth``): "
        "this config is shown by the Ray dashboard, so it never holds a key",
    )
    api_keys_file: str | None = Field(
        default=None,
        description="a file of keys (``key:role[:name]`` lines) that every node mounts, read "
        "by each replica; with ``api_key_digests``, the key ring. Neither: open access, "
        "allowed on loopback only",
    )
    max_batch_size: int = Field(default=256, ge=1, le=8192)
    batch_wait_timeout_s: float = Field(
        default=0.0, ge=0, le=5,
        description="how long a batch waits for more items once one is queued; 0: it takes "
        "what is queued when a forward slot frees (under load the queue forms the batches, "
        "and a frames read is a batch already)",
    )  # fmt: skip
    retention_s: int = Field(default=3600, ge=1, description="how long images stay for previews")
    image_store: Literal["auto", "redis", "blob"] = Field(
        default="auto",
        description="where scored items' images are kept: ``redis`` (beside the score), "
        "``blob`` (the blob store, Redis keeping a reference), ``auto``: an image over "
        "``inline_max_bytes`` to the blob store, a smaller one in Redis",
    )  # fmt: skip
    inline_max_bytes: int = Field(
        default=INLINE_MAX_BYTES, ge=0,
        description="with ``image_store`` auto, the largest image (as stored: the file as "
        "received, or its pixels) kept in Redis",
    )  # fmt: skip
    blob_uri: str | None = Field(
        default=None,
        description="the blob store (a folder, ``file://``, ``s3://bucket/prefix``...; "
        "``scorer.blobs``); None: the replica's own settings (VLAEWATCH_BLOB_URI, else "
        "VLAEWATCH_HOME/blobs)",
    )  # fmt: skip
    scores_maxlen: int = Field(
        default=100_000, ge=100,
        description="score entries kept as history once every consumer group has read them",
    )  # fmt: skip
    scores_hard_maxlen: int = Field(
        default=1_000_000, ge=100,
        description="the most score entries kept in any case (memory); past it the oldest "
        "go even when a consumer group has not acknowledged them, and are counted as lost",
    )  # fmt: skip
    deadletter_maxlen: int = Field(default=10_000, ge=100)
    max_lines: int = Field(
        default=512, ge=1,
        description="lines the service takes items of; a new line past them is refused (each "
        "line costs metrics series and index entries for good)",
    )  # fmt: skip
    consume_frames: bool = True
    frames_block_ms: int = Field(default=200, ge=1)
    reclaim_idle_ms: int = Field(default=30_000, ge=100)
    max_deliveries: int = Field(
        default=5, ge=1,
        description="a frame delivered this many times and never acked is dead-lettered",
    )  # fmt: skip
    torch_threads: int | None = Field(
        default=None, ge=1,
        description="threads of one forward pass; default: the replica's CPUs / 2 (it runs "
        "two batches at once), at least 1",
    )  # fmt: skip
    max_request_bytes: int = Limits.max_request_bytes
    max_items: int = Limits.max_items
    max_image_bytes: int = Limits.max_image_bytes
    max_pixels: int = Limits.max_pixels
    resize: bool = Limits.resize

    @field_validator("line_models")
    @classmethod
    def _lines(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [line for line in value if not valid_line(line)]
        if bad:
            raise ValueError(f"line_models: invalid line ids {bad[:3]}")
        return value

    @field_validator("blob_uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value and urlsplit(value).password is not None:
            raise ValueError("blob_uri: no credentials in the URI (the Ray dashboard shows "
                             "this config); the replicas' environment has them")  # fmt: skip
        return value

    @field_validator("api_key_digests")
    @classmethod
    def _digests(cls, value: dict[str, tuple[Role, str]]) -> dict[str, tuple[Role, str]]:
        bad = [d for d in value if len(d) != 64 or any(c not in "0123456789abcdef" for c in d)]
        if bad:
            raise ValueError(f"api_key_digests: {len(bad)} key(s) not SHA-256 hex digests")
        return value

    @classmethod
    def from_settings(cls, settings: Settings, **values: Any) -> ScorerConfig:
        """A config of ``values`` (fields; they win), the rest from ``settings`` where the two
        overlap: the model store, the key prefix, the key ring (digests, and the file by
        path). Redis, unless given, stays each replica's own (``resolved_redis_url``)."""
        keys_file = settings.api_keys_file
        defaults: dict[str, Any] = {
            "checkpoint": str(settings.store_path),
            "key_prefix": settings.key_prefix,
            "api_keys_file": str(keys_file.resolve()) if keys_file else None,
            "blob_uri": settings.blob_location,
        }
        if "api_key_digests" not in values:
            defaults["api_key_digests"] = digests(load_api_keys(settings.api_keys, None))
        return cls.model_validate(defaults | values)

    def resolved_redis_url(self) -> str:
        """The Redis URL as the replica reads it: the value, else the file, else the
        replica's own settings (``REDIS_URL``, else ``REDIS_URL_FILE``: a secret every node's
        pod mounts)."""
        if self.redis_url:
            return self.redis_url
        try:
            if self.redis_url_file:
                return Path(self.redis_url_file).read_text().strip()
            url = Settings().redis_url
        except OSError as exc:
            raise ValueError(f"cannot read the Redis URL: {exc}") from exc
        if not url:
            raise ValueError("no Redis: set redis_url or redis_url_file, or REDIS_URL or "
                             "REDIS_URL_FILE in the replicas' environment")  # fmt: skip
        return url

    def resolved_blob_uri(self) -> str:
        """The blob store as the replica reads it: the value, else its own settings."""
        return self.blob_uri or Settings().blob_location

    @property
    def has_keys(self) -> bool:
        return bool(self.api_key_digests) or self.api_keys_file is not None

    def limits(self) -> Limits:
        """The image reader's limits: the fields of the same names."""
        return Limits(**{f.name: getattr(self, f.name) for f in fields(Limits)})


class DeploymentConfig(BaseModel):
    """How many replicas, of what size. ``min_replicas < max_replicas`` turns autoscaling on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_replicas: int = Field(default=1, ge=1)
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=1)
    target_ongoing_requests: float = 2.0
    num_cpus: float = Field(default=1.0, ge=0, description="a fraction shares a small machine")
    num_gpus: float = Field(default=0.0, ge=0)
    max_ongoing_requests: int = Field(default=512, ge=1)

    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``Deployment.options``."""
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
        }
        lo, hi = self.min_replicas, self.max_replicas
        if lo is not None and hi is not None and lo < hi:
            opts["autoscaling_config"] = {
                "min_replicas": lo,
                "max_replicas": hi,
                "initial_replicas": max(lo, 1),
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        else:
            opts["num_replicas"] = self.num_replicas
        return opts

"""``/v1/health``: the API process's health."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas import example


class ApiHealth(BaseModel):
    model_config = example(
        {
            "status": "ok",
            "redis": True,
            "consumer": "api-host-4242",
            "consuming": True,
            "pending": 0,
            "lag": 0,
            "model_version": "c96dc36985a2a968",
            "reason": None,
            "items_lost": 0,
        }
    )

    status: Literal["ok", "degraded"]
    redis: bool
    consumer: str
    consuming: bool
    pending: int | None
    lag: int | None
    model_version: str | None
    reason: str | None = None
    # line -> version, as the scorer announced them; "*": every line without its own model
    line_models: dict[str, str] = Field(default_factory=dict)
    items_lost: int | None = Field(
        default=None,
        description="score entries trimmed from the stream before every consumer group "
        "acknowledged them (the stream over its hard bound, scores_hard_maxlen): in this "
        "deployment, ever; their items reached no alert",
    )

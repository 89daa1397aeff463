"""The API's request and response models: the HTTP contract, defined once, with examples, one
module per route group; what every group shares is here."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def example(example: dict[str, Any]) -> ConfigDict:
    """A model config whose JSON schema shows ``example`` (the OpenAPI docs render it)."""
    return ConfigDict(json_schema_extra={"examples": [example]})


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: what went wrong, in words."""

    model_config = example({"detail": "alert cam1-000123 is resolved; it cannot be acknowledged"})

    detail: str
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="for 422 request validation: each failing field"
    )

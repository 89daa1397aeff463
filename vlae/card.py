"""The model card: what a checkpoint's model is, how it was trained, and its version.

Written as ``model_card.json`` beside the weights (keys sorted) and published to the score
stream's consumers in the same form. The trainer fills a ``CardDraft``; ``save_checkpoint``
completes it into a ``ModelCard`` with what only the written files say (architecture, hashed
files, content-hash version). Unknown fields are refused: a card is written by this code only.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from vlae.likelihood import ScoreKind


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetCard(_Strict):
    """Where the training images came from and how they were split."""

    name: str
    data_dir: str | None
    image_folder: str | None
    train_fingerprint: str
    train_class_counts: dict[str, int]
    n_train: int
    n_validation: int
    n_calibration: int
    # How the training images reached the workers: "memory" (decoded in the driver, shipped
    # as arrays) or "ray-data" (streamed; the fingerprint is then the file list's).
    reader: str = "memory"


class CardDraft(_Strict):
    """What the trainer knows of a model: its variant, data, training run and metrics."""

    variant: str
    image_shape: tuple[int, int, int]
    latent_dim: int
    beta: float
    normal_classes: list[str]
    conditions: list[str]  # a conditional model's condition names, in index order; else []
    line_conditions: dict[str, str]  # line -> condition name or ``best``; ``*``: the fallback
    score_kind: ScoreKind
    likelihood: str  # in words
    score: str  # in words
    denoiser: str | None  # a companion denoiser, in words
    denoising: str | None  # what a denoising model removes, in words
    data_profile: dict[str, Any] | None
    dataset: DatasetCard
    training: dict[str, Any]  # the training config, the launcher, seconds
    epochs: int
    metrics: dict[str, float]  # the last epoch's
    history: list[dict[str, float]]  # per epoch
    versions: dict[str, str]  # of the packages that trained it
    created_at: str  # ISO 8601, UTC


class ModelCard(CardDraft):
    """A saved checkpoint's card: the draft and what the checkpoint's files say."""

    architecture: dict[str, Any]  # the model config (``config_to_dict``)
    has_denoiser: bool
    has_calibration_latents: bool
    hashed_files: list[str]  # the files the content hash covers
    model_version: str  # the content hash

    def to_json(self, indent: int | None = None) -> str:
        """The card as JSON, keys sorted (the form on disk and on the score stream)."""
        return json.dumps(self.model_dump(mode="json"), indent=indent, sort_keys=True)

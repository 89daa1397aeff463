"""One training job end to end: normal-only data, fit, calibration scores, versioned checkpoint."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trainer.checkpoint import WEIGHT_FILES, save_checkpoint
from trainer.data import NormalSplit, fingerprint, to_float
from trainer.evaluate import score_images
from trainer.model import SCORE_KIND_TEXT, ModelConfig, build_model
from trainer.train import FitResult, TrainArrays, TrainConfig

Fitter = Callable[[ModelConfig, TrainConfig, TrainArrays], FitResult]


@dataclass(frozen=True)
class DatasetInfo:
    """Where the training data came from (recorded in the model card)."""

    name: str
    data_dir: str | None = None
    image_folder: str | None = None


def train_arrays(split: NormalSplit, conditional: bool) -> TrainArrays:
    """Float tensors of the normal train and validation images (and their condition indices)."""

    def cond(labels: np.ndarray) -> torch.Tensor | None:
        return torch.from_numpy(split.condition_index(labels)) if conditional else None

    return TrainArrays(
        train_x=torch.from_numpy(to_float(split.train.images)),
        val_x=torch.from_numpy(to_float(split.validation.images)),
        train_c=cond(split.train.labels),
        val_c=cond(split.validation.labels),
    )


def calibration_scores(
    model_cfg: ModelConfig, weights: dict[str, torch.Tensor], split: NormalSplit
) -> pd.DataFrame:
    """Scores of the held-out normal images: the data thresholds are calibrated on."""
    model = build_model(model_cfg)
    model.load_state_dict(weights)
    conditions = (
        split.condition_index(split.calibration.labels) if model_cfg.num_conditions else None
    )
    frame = score_images(model, split.calibration.images, conditions).frame()
    frame.insert(0, "label", split.calibration.labels.astype(str))
    return frame


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import ray

    return {
        "vlaewatch": version("vlaewatch"),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "python": platform.python_version(),
    }


def model_card(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    split: NormalSplit,
    dataset: DatasetInfo,
    result: FitResult,
    launcher: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """What the model is and how it was made; ``save_checkpoint`` adds architecture and version."""
    conditional = model_cfg.num_conditions > 0
    variant = "ConvVLAE" if model_cfg.arch == "conv" else "VLAE"
    if conditional:
        variant = "Conditional" + variant
    if cfg.denoising:
        variant = "Denoising" + variant
    final = result.history[-1] if result.history else {}
    return {
        "variant": variant,
        "image_shape": list(model_cfg.image_shape),
        "latent_dim": model_cfg.latent_dim,
        "beta": cfg.beta,
        "normal_classes": list(split.normal_classes),
        "conditions": list(split.normal_classes) if conditional else [],
        "score_kind": model_cfg.score_kind,
        "score": SCORE_KIND_TEXT[model_cfg.score_kind],
        "denoiser": "DenoisingVLAE fitted in the same run" if cfg.denoiser else None,
        "dataset": {
            "name": dataset.name,
            "data_dir": dataset.data_dir,
            "image_folder": dataset.image_folder,
            "train_fingerprint": fingerprint(split.train.images),
            "train_class_counts": split.train.class_counts(),
            "n_train": len(split.train),
            "n_validation": len(split.validation),
            "n_calibration": len(split.calibration),
        },
        "training": {**cfg.to_dict(), "launcher": launcher, "seconds": round(seconds, 2)},
        "epochs": len(result.history),
        "metrics": {k: v for k, v in final.items() if k not in ("epoch", "epoch_s", "eta_s")},
        "history": result.history,
        "versions": _versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def train_model(
    split: NormalSplit,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    dataset: DatasetInfo,
    fitter: Fitter,
    launcher: dict[str, Any],
    out: str | Path | None = None,
    store: str | Path | None = None,
) -> Path:
    """Fit on the normal split and write the checkpoint to ``out``, or to ``store/<version>``."""
    if out is None and store is None:
        raise ValueError("give an output directory or a model store")
    if model_cfg.image_shape != split.train.image_shape:
        raise ValueError(
            f"model image shape {model_cfg.image_shape} differs from the data's "
            f"{split.train.image_shape}"
        )
    if model_cfg.num_conditions:
        model_cfg = replace(model_cfg, num_conditions=len(split.normal_classes))
    t0 = time.monotonic()
    result = fitter(model_cfg, cfg, train_arrays(split, model_cfg.num_conditions > 0))
    seconds = time.monotonic() - t0
    calibration = calibration_scores(model_cfg, result.state_dicts["model"], split)
    card = model_card(model_cfg, cfg, split, dataset, result, launcher, seconds)
    state_dicts = {k: v for k, v in result.state_dicts.items() if k in WEIGHT_FILES}
    return save_checkpoint(out, model_cfg, state_dicts, card, calibration, store=store)

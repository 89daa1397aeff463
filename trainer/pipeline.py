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

from trainer.data import NormalSplit
from trainer.stream import ImageFiles, StreamedTrain
from trainer.train import FitResult, TrainArrays, TrainConfig
from vlae.base import VLAEBase
from vlae.card import CardDraft, DatasetCard
from vlae.checkpoint import WEIGHT_FILES, CalibrationLatents, save_checkpoint
from vlae.condition import BEST_NAME
from vlae.explore import calibration_latents
from vlae.images import to_float
from vlae.likelihood import HEAD_SCORE_TEXT, SCORE_KIND_TEXT
from vlae.model import ModelConfig, build_model
from vlae.score import pixel_maps, score_images

Fitter = Callable[[ModelConfig, TrainConfig, TrainArrays], FitResult]
LIKELIHOOD_TEXT = {
    "bernoulli": "Bernoulli (binary cross-entropy); its map term is BCE(x, p) - BCE(x, x)",
    "gaussian": "Gaussian, standard deviation {scale} in [0, 1] pixel units; its map term is "
    "0.5 * ((x - mean) / scale)^2",
}
CONTRAST_TEXT = (
    "; an item of a mapped line adds, to recon + kl, its contrast: its elbo under the line's "
    "condition minus its lowest elbo under any condition"
)


@dataclass(frozen=True)
class DatasetInfo:
    """Where the training data came from (recorded in the model card)."""

    name: str
    data_dir: str | None = None
    image_folder: str | None = None


def train_arrays(split: NormalSplit[Any], conditional: bool, seed: int = 0) -> TrainArrays:
    """Float tensors of the normal train and validation images (and their condition indices);
    training files of a streamed split (``trainer.stream``) stay files, for Ray Data."""

    def cond(labels: np.ndarray) -> torch.Tensor | None:
        return torch.from_numpy(split.condition_index(labels)) if conditional else None

    val_x, val_c = (
        torch.from_numpy(to_float(split.validation.images)),
        cond(split.validation.labels),
    )
    if isinstance(split.train, ImageFiles):
        conditions = {c: i for i, c in enumerate(split.normal_classes)} if conditional else None
        stream = StreamedTrain(split.train, conditions, seed)
        return TrainArrays(train_x=None, val_x=val_x, val_c=val_c, stream=stream)
    return TrainArrays(
        train_x=torch.from_numpy(to_float(split.train.images)),
        val_x=val_x,
        train_c=cond(split.train.labels),
        val_c=val_c,
    )


def _loaded(model_cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> VLAEBase:
    model = build_model(model_cfg)
    model.load_state_dict(weights)
    return model.eval()


def _condition_codes(
    model_cfg: ModelConfig, split: NormalSplit[Any], labels: np.ndarray
) -> np.ndarray | None:
    """A conditional model's condition codes of these labels (their normal class's index)."""
    return split.condition_index(labels) if model_cfg.num_conditions else None


def with_map_stats(
    model_cfg: ModelConfig, weights: dict[str, torch.Tensor], split: NormalSplit[Any]
) -> dict[str, torch.Tensor]:
    """The weights of a ``local``-score model with its map standardisation set from the
    normal validation images (never trained on, and apart from the calibration images, whose
    scores must stay exchangeable with new normal ones)."""
    if model_cfg.score_kind != "local":
        return weights
    model = _loaded(model_cfg, weights)
    codes = _condition_codes(model_cfg, split, split.validation.labels)
    model.set_map_stats(pixel_maps(model, split.validation.images, codes))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def calibration_scores(
    model_cfg: ModelConfig, weights: dict[str, torch.Tensor], split: NormalSplit[Any]
) -> pd.DataFrame:
    """Scores of the held-out normal images: the data thresholds are calibrated on, with
    each image's anomaly-map maximum (``map_max``: what pixel thresholds are calibrated on)."""
    model = _loaded(model_cfg, weights)
    codes = _condition_codes(model_cfg, split, split.calibration.labels)
    frame = score_images(model, split.calibration.images, codes, map_max=True).frame()
    frame.insert(0, "label", split.calibration.labels.astype(str))
    return frame


def reference_latents(
    model_cfg: ModelConfig, weights: dict[str, torch.Tensor], split: NormalSplit[Any]
) -> CalibrationLatents:
    """Latent means and images of the held-out normal images (the explorer's reference)."""
    model = _loaded(model_cfg, weights)
    codes = _condition_codes(model_cfg, split, split.calibration.labels)
    return calibration_latents(model, split.calibration.images, codes)


def check_line_conditions(
    line_conditions: dict[str, str], normal_classes: tuple[str, ...], conditional: bool
) -> dict[str, str]:
    """A line -> condition mapping for the model card, validated against the conditions."""
    if not line_conditions:
        return {}
    if not conditional:
        raise ValueError("a line -> condition mapping needs a conditional model (--conditional)")
    allowed = {*normal_classes, BEST_NAME}
    bad = {ln: c for ln, c in line_conditions.items() if str(c) not in allowed}
    if bad:
        raise ValueError(
            f"line conditions {bad}: each must be one of the normal classes {list(normal_classes)}"
            f" or {BEST_NAME!r}"
        )
    return {str(ln): str(c) for ln, c in line_conditions.items()}


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
    split: NormalSplit[Any],
    dataset: DatasetInfo,
    result: FitResult,
    launcher: dict[str, Any],
    seconds: float,
    line_conditions: dict[str, str] | None = None,
    data_profile: dict[str, Any] | None = None,
) -> CardDraft:
    """What the model is and how it was made; ``save_checkpoint`` adds architecture and version."""
    conditional = model_cfg.num_conditions > 0
    head = getattr(model_cfg, "head", 0)  # a SpatialVLAE with a defect head
    variant = {"conv": "ConvVLAE", "spatial": "SpatialVLAE"}.get(model_cfg.arch, "VLAE")
    if conditional:
        variant = "Conditional" + variant
    if cfg.denoising:
        variant = "Denoising" + variant
    final = result.history[-1] if result.history else {}
    return CardDraft(
        variant=variant,
        image_shape=model_cfg.image_shape,
        latent_dim=model_cfg.latent_dim,
        beta=cfg.beta,
        normal_classes=list(split.normal_classes),
        conditions=list(split.normal_classes) if conditional else [],
        line_conditions=dict(line_conditions or {}),
        score_kind=model_cfg.score_kind,
        likelihood=LIKELIHOOD_TEXT[model_cfg.likelihood].format(scale=model_cfg.scale),
        data_profile=data_profile,
        score=(HEAD_SCORE_TEXT if head else SCORE_KIND_TEXT[model_cfg.score_kind])
        + (CONTRAST_TEXT if conditional and line_conditions else ""),
        denoiser="DenoisingVLAE fitted in the same run" if cfg.denoiser else None,
        denoising=(
            f"trained to remove {cfg.noise} noise"
            + (", with a defect head trained to find it" if head else "")
        )
        if cfg.denoising
        else None,
        dataset=DatasetCard(
            name=dataset.name,
            data_dir=dataset.data_dir,
            image_folder=dataset.image_folder,
            train_fingerprint=split.train.fingerprint(),
            reader="ray-data" if isinstance(split.train, ImageFiles) else "memory",
            train_class_counts=split.train.class_counts(),
            n_train=len(split.train),
            n_validation=len(split.validation),
            n_calibration=len(split.calibration),
        ),
        training={**cfg.to_dict(), "launcher": launcher, "seconds": round(seconds, 2)},
        epochs=len(result.history),
        metrics={k: v for k, v in final.items() if k not in ("epoch", "epoch_s", "eta_s")},
        history=result.history,
        versions=_versions(),
        created_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
    )


def train_model(
    split: NormalSplit[Any],
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    dataset: DatasetInfo,
    fitter: Fitter,
    launcher: dict[str, Any],
    out: str | Path | None = None,
    store: str | Path | None = None,
    line_conditions: dict[str, str] | None = None,
    data_profile: dict[str, Any] | None = None,
) -> Path:
    """Fit on the normal split and write the checkpoint to ``out``, or to ``store/<version>``.
    ``line_conditions`` maps lines to the condition (a normal class) a conditional model
    scores their items under."""
    if out is None and store is None:
        raise ValueError("give an output directory or a model store")
    mapping = check_line_conditions(
        line_conditions or {}, split.normal_classes, model_cfg.num_conditions > 0
    )
    if model_cfg.image_shape != split.train.image_shape:
        raise ValueError(
            f"model image shape {model_cfg.image_shape} differs from the data's "
            f"{split.train.image_shape}"
        )
    if model_cfg.num_conditions:
        model_cfg = replace(model_cfg, num_conditions=len(split.normal_classes))
    t0 = time.monotonic()
    result = fitter(model_cfg, cfg, train_arrays(split, model_cfg.num_conditions > 0, cfg.seed))
    seconds = time.monotonic() - t0
    result.state_dicts["model"] = with_map_stats(model_cfg, result.state_dicts["model"], split)
    calibration = calibration_scores(model_cfg, result.state_dicts["model"], split)
    latents = reference_latents(model_cfg, result.state_dicts["model"], split)
    card = model_card(model_cfg, cfg, split, dataset, result, launcher, seconds, mapping,
                      data_profile)  # fmt: skip
    state_dicts = {k: v for k, v in result.state_dicts.items() if k in WEIGHT_FILES}
    return save_checkpoint(
        out, model_cfg, state_dicts, card, calibration, store=store, latents=latents
    )

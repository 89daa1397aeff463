"""The checkpoint directory: weights, model card, calibration scores; a model store of versions.

Layout of one checkpoint::

    model.safetensors      weights of the scoring model
    denoiser.safetensors   weights of the companion denoising model (when fitted)
    model_card.json        what the model is, how it was trained, its version
    calibration.csv        recon, kl, score of every held-out normal image
    calibration_latents.safetensors
                           latent means, condition and uint8 image of those images (the
                           explorer's normal reference: latent map, nearest normal items)

The model version is a content hash over the weight files, the calibration latents, the
architecture and the line-to-condition mapping of a conditional model, so any change to one of
them is a new version, and a corrupted or swapped file is detected on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from vlae.base import VLAEBase
from vlae.card import CardDraft, ModelCard
from vlae.condition import Condition
from vlae.model import ModelConfig, build_model, config_from_dict, config_to_dict

CARD = "model_card.json"
CALIBRATION = "calibration.csv"
WEIGHT_FILES = {"model": "model.safetensors", "denoiser": "denoiser.safetensors"}
LATENTS = "calibration_latents.safetensors"
# Files a content hash covers, when present; the card lists them (``hashed_files``).
HASHED_FILES = (*WEIGHT_FILES.values(), LATENTS, CALIBRATION)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, malformed, or does not match its content hash."""


class UnmappedLineError(ValueError):
    """A conditional model's card maps lines to conditions, and not this line."""


@dataclass(frozen=True)
class CalibrationLatents:
    """The held-out normal images as the model sees them: latent means (z = mu) under their
    own condition, that condition's code (``BEST`` for an unconditional model) and the uint8
    images."""

    mu: np.ndarray  # (N, D) float32
    conditions: np.ndarray  # (N,) int64
    images: np.ndarray  # (N, C, H, W) uint8

    def __len__(self) -> int:
        return len(self.mu)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "mu": torch.from_numpy(np.ascontiguousarray(self.mu, dtype=np.float32)),
            "conditions": torch.from_numpy(np.ascontiguousarray(self.conditions, np.int64)),
            "images": torch.from_numpy(np.ascontiguousarray(self.images, dtype=np.uint8)),
        }

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> CalibrationLatents:
        mu = t["mu"].numpy()  # flat: a spatial model's first checkpoints kept its grid
        return cls(mu.reshape(len(mu), -1), t["conditions"].numpy(), t["images"].numpy())


@dataclass
class LoadedModel:
    """A checkpoint in memory: the scoring model, the optional denoiser, card and calibration."""

    path: Path
    model: VLAEBase
    denoiser: VLAEBase | None
    card: ModelCard
    calibration: pd.DataFrame
    latents: CalibrationLatents | None = None  # None when saved without them

    @property
    def version(self) -> str:
        return self.card.model_version

    @property
    def conditions(self) -> list[str]:
        """Condition names of a conditional model, in index order ([] otherwise)."""
        return list(self.card.conditions)

    @property
    def line_conditions(self) -> dict[str, str]:
        """Line -> condition name (or ``best``) of a conditional model; ``*`` is the fallback."""
        return dict(self.card.line_conditions)

    def condition_index(self, name: str) -> int:
        """Index of a condition name; ValueError names the choices when it is not one."""
        try:
            return self.conditions.index(str(name))
        except ValueError:
            raise ValueError(
                f"condition {name!r} is not one of the model's {self.conditions}"
            ) from None

    def line_condition(self, line: str) -> Condition:
        """The condition an item of ``line`` is scored under: ``best`` for an unconditional
        model, a conditional one without a line mapping, or a line mapped to ``best``. A
        conditional model whose card maps lines refuses a line it does not map (and no ``*``
        fallback): ``UnmappedLineError``."""
        mapping = self.line_conditions if self.conditions else {}
        if not mapping:
            return Condition.best()
        name = mapping.get(line, mapping.get("*"))
        if name is None:
            raise UnmappedLineError(
                f"line {line!r} has no condition in model {self.version} (mapped lines: "
                f"{', '.join(sorted(mapping))}); map it at training time (--line-condition)"
            )
        return Condition.named(name, self.conditions)


def content_hash(
    directory: Path,
    architecture: dict[str, Any],
    line_conditions: dict[str, str],
    files: tuple[str, ...] | list[str],
) -> str:
    """sha256 over ``files`` where present, the architecture and a line mapping (when there
    is one), shortened to 16 hex digits."""
    h = hashlib.sha256(json.dumps(architecture, sort_keys=True).encode())
    if line_conditions:
        h.update(json.dumps({"line_conditions": line_conditions}, sort_keys=True).encode())
    for name in sorted(files):
        p = directory / name
        if p.exists():
            h.update(name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def save_checkpoint(
    directory: str | Path | None,
    model_cfg: ModelConfig,
    state_dicts: dict[str, dict[str, torch.Tensor]],
    draft: CardDraft,
    calibration: pd.DataFrame,
    store: str | Path | None = None,
    latents: CalibrationLatents | None = None,
) -> Path:
    """Write a checkpoint atomically (temp dir, then rename) to ``directory``, or into
    ``store`` under its model version; return its path."""
    if (directory is None) == (store is None):
        raise ValueError("give either a checkpoint directory or a model store")
    parent = Path(directory).parent if directory is not None else Path(str(store))
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=parent))
    try:
        for name, sd in state_dicts.items():
            save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / WEIGHT_FILES[name]))
        if latents is not None:
            save_file(latents.tensors(), str(tmp / LATENTS))
        architecture = config_to_dict(model_cfg)
        # The calibration scores set thresholds: a swapped file must not pass either.
        calibration.to_csv(tmp / CALIBRATION, index=False)
        hashed = sorted(n for n in HASHED_FILES if (tmp / n).exists())
        card = ModelCard(
            **dict(draft),
            architecture=architecture,
            has_denoiser="denoiser" in state_dicts,
            has_calibration_latents=latents is not None,
            hashed_files=hashed,
            model_version=content_hash(tmp, architecture, draft.line_conditions, hashed),
        )
        (tmp / CARD).write_text(card.to_json(indent=2) + "\n")
        directory = Path(directory) if directory is not None else parent / card.model_version
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_card(directory: str | Path) -> ModelCard:
    """The model card of a checkpoint directory."""
    p = Path(directory) / CARD
    try:
        return ModelCard.model_validate_json(p.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{directory} is not a checkpoint: no {CARD}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'card'}: {e['msg']}" for e in exc.errors()
        )
        raise CheckpointError(f"{p} is not a model card: {problems}") from exc


def verify_checkpoint(directory: str | Path) -> ModelCard:
    """The model card, once the files' content hash matches its model version."""
    directory = Path(directory)
    card = read_card(directory)
    actual = content_hash(directory, card.architecture, card.line_conditions, card.hashed_files)
    if actual != card.model_version:
        raise CheckpointError(
            f"content hash mismatch in {directory}: model card says {card.model_version}, files "
            f"hash to {actual} (corrupted or swapped checkpoint)"
        )
    return card


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and verify a checkpoint: the content hash must match the card's model version."""
    directory = Path(directory)
    card = verify_checkpoint(directory)
    cfg = config_from_dict(card.architecture)

    def _load(name: str) -> VLAEBase:
        m = build_model(cfg)
        try:
            # safetensors holds tensors only: no pickle, nothing executable in the file.
            m.load_state_dict(load_file(str(directory / WEIGHT_FILES[name])))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load {name} weights from {directory}: {exc}") from exc
        return m.to(device).eval()

    denoiser = _load("denoiser") if card.has_denoiser else None
    calibration = pd.read_csv(directory / CALIBRATION)
    latents = None
    if card.has_calibration_latents:
        try:
            latents = CalibrationLatents.from_tensors(load_file(str(directory / LATENTS)))
        except (OSError, RuntimeError, KeyError) as exc:
            raise CheckpointError(f"cannot load {LATENTS} from {directory}: {exc}") from exc
    return LoadedModel(directory, _load("model"), denoiser, card, calibration, latents)


@dataclass(frozen=True)
class StoredCard:
    """A checkpoint of a model store: its directory and its card."""

    path: Path
    card: ModelCard


def list_versions(store: str | Path) -> list[StoredCard]:
    """Cards of every checkpoint in a model store, newest first (unreadable cards skipped)."""
    store = Path(store)
    if not store.is_dir():
        return []
    found = []
    for d in store.iterdir():
        if (d / CARD).is_file():
            try:
                found.append(StoredCard(d, read_card(d)))
            except CheckpointError:
                continue
    return sorted(found, key=lambda v: v.card.created_at, reverse=True)


def resolve_checkpoint(path: str | Path, version: str | None = None) -> Path:
    """A checkpoint directory from a checkpoint path or a store path (newest, or ``version``)."""
    p = Path(path)
    if (p / CARD).is_file() and version is None:
        return p
    versions = list_versions(p)
    if version is not None:
        versions = [v for v in versions if v.card.model_version == version]
    if not versions:
        what = f"version {version}" if version else "checkpoint"
        raise CheckpointError(f"no {what} in {p}")
    return versions[0].path

"""The checkpoint directory: weights, model card, calibration scores; a model store of versions.

Layout of one checkpoint::

    model.safetensors      weights of the scoring model
    denoiser.safetensors   weights of the companion denoising model (when fitted)
    model_card.json        what the model is, how it was trained, its version
    calibration.csv        recon, kl, score of every held-out normal image

The model version is a content hash over the weight files and the architecture, so any change
to either is a new version, and a corrupted or swapped file is detected on load.
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

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from trainer.model import ModelConfig, _VLAEBase, build_model, config_from_dict, config_to_dict

CARD = "model_card.json"
CALIBRATION = "calibration.csv"
WEIGHT_FILES = {"model": "model.safetensors", "denoiser": "denoiser.safetensors"}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, malformed, or does not match its content hash."""


@dataclass
class LoadedModel:
    """A checkpoint in memory: the scoring model, the optional denoiser, card and calibration."""

    path: Path
    model: _VLAEBase
    denoiser: _VLAEBase | None
    card: dict[str, Any]
    calibration: pd.DataFrame

    @property
    def version(self) -> str:
        return str(self.card["model_version"])

    @property
    def conditions(self) -> list[str]:
        """Condition names of a conditional model, in index order ([] otherwise)."""
        return list(self.card.get("conditions", []))


def content_hash(directory: Path, architecture: dict[str, Any]) -> str:
    """sha256 over the weight files present and the architecture, shortened to 16 hex digits."""
    h = hashlib.sha256(json.dumps(architecture, sort_keys=True).encode())
    for name in sorted(WEIGHT_FILES.values()):
        p = directory / name
        if p.exists():
            h.update(name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def save_checkpoint(
    directory: str | Path | None,
    model_cfg: ModelConfig,
    state_dicts: dict[str, dict[str, torch.Tensor]],
    card: dict[str, Any],
    calibration: pd.DataFrame,
    store: str | Path | None = None,
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
        architecture = config_to_dict(model_cfg)
        card = dict(card)
        card["architecture"] = architecture
        card["has_denoiser"] = "denoiser" in state_dicts
        card["model_version"] = content_hash(tmp, architecture)
        (tmp / CARD).write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
        calibration.to_csv(tmp / CALIBRATION, index=False)
        directory = Path(directory) if directory is not None else parent / card["model_version"]
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_card(directory: str | Path) -> dict[str, Any]:
    """The model card of a checkpoint directory."""
    p = Path(directory) / CARD
    try:
        card: dict[str, Any] = json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{directory} is not a checkpoint: no {CARD}") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p} is not valid JSON: {exc}") from exc
    return card


def verify_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The model card, once the files' content hash matches its model version."""
    directory = Path(directory)
    card = read_card(directory)
    try:
        architecture = card["architecture"]
        expected = card["model_version"]
    except KeyError as exc:
        raise CheckpointError(f"model card of {directory} lacks {exc}") from exc
    actual = content_hash(directory, architecture)
    if actual != expected:
        raise CheckpointError(
            f"content hash mismatch in {directory}: model card says {expected}, files hash to "
            f"{actual} (corrupted or swapped checkpoint)"
        )
    return card


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and verify a checkpoint: the content hash must match the card's model version."""
    directory = Path(directory)
    card = verify_checkpoint(directory)
    cfg = config_from_dict(card["architecture"])

    def _load(name: str) -> _VLAEBase:
        m = build_model(cfg)
        try:
            # safetensors holds tensors only: no pickle, nothing executable in the file.
            m.load_state_dict(load_file(str(directory / WEIGHT_FILES[name])))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load {name} weights from {directory}: {exc}") from exc
        return m.to(device).eval()

    denoiser = _load("denoiser") if card.get("has_denoiser") else None
    calibration = pd.read_csv(directory / CALIBRATION)
    return LoadedModel(directory, _load("model"), denoiser, card, calibration)


def list_versions(store: str | Path) -> list[dict[str, Any]]:
    """Cards of every checkpoint in a model store, newest first."""
    store = Path(store)
    if not store.is_dir():
        return []
    cards = []
    for d in store.iterdir():
        if (d / CARD).is_file():
            try:
                card = read_card(d)
            except CheckpointError:
                continue
            card["path"] = str(d)
            cards.append(card)
    return sorted(cards, key=lambda c: str(c.get("created_at", "")), reverse=True)


def resolve_checkpoint(path: str | Path, version: str | None = None) -> Path:
    """A checkpoint directory from a checkpoint path or a store path (newest, or ``version``)."""
    p = Path(path)
    if (p / CARD).is_file() and version is None:
        return p
    versions = list_versions(p)
    if version is not None:
        versions = [c for c in versions if c.get("model_version") == version]
    if not versions:
        what = f"version {version}" if version else "checkpoint"
        raise CheckpointError(f"no {what} in {p}")
    return Path(versions[0]["path"])

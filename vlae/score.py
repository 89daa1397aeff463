"""Scoring images with a model: the score parts (recon, kl, complexity, contrast), the best
condition of a conditional model, and per-pixel anomaly maps. Training, evaluation and serving
all score through here."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from vlae.base import VLAEBase
from vlae.condition import is_best
from vlae.images import to_float
from vlae.likelihood import ScoreKind, combine_score, local_parts, total_variation


@dataclass
class Scores:
    """Per-item score parts and the model's score of them (``vlae.likelihood.combine_score``).

    ``contrast`` (conditional models scored under a given condition): how much better another
    condition explains the item, elbo(x | c) - min over c' of elbo(x | c'), >= 0. It is added
    to the ELBO before the complexity normalisation: an item of another product type that the
    line's condition still reconstructs (its latent carries the shape) scores high, because the
    other product's condition explains it better. 0 for an item scored under its best one.
    """

    recon: np.ndarray
    kl: np.ndarray
    complexity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    kind: ScoreKind = "elbo"
    contrast: np.ndarray | None = None
    maps: np.ndarray | None = None  # (N, H, W) float32: ``VLAEBase.score_map``, when asked
    map_max: np.ndarray | None = None  # (N,): each map's maximum, when asked

    @property
    def elbo(self) -> np.ndarray:
        """recon + kl: the negative ELBO at z = mu."""
        return self.recon + self.kl

    @property
    def score(self) -> np.ndarray:
        """The anomaly score per item: ``combine_score`` of the parts."""
        return combine_score(self.recon, self.kl, self.complexity, self.kind, self.contrast)

    def frame(self) -> pd.DataFrame:
        columns = {"recon": self.recon, "kl": self.kl, "complexity": self.complexity}
        if self.contrast is not None:
            columns["contrast"] = self.contrast
        frame = pd.DataFrame({**columns, "score": self.score})
        if self.map_max is not None:
            frame["map_max"] = self.map_max
        return frame


@torch.no_grad()
def _all_conditions(model: VLAEBase, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(recon, kl) of every item under every condition, each (K, N)."""
    k = int(model.config.num_conditions)
    options = [model.anomaly_score(x, torch.full((len(x),), j, device=x.device)) for j in range(k)]
    return torch.stack([o[0] for o in options]), torch.stack([o[1] for o in options])


@torch.no_grad()
def best_conditions(model: VLAEBase, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For a conditional model scored without conditions: per item, the condition under which
    it looks most normal (lowest score), and its (recon, kl) under that condition."""
    r_all, kl_all = _all_conditions(model, x)
    best = (r_all + kl_all).argmin(dim=0, keepdim=True)
    return best[0], r_all.gather(0, best)[0], kl_all.gather(0, best)[0]


@torch.no_grad()
def score_images(
    model: VLAEBase,
    images: np.ndarray,
    conditions: np.ndarray | None = None,
    batch_size: int = 512,
    maps: bool = False,
    map_max: bool = False,
) -> Scores:
    """Score uint8 (N, C, H, W) images under ``conditions``, a batch of condition codes
    (``vlae.condition``); a conditional model without them (or an item whose code is
    ``BEST``) takes, per item, the condition under which it looks most normal (lowest score).
    ``maps``: also the map each score is built from; ``map_max``: each map's maximum (what a
    pixel threshold is calibrated on), without keeping the maps."""
    model.eval()
    device = next(model.parameters()).device
    k = int(getattr(model.config, "num_conditions", 0))
    kind: ScoreKind = getattr(model.config, "score_kind", "elbo")
    recon_parts, kl_parts, complexity, contrast = [], [], [], []
    map_parts: list[np.ndarray] = []
    peak_parts: list[np.ndarray] = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(to_float(images[i : i + batch_size])).to(device)
        complexity.append(total_variation(x).cpu().numpy())
        chosen: torch.Tensor | None = None
        batch_map: torch.Tensor | None = None
        if k == 0 and kind == "local":
            recon_map, kl_map = model.anomaly_maps(x)  # once: the score and the map
            r, kl = local_parts(recon_map, kl_map)
            batch_map = combine_score(recon_map, kl_map, None, kind)
        elif k == 0:
            r, kl = model.anomaly_score(x)
        elif conditions is not None:
            c = torch.from_numpy(np.asarray(conditions[i : i + batch_size])).to(device).long()
            r_all, kl_all = _all_conditions(model, x)
            elbo_all = r_all + kl_all
            chosen = torch.where(is_best(c), elbo_all.argmin(dim=0), c)
            r, kl = r_all.gather(0, chosen[None])[0], kl_all.gather(0, chosen[None])[0]
            contrast.append(((r + kl) - elbo_all.min(dim=0).values).cpu().numpy())
        else:
            chosen, r, kl = best_conditions(model, x)
        if (maps or map_max) and batch_map is None:
            batch_map = model.score_map(x, chosen)
        if batch_map is not None:
            if maps:
                map_parts.append(batch_map.cpu().numpy())
            peak_parts.append(batch_map.flatten(1).max(dim=1).values.cpu().numpy())
        recon_parts.append(r.cpu().numpy())
        kl_parts.append(kl.cpu().numpy())
    if not recon_parts:
        empty = np.zeros(0, np.float32)
        no_maps = np.zeros((0, *images.shape[2:]), np.float32) if maps else None
        return Scores(empty, empty, empty, kind, maps=no_maps, map_max=empty if map_max else None)
    return Scores(np.concatenate(recon_parts), np.concatenate(kl_parts),
                  np.concatenate(complexity), kind,
                  np.concatenate(contrast) if contrast else None,
                  np.concatenate(map_parts).astype(np.float32) if maps else None,
                  np.concatenate(peak_parts).astype(np.float64) if map_max else None)  # fmt: skip


@torch.no_grad()
def pixel_maps(
    model: VLAEBase, images: np.ndarray, conditions: np.ndarray | None = None, batch: int = 256
) -> torch.Tensor:
    """The raw per-pixel map terms (N, T, H, W) of uint8 images at z = mu (what map
    standardisation is fitted on)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(to_float(images[i : i + batch])).to(device)
        c = None if conditions is None else torch.from_numpy(conditions[i : i + batch]).to(device)
        out.append(model.pixel_terms(x, c).cpu())
    return torch.cat(out)

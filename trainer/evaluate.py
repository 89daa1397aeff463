"""Scoring arrays of images with a model, and detection metrics on a labelled test set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from trainer.checkpoint import LoadedModel
from trainer.data import DataError, LabelledImages, to_float
from trainer.model import ScoreKind, _VLAEBase, combine_score, total_variation

SCORE_KINDS = ("recon", "kl", "elbo", "score")


@dataclass
class Scores:
    """Per-item score parts and the model's score of them (``trainer.model.combine_score``).

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

    @property
    def elbo(self) -> np.ndarray:
        """recon + kl: the negative ELBO at z = mu."""
        return self.recon + self.kl

    @property
    def score(self) -> np.ndarray:
        extra = 0.0 if self.contrast is None else self.contrast
        if self.kind == "elbo":
            return self.elbo + extra
        recon, kl, complexity = (torch.from_numpy(np.asarray(a))
                                 for a in (self.recon + extra, self.kl,
                                           self.complexity))  # fmt: skip
        return combine_score(recon, kl, complexity, self.kind).numpy()

    def frame(self) -> pd.DataFrame:
        columns = {"recon": self.recon, "kl": self.kl, "complexity": self.complexity}
        if self.contrast is not None:
            columns["contrast"] = self.contrast
        return pd.DataFrame({**columns, "score": self.score})


@torch.no_grad()
def _all_conditions(model: _VLAEBase, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(recon, kl) of every item under every condition, each (K, N)."""
    k = int(model.config.num_conditions)
    options = [model.anomaly_score(x, torch.full((len(x),), j, device=x.device)) for j in range(k)]
    return torch.stack([o[0] for o in options]), torch.stack([o[1] for o in options])


@torch.no_grad()
def best_conditions(model: _VLAEBase, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For a conditional model scored without conditions: per item, the condition under which
    it looks most normal (lowest score), and its (recon, kl) under that condition."""
    r_all, kl_all = _all_conditions(model, x)
    best = (r_all + kl_all).argmin(dim=0, keepdim=True)
    return best[0], r_all.gather(0, best)[0], kl_all.gather(0, best)[0]


@torch.no_grad()
def score_images(
    model: _VLAEBase,
    images: np.ndarray,
    conditions: np.ndarray | None = None,
    batch_size: int = 512,
) -> Scores:
    """Score uint8 (N, C, H, W) images; a conditional model without conditions (or with a
    negative condition index for an item) takes, per item, the condition under which it looks
    most normal (lowest score)."""
    model.eval()
    device = next(model.parameters()).device
    k = int(getattr(model.config, "num_conditions", 0))
    kind: ScoreKind = getattr(model.config, "score_kind", "elbo")
    recon_parts, kl_parts, complexity, contrast = [], [], [], []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(to_float(images[i : i + batch_size])).to(device)
        complexity.append(total_variation(x).cpu().numpy())
        if k == 0:
            r, kl = model.anomaly_score(x)
        elif conditions is not None:
            c = torch.from_numpy(np.asarray(conditions[i : i + batch_size])).to(device).long()
            r_all, kl_all = _all_conditions(model, x)
            elbo_all = r_all + kl_all
            c = torch.where(c < 0, elbo_all.argmin(dim=0), c)  # -1: the item's best
            r, kl = r_all.gather(0, c[None])[0], kl_all.gather(0, c[None])[0]
            contrast.append(((r + kl) - elbo_all.min(dim=0).values).cpu().numpy())
        else:
            _, r, kl = best_conditions(model, x)
        recon_parts.append(r.cpu().numpy())
        kl_parts.append(kl.cpu().numpy())
    if not recon_parts:
        empty = np.zeros(0, np.float32)
        return Scores(empty, empty, empty, kind)
    return Scores(np.concatenate(recon_parts), np.concatenate(kl_parts),
                  np.concatenate(complexity), kind,
                  np.concatenate(contrast) if contrast else None)  # fmt: skip


def detection_metrics(scores: Scores, is_anomaly: np.ndarray) -> dict[str, dict[str, float]]:
    """AUROC and average precision of each score kind (anomalies are the positive class)."""
    if is_anomaly.all() or not is_anomaly.any():
        raise DataError("the test set needs both normal and anomalous images")
    out: dict[str, dict[str, float]] = {"auroc": {}, "average_precision": {}}
    for kind in SCORE_KINDS:
        s = getattr(scores, kind)
        out["auroc"][kind] = float(roc_auc_score(is_anomaly, s))
        out["average_precision"][kind] = float(average_precision_score(is_anomaly, s))
    return out


def evaluate(loaded: LoadedModel, test: LabelledImages) -> dict[str, Any]:
    """The JSON report of ``vlaewatch evaluate``: metrics per score kind and per class."""
    normal = [str(c) for c in loaded.card["normal_classes"]]
    labels = test.labels.astype(str)
    is_anomaly = ~np.isin(labels, normal)
    scores = score_images(loaded.model, test.images)
    metrics = detection_metrics(scores, is_anomaly)
    df = scores.frame().assign(elbo=scores.elbo, label=labels)
    per_class = df.groupby("label")[list(SCORE_KINDS)].mean().round(3).to_dict(orient="index")
    return {
        "model_version": loaded.version,
        "normal_classes": normal,
        "n_test": len(test),
        "n_normal": int((~is_anomaly).sum()),
        "n_anomalous": int(is_anomaly.sum()),
        **metrics,
        "mean_score_by_class": per_class,
    }

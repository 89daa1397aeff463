"""Scoring arrays of images with a model, and detection metrics on a labelled test set."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from trainer.data import DataError, LabelledImages
from vlae.checkpoint import LoadedModel
from vlae.score import Scores, score_images

SCORE_KINDS = ("recon", "kl", "elbo", "score")


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


def evaluate(
    loaded: LoadedModel,
    test: LabelledImages,
    masks: np.ndarray | None = None,
    normal: list[str] | None = None,
) -> dict[str, Any]:
    """The JSON report of ``vlaewatch evaluate``: image AUROC per score kind and per class;
    with defect ``masks`` (N, H, W), pixel AUROC of the score's map too (all images, and each
    class's images beside the normal ones). ``normal``: the normal classes of ``test``
    (default: the model's)."""
    normal = normal or list(loaded.card.normal_classes)
    labels = test.labels.astype(str)
    is_anomaly = ~np.isin(labels, normal)
    scores = score_images(loaded.model, test.images, maps=masks is not None)
    metrics = detection_metrics(scores, is_anomaly)
    df = scores.frame().assign(elbo=scores.elbo, label=labels)
    per_class = df.groupby("label")[list(SCORE_KINDS)].mean().round(3).to_dict(orient="index")
    report = {
        "model_version": loaded.version,
        "normal_classes": normal,
        "n_test": len(test),
        "n_normal": int((~is_anomaly).sum()),
        "n_anomalous": int(is_anomaly.sum()),
        **metrics,
        "auroc_by_class": auroc_by_class(labels, scores.score, normal),
        "mean_score_by_class": per_class,
    }
    if masks is not None:
        assert scores.maps is not None
        if masks.shape != scores.maps.shape:
            raise DataError(f"masks of shape {masks.shape} for maps of {scores.maps.shape}")
        report["pixel_auroc"] = float(roc_auc_score(masks.ravel(), scores.maps.ravel()))
        report["pixel_auroc_by_class"] = pixel_auroc_by_class(labels, scores.maps, masks, normal)
    return report


def auroc_by_class(labels: np.ndarray, score: np.ndarray, normal: list[str]) -> dict[str, float]:
    """Image AUROC of each anomalous class's items against the normal ones."""
    is_normal = np.isin(labels, normal)
    picks = {str(c): is_normal | (labels == c) for c in sorted(set(labels[~is_normal]))}
    return {c: float(roc_auc_score(labels[pick] == c, score[pick])) for c, pick in picks.items()}


def pixel_auroc_by_class(
    labels: np.ndarray, maps: np.ndarray, masks: np.ndarray, normal: list[str]
) -> dict[str, float]:
    """Pixel AUROC of the maps against the defect masks, over each anomalous class's images
    and the normal ones."""
    is_normal = np.isin(labels, normal)
    out = {}
    for c in sorted(set(labels[~is_normal])):
        pick = is_normal | (labels == c)
        out[str(c)] = float(roc_auc_score(masks[pick].ravel(), maps[pick].ravel()))
    return out

"""Checking a report's AUROC figures against sklearn's on the same model's scores: a figure
computed on the wrong images, masks or labels no longer matches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score


def assert_recomputed(
    image: Mapping[str, float],
    pixel: Mapping[str, float],
    labels: np.ndarray,
    masks: np.ndarray,
    scores: np.ndarray,
    maps: np.ndarray,
    defects: Iterable[str],
) -> None:
    """Per defect: ``image[d]`` is the AUROC of that defect's images against the good ones
    (``labels`` "good") by ``scores``, and ``pixel[d]`` that of every pixel of those images by
    ``maps`` against their own ``masks``."""
    good = labels == "good"
    for d in defects:
        pick = good | (labels == d)
        at_image = roc_auc_score(labels[pick] == d, scores[pick])
        at_pixel = roc_auc_score(masks[pick].ravel(), maps[pick].ravel())
        assert image[d] == pytest.approx(at_image, abs=1e-6), d
        assert pixel[d] == pytest.approx(at_pixel, abs=1e-6), d

"""Where a part is defective: the connected regions of its anomaly map above a pixel threshold.

A region is an 8-connected component of the map's pixels above the threshold, reported as its
bounding box, its area and the map's peak inside it, in the pixel coordinates of the image as
it was sent (the map is at the model's input size; a resized image's regions are scaled back).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MAX_REGIONS = 16  # per item, largest first
_EIGHT = np.ones((3, 3), dtype=bool)


def find_regions(
    anomaly_map: np.ndarray,
    threshold: float,
    source_hw: tuple[int, int] | None = None,
    max_regions: int = MAX_REGIONS,
) -> tuple[list[dict[str, float | int]], float]:
    """The regions of an (H, W) map above ``threshold`` as ``{x, y, w, h, area, peak}``
    (largest first, at most ``max_regions``), and ``defect_area``: the share of the image
    above the threshold (every region, counted or not). ``source_hw``: the size of the image
    as sent, when the model saw it resized."""
    h, w = anomaly_map.shape
    above = anomaly_map > threshold
    if not above.any():
        return [], 0.0
    sy, sx = (source_hw[0] / h, source_hw[1] / w) if source_hw else (1.0, 1.0)
    labels, n = ndimage.label(above, structure=_EIGHT)
    index = np.arange(1, n + 1)
    areas = ndimage.sum_labels(above, labels, index)
    peaks = ndimage.maximum(anomaly_map, labels, index)
    boxes = ndimage.find_objects(labels)
    order = np.argsort(-areas, kind="stable")[:max_regions]
    regions: list[dict[str, float | int]] = []
    for k in order:
        ys, xs = boxes[k]
        x0, y0 = int(np.floor(xs.start * sx)), int(np.floor(ys.start * sy))
        x1, y1 = int(np.ceil(xs.stop * sx)), int(np.ceil(ys.stop * sy))
        regions.append({"x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0,
                        "area": round(float(areas[k]) * sx * sy),
                        "peak": round(float(peaks[k]), 4)})  # fmt: skip
    return regions, float(above.mean())

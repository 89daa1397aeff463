"""Preview images of a scored item: original, reconstruction, denoised, per-pixel error map,
and the overlay an operator reads an alert by: the part with its map and regions, beside the
part as it should have looked."""

from __future__ import annotations

import numpy as np
import torch

from vlae.base import VLAEBase
from vlae.checkpoint import LoadedModel
from vlae.condition import BEST_CONDITION, Condition
from vlae.figures import hwc, to_png
from vlae.images import to_float
from vlae.regions import find_regions
from vlae.score import best_conditions

LOCAL_MAP_FULL_SCALE = 8.0  # anomaly-map value shown white (spreads of the normal maximum)
OUTLINE = np.array([0, 255, 255], dtype=np.uint8)  # cyan: apart from the red-yellow map


def heatmap(error: np.ndarray) -> np.ndarray:
    """Absolute error in [0, 1] (H, W) as a black-red-yellow-white image (H, W, 3) uint8.

    The scale is absolute, not per image, so two items' maps can be compared by eye.
    """
    e = np.clip(error, 0.0, 1.0)
    rgb = np.stack([np.clip(3 * e, 0, 1), np.clip(3 * e - 1, 0, 1), np.clip(3 * e - 2, 0, 1)], -1)
    return (rgb * 255).round().astype(np.uint8)


def _condition(model: VLAEBase, x: torch.Tensor, condition: Condition) -> torch.Tensor | None:
    """A conditional model's condition for the items: ``condition`` (the item's line's), or
    their best one when it is ``best``; None for other models."""
    if not model.config.num_conditions:
        return None
    if condition.is_best:
        return best_conditions(model, x)[0]
    return torch.full((len(x),), condition.code, device=x.device)


def overlay(
    original: np.ndarray, error: np.ndarray, regions: list[dict[str, float | int]]
) -> np.ndarray:
    """The original (H, W, 3) uint8 with the error heatmap (in [0, 1]) blended in where it is
    high, and each region (model-input coordinates) outlined."""
    e = np.clip(error, 0.0, 1.0)[..., None]
    out = (original * (1 - 0.6 * e) + heatmap(error) * (0.6 * e)).round().astype(np.uint8)
    h, w = error.shape
    for r in regions:
        x0, y0 = int(r["x"]), int(r["y"])
        x1, y1 = min(w, x0 + int(r["w"])) - 1, min(h, y0 + int(r["h"])) - 1
        out[y0, x0 : x1 + 1] = out[y1, x0 : x1 + 1] = OUTLINE
        out[y0 : y1 + 1, x0] = out[y0 : y1 + 1, x1] = OUTLINE
    return out


def render(
    loaded: LoadedModel,
    image: np.ndarray,
    scale: int = 4,
    condition: Condition = BEST_CONDITION,
    pixel_threshold: float | None = None,
) -> dict[str, bytes]:
    """PNGs of one uint8 (C, H, W) image: original, reconstruction, denoised, error, panel,
    and overlay (the original with its map and, given its line's ``pixel_threshold``, its
    regions outlined, beside the denoised image); a conditional model reconstructs under
    ``condition`` (by default, the item's best)."""
    device = next(loaded.model.parameters()).device
    x = torch.from_numpy(to_float(image[None])).to(device)
    c = _condition(loaded.model, x, condition)
    recon = loaded.model.reconstruct(x, c)[0].cpu().numpy()
    denoiser = loaded.denoiser or loaded.model
    c_denoiser = c if denoiser is loaded.model else _condition(denoiser, x, condition)
    denoised = denoiser.reconstruct(x, c_denoiser)[0].cpu().numpy()
    # The map the score is built from: the local score's heatmap, and where regions are found
    # (a non-local model's map costs another pass, taken only for regions).
    score_map: np.ndarray | None = None
    if loaded.model.config.score_kind == "local" or pixel_threshold is not None:
        score_map = loaded.model.score_map(x, c)[0].cpu().numpy()
    if loaded.model.config.score_kind == "local" and score_map is not None:
        # The anomaly map the score is the maximum of: 0 (black, a typical normal image's
        # worst place) to 8 spreads of the normal maximum above it (white), for every item.
        error = score_map / LOCAL_MAP_FULL_SCALE
    else:
        error = np.abs(x[0].cpu().numpy() - recon).mean(axis=0)
    regions = []
    if pixel_threshold is not None and score_map is not None:
        regions = find_regions(score_map, pixel_threshold)[0]

    def u8(a: np.ndarray) -> np.ndarray:
        return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)

    tiles = {
        "original": hwc(image),
        "reconstruction": hwc(u8(recon)),
        "denoised": hwc(u8(denoised)),
        "error": heatmap(error),
    }
    h = image.shape[1]
    gap = np.full((h, 1, 3), 64, dtype=np.uint8)
    panel = np.concatenate([part for t in tiles.values() for part in (t, gap)][:-1], axis=1)
    out = {kind: to_png(tile, scale) for kind, tile in tiles.items()}
    out["panel"] = to_png(panel, scale)
    marked = overlay(tiles["original"], error, regions)
    out["overlay"] = to_png(np.concatenate([marked, gap, tiles["denoised"]], axis=1), scale)
    return out

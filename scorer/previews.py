"""Preview images of a scored item: original, reconstruction, denoised, per-pixel error map."""

from __future__ import annotations

import io

import numpy as np
import torch

from trainer.checkpoint import LoadedModel
from trainer.data import to_float
from trainer.evaluate import best_conditions
from trainer.model import _VLAEBase


def heatmap(error: np.ndarray) -> np.ndarray:
    """Absolute error in [0, 1] (H, W) as a black-red-yellow-white image (H, W, 3) uint8.

    The scale is absolute, not per image, so two items' maps can be compared by eye.
    """
    e = np.clip(error, 0.0, 1.0)
    rgb = np.stack([np.clip(3 * e, 0, 1), np.clip(3 * e - 1, 0, 1), np.clip(3 * e - 2, 0, 1)], -1)
    return (rgb * 255).round().astype(np.uint8)


def _hwc(chw: np.ndarray) -> np.ndarray:
    """uint8 (C, H, W) to (H, W, 3) for display."""
    hwc = chw.transpose(1, 2, 0)
    return np.repeat(hwc, 3, axis=2) if hwc.shape[2] == 1 else hwc


def to_png(rgb: np.ndarray, scale: int = 1) -> bytes:
    """(H, W, 3) uint8 as PNG bytes, upscaled by ``scale`` (nearest neighbour)."""
    from PIL import Image

    if scale > 1:
        rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@torch.no_grad()
def _reconstruct(model: _VLAEBase, x: torch.Tensor) -> torch.Tensor:
    """Deterministic reconstruction at z = mu; a conditional model uses its best condition."""
    c = best_conditions(model, x)[0] if model.config.num_conditions else None
    mu, _ = model.encode(x, c)
    return model.decode(mu, c)


def render(loaded: LoadedModel, image: np.ndarray, scale: int = 4) -> dict[str, bytes]:
    """PNGs of one uint8 (C, H, W) image: original, reconstruction, denoised, error, panel."""
    device = next(loaded.model.parameters()).device
    x = torch.from_numpy(to_float(image[None])).to(device)
    recon = _reconstruct(loaded.model, x)[0].cpu().numpy()
    denoiser = loaded.denoiser or loaded.model
    denoised = _reconstruct(denoiser, x)[0].cpu().numpy()
    error = np.abs(x[0].cpu().numpy() - recon).mean(axis=0)

    def u8(a: np.ndarray) -> np.ndarray:
        return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)

    tiles = {
        "original": _hwc(image),
        "reconstruction": _hwc(u8(recon)),
        "denoised": _hwc(u8(denoised)),
        "error": heatmap(error),
    }
    h = image.shape[1]
    gap = np.full((h, 1, 3), 64, dtype=np.uint8)
    panel = np.concatenate([part for t in tiles.values() for part in (t, gap)][:-1], axis=1)
    out = {kind: to_png(tile, scale) for kind, tile in tiles.items()}
    out["panel"] = to_png(panel, scale)
    return out

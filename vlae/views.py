"""Explorer views: a latent-space computation (``vlae.explore``) rendered as a PNG
(``vlae.figures``) with its numbers, shared by ``vlaewatch explore`` and the scorer's
``/v1/explore``. Items arrive as uint8 images with the condition each is encoded under.

A request that does not fit the model (an unknown condition, a dimension out of range) raises
ValueError with the reason; a checkpoint without calibration latents ``MissingLatentsError``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vlae import explore
from vlae.checkpoint import CalibrationLatents, CheckpointError, LoadedModel
from vlae.figures import grid_png, latent_map_png


class MissingLatentsError(CheckpointError):
    """A checkpoint saved without calibration latents: no normal reference to compare with."""


def require_latents(loaded: LoadedModel) -> CalibrationLatents:
    """The checkpoint's calibration latents, or a clear error when it was saved without."""
    if loaded.latents is None:
        raise MissingLatentsError(
            f"checkpoint {loaded.path} (model {loaded.version}) has no calibration latents: "
            "train it again to explore it"
        )
    return loaded.latents


@dataclass(frozen=True)
class Items:
    """Named uint8 images (N, C, H, W) with the condition each is encoded under (-1: best)."""

    names: list[str]
    images: np.ndarray
    conditions: np.ndarray


def conditions_of(loaded: LoadedModel, labels: np.ndarray) -> np.ndarray:
    """Per item, the index of its class among the model's conditions, else -1 (best)."""
    names = loaded.conditions
    return np.array([names.index(str(x)) if str(x) in names else -1 for x in labels], np.int64)


def sample(
    loaded: LoadedModel, n: int, condition: str | None, seed: int, scale: int
) -> tuple[bytes, dict[str, Any]]:
    """``n`` prior samples; a conditional model gets a row per condition (or the one given)."""
    if loaded.conditions:
        names = [condition] if condition else loaded.conditions
        rows = [explore.sample_prior(loaded.model, n, loaded.condition_index(c), seed)
                for c in names]  # fmt: skip
        return grid_png(np.stack(rows), scale), {"n": n, "conditions": names, "seed": seed}
    if condition:
        raise ValueError(f"model {loaded.version} is not conditional: it takes no condition")
    images = explore.sample_prior(loaded.model, n, None, seed)
    cols = min(n, 8)
    rows_n = -(-n // cols)
    pad = rows_n * cols - n
    if pad:
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.uint8)])
    png = grid_png(images.reshape(rows_n, cols, *images.shape[1:]), scale)
    return png, {"n": n, "conditions": [], "seed": seed}


def interpolate(
    loaded: LoadedModel, items: Items, steps: int, scale: int
) -> tuple[bytes, dict[str, Any]]:
    """The strip from item A to item B, the two originals at its ends."""
    mu, used = explore.encode(loaded.model, items.images, items.conditions)
    ca, cb = (int(used[0]), int(used[1])) if loaded.conditions else (None, None)
    strip = explore.interpolate(loaded.model, mu[0], mu[1], steps, ca, cb)
    row = np.concatenate([items.images[:1], strip, items.images[1:2]])
    ends = _distances(strip[[0, -1]], items.images[:2])
    data = {"items": items.names, "steps": steps, "endpoint_mse": ends.tolist()}
    return grid_png(row[None], scale), data


def _distances(decoded: np.ndarray, originals: np.ndarray) -> np.ndarray:
    """Mean squared pixel error (pixels in [0, 1]) of every decoded image to every original."""
    a = decoded.reshape(len(decoded), -1).astype(np.float32) / 255
    b = originals.reshape(len(originals), -1).astype(np.float32) / 255
    return np.asarray(((a[:, None, :] - b[None, :, :]) ** 2).mean(axis=2))


def traverse(
    loaded: LoadedModel, items: Items | None, dims: list[int] | None, n_dims: int, steps: int,
    span: float, scale: int, condition: str | None,
) -> tuple[bytes, dict[str, Any]]:  # fmt: skip
    """Rows of one-dimension traversals around an item (or the normal centroid)."""
    ref = require_latents(loaded)
    dims = dims if dims else explore.active_dims(ref.mu, n_dims)
    cond: int | None = None
    if items is not None:
        mu, used = explore.encode(loaded.model, items.images[:1], items.conditions[:1])
        z0, cond = mu[0], (int(used[0]) if loaded.conditions else None)
    else:
        z0 = ref.mu.mean(axis=0)
        if loaded.conditions:
            cond = loaded.condition_index(condition or loaded.conditions[0])
    rows, values = explore.traverse(loaded.model, z0, dims, steps, span, ref.mu.std(axis=0), cond)
    data = {"start": items.names[0] if items else "normal centroid", "dims": dims,
            "values": values.round(4).tolist(), "span_std": span}  # fmt: skip
    return grid_png(rows, scale), data


def compress(
    loaded: LoadedModel, items: Items, dtype: explore.CodeDtype, scale: int
) -> tuple[bytes, dict[str, Any]]:
    """Originals (top row) and their decoded latent codes (bottom row), with the numbers."""
    result = explore.compress(loaded.model, items.images, items.conditions, dtype)
    png = grid_png(np.stack([items.images, result.decoded]), scale)
    per_item = [{"item": n, "mse": float(m), "psnr_db": float(p)}
                for n, m, p in zip(items.names, result.mse, result.psnr, strict=True)]  # fmt: skip
    return png, {**result.summary(), "model_version": loaded.version, "items": per_item}


def neighbours(
    loaded: LoadedModel, items: Items, k: int, scale: int
) -> tuple[bytes, dict[str, Any]]:
    """The item, then its ``k`` nearest normal calibration items in latent space."""
    ref = require_latents(loaded)
    mu, used = explore.encode(loaded.model, items.images[:1], items.conditions[:1])
    cond = int(used[0]) if loaded.conditions else None
    idx, dist = explore.nearest_normal(ref, mu[0], k, cond)
    row = np.concatenate([items.images[:1], ref.images[idx]])
    distance = float(explore.standardised_distance(ref.mu, mu)[0])
    data = {"item": items.names[0], "k": len(idx), "calibration_index": idx.tolist(),
            "latent_distance": dist.round(4).tolist(), "distance_from_normal": distance,
            "condition": loaded.conditions[cond] if cond is not None else None}  # fmt: skip
    return grid_png(row[None], scale), data


def map_view(
    loaded: LoadedModel, items: Items, groups: list[str], flagged: np.ndarray,
    method: explore.MapMethod, size: tuple[int, int], title: str = "",
) -> tuple[bytes, dict[str, Any]]:  # fmt: skip
    """The latent map of the calibration items with ``items`` overlaid, and per item where it
    sits: map coordinates, distance from the normal centroid, share of normal items closer."""
    ref = require_latents(loaded)
    mu, _ = explore.encode(loaded.model, items.images, items.conditions)
    lmap = explore.latent_map(ref.mu, mu, groups, flagged, method)
    title = title or f"model {loaded.version}: latent means ({lmap.method})"
    png = latent_map_png(lmap, size[0], size[1], title)
    map_d = lmap.map_distance()
    points = [{"item_id": n, "group": g, "flagged": bool(f), "x": float(p[0]), "y": float(p[1]),
               "map_distance": float(md), "latent_distance": float(ld),
               "normal_share_closer": float(c)}
              for n, g, f, p, md, ld, c in zip(items.names, groups, lmap.flagged, lmap.items,
                                               map_d, lmap.latent_distance,
                                               lmap.normal_share_closer, strict=True)]  # fmt: skip
    summary = {}
    for g in dict.fromkeys(groups):
        sel = np.array([x == g for x in groups])
        summary[g] = {"n": int(sel.sum()), "flagged": int(lmap.flagged[sel].sum()),
                      "mean_map_distance": float(map_d[sel].mean()),
                      "mean_latent_distance": float(lmap.latent_distance[sel].mean())}  # fmt: skip
    return png, {"method": lmap.method, "n_reference": lmap.n_reference, "groups": summary,
                 "points": points}  # fmt: skip

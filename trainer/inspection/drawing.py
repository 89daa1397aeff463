"""Drawing primitives the inspection scenes and defects share: pixel grids, rotated frames,
band-limited noise and anti-aliased lines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Params = dict[str, Any]
Array = np.ndarray
# A scene: its parameters drawn from a generator (all its randomness), and a renderer of them
# to a float image (C, H, W), the part's footprint and its inner feature (objects only).
MakeParams = Callable[[np.random.Generator, int], Params]
Render = Callable[[Params, int], tuple[Array, Array | None, Array | None]]


def grid(size: int) -> tuple[Array, Array]:
    """Pixel centres (y, x) in pixels."""
    c = np.arange(size, dtype=np.float64) + 0.5
    y, x = np.meshgrid(c, c, indexing="ij")
    return y, x


def rotate(y: Array, x: Array, cy: float, cx: float, angle: float) -> tuple[Array, Array]:
    """Coordinates (along, across) in a frame turned by ``angle`` about (cy, cx)."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = y - cy, x - cx
    return dx * c + dy * s, -dx * s + dy * c


def band_noise(
    rng: np.random.Generator,
    size: int,
    freq: float,
    bandwidth: float,
    angle: float = 0.0,
    stretch: float = 1.0,
) -> Array:
    """Unit-variance noise whose spectrum is a Gaussian ring at ``freq`` cycles per image.

    Frequencies count cycles per image, so the features keep their look at every size; a
    ``stretch`` above 1 draws the grain out along ``angle`` (brushing, wood fibres, yarn).
    """
    fy = np.fft.fftfreq(size)[:, None] * size
    fx = np.fft.rfftfreq(size)[None, :] * size
    along = fx * np.cos(angle) + fy * np.sin(angle)
    across = -fx * np.sin(angle) + fy * np.cos(angle)
    r = np.hypot(along * stretch, across)
    spectrum = np.fft.rfft2(rng.standard_normal((size, size)))
    out = np.fft.irfft2(spectrum * np.exp(-0.5 * ((r - freq) / bandwidth) ** 2), s=(size, size))
    return out / (out.std() + 1e-12)


def polyline(points: Array, width: float, size: int) -> Array:
    """Anti-aliased alpha of a polyline (points (M, 2) as y, x), computed in its bounding box."""
    alpha = np.zeros((size, size))
    pad = width + 2.0
    y0, x0 = np.maximum(np.floor(points.min(0) - pad), 0).astype(int)
    y1, x1 = np.minimum(np.ceil(points.max(0) + pad), size).astype(int)
    if y1 <= y0 or x1 <= x0:
        return alpha
    yy, xx = np.meshgrid(np.arange(y0, y1) + 0.5, np.arange(x0, x1) + 0.5, indexing="ij")
    p, d = points[:-1, :, None, None], np.diff(points, axis=0)[:, :, None, None]
    py, px = yy[None] - p[:, 0], xx[None] - p[:, 1]
    t = np.clip((py * d[:, 0] + px * d[:, 1]) / np.maximum((d**2).sum(1), 1e-9), 0.0, 1.0)
    dist = np.hypot(py - t * d[:, 0], px - t * d[:, 1]).min(0)
    alpha[y0:y1, x0:x1] = np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)
    return alpha


def random_walk(rng: np.random.Generator, start: Array, angle: float, length: float, step: float,
          jitter: float, drift: float) -> Array:  # fmt: skip
    """Points of a random walk: per-step direction ``jitter`` makes it jagged, ``drift`` bends."""
    n = max(int(length / step), 2)
    heading = angle + np.cumsum(rng.normal(0.0, drift, n)) + rng.normal(0.0, jitter, n)
    steps = step * np.stack([np.sin(heading), np.cos(heading)], axis=1)
    return np.vstack([start[None], start + np.cumsum(steps, axis=0)])

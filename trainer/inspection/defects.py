"""Local defects: each paints into a float image (C, H, W) and returns its soft alpha."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from trainer.inspection.drawing import Array, band_noise, grid, polyline, random_walk, rotate


@dataclass(frozen=True)
class Site:
    """Where a defect may land on an image of ``size``."""

    size: int
    footprint: Array | None  # objects: defects land on the part
    dented: bool  # metal surfaces dent (shaded) rather than show a dark hole


def _centre(rng: np.random.Generator, site: Site, margin: float) -> Array:
    if site.footprint is None:
        return rng.uniform(margin, site.size - margin, 2)
    ys, xs = np.nonzero(site.footprint > 0.99)
    k = rng.integers(len(ys))
    return np.array([ys[k], xs[k]], dtype=np.float64) + rng.uniform(0.0, 1.0, 2)


def _area(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))  # many small, a few large


def _blob(rng: np.random.Generator, site: Site, area: float, soft: float) -> Array:
    """Soft alpha of an irregular blob covering about ``area`` of the image."""
    radius = np.sqrt(area / np.pi) * site.size
    cy, cx = _centre(rng, site, radius)
    aspect = rng.uniform(0.6, 1.0)
    y, x = grid(site.size)
    a, b = rotate(y, x, cy, cx, rng.uniform(0.0, np.pi))
    r = np.hypot(a * np.sqrt(aspect), b / np.sqrt(aspect))
    theta = np.arctan2(b, a)
    k = np.arange(2, 5)[:, None, None]
    wobble = rng.uniform(0.0, 0.18, 3)[:, None, None] * np.cos(
        k * theta + rng.uniform(0.0, 2 * np.pi, 3)[:, None, None]
    )
    return np.clip((radius * (1 + wobble.sum(0)) - r) / (soft * radius) + 0.5, 0.0, 1.0)


def _local_mean(img: Array, alpha: Array) -> Array:
    w = alpha / max(alpha.sum(), 1e-9)
    return (img * w).sum(axis=(1, 2))[:, None, None]


def _offset(rng: np.random.Generator, channels: int, magnitude: float) -> Array:
    """A colour offset of about ``magnitude`` grey levels: brightness, plus hue for colour."""
    lum = rng.choice([-1.0, 1.0]) * magnitude
    if channels == 1:
        return np.array([lum])[:, None, None]
    hue = rng.uniform(0.0, 2 * np.pi)
    chroma = np.cos(hue) * np.array([1, -1, 0]) / np.sqrt(2) + np.sin(hue) * np.array(
        [1, 1, -2]
    ) / np.sqrt(6)
    return (0.5 * lum + 0.9 * magnitude * chroma)[:, None, None]


def _unclipped(mean: Array, delta: Array) -> Array:
    """``delta``, or its opposite where adding it would run into black or white and vanish."""
    ahead = mean + delta
    return -delta if bool((ahead > 250).any() or (ahead < 5).any()) else delta


def _scratch(img: Array, rng: np.random.Generator, site: Site) -> Array:
    s = site.size / 64
    length = rng.uniform(0.10, 0.40) * site.size
    mid = _centre(rng, site, 0.0)
    heading = rng.uniform(0.0, 2 * np.pi) + np.linspace(-0.5, 0.5, 24) * rng.uniform(-0.6, 0.6)
    steps = length / 23 * np.stack([np.sin(heading), np.cos(heading)], axis=1)
    pts = np.cumsum(steps, axis=0)
    alpha = polyline(pts - pts.mean(0) + mid, rng.uniform(1.0, 2.0) * s, site.size)
    delta = np.full((img.shape[0], 1, 1), rng.choice([-1.0, 1.0]) * rng.uniform(25.0, 80.0))
    img += _unclipped(_local_mean(img, alpha), delta) * alpha
    return alpha


def _hole(img: Array, rng: np.random.Generator, site: Site) -> Array:
    area = _area(rng, 0.008, 0.045)
    alpha = _blob(rng, site, area, 0.3)
    depth = rng.uniform(25.0, 80.0)
    if site.dented:  # a dent: dark on the side away from the light, bright on the other
        grad = np.gradient(ndimage.gaussian_filter(alpha, site.size / 64))[1]
        rim = grad / (np.abs(grad).max() + 1e-9)
        img += depth * (0.8 * rim - 0.35) * alpha
    else:  # through the material: the backing shows, a little of the texture survives
        mean = _local_mean(img, alpha)
        img += alpha * (mean - depth + 0.25 * (img - mean) - img)
    return alpha


def _stain(img: Array, rng: np.random.Generator, site: Site) -> Array:
    # Low in contrast, yet visible to an inspector: 15 to 35 grey levels (a tint of 12 to 24),
    # above the good textures' own local variation. Fainter stains (6 to 15 levels, edges soft
    # over most of the radius) were measured as deep as that variation: no detector, not even
    # a band-pass filter tuned to their scale, told them from good parts (bench/README.md).
    alpha = _blob(rng, site, _area(rng, 0.012, 0.065), 0.6)
    if img.shape[0] == 1:
        shift = rng.uniform(15.0, 35.0) * (-1.0 if rng.random() < 0.7 else 1.0)
        img += shift * alpha
    else:  # a tint: mostly hue, little brightness
        img += _offset(rng, 3, rng.uniform(20.0, 40.0)) * 0.6 * alpha
    return alpha


def _crack(img: Array, rng: np.random.Generator, site: Site) -> Array:
    s = site.size / 64
    length = rng.uniform(0.15, 0.40) * site.size
    angle = rng.uniform(0.0, 2 * np.pi)
    main = random_walk(rng, _centre(rng, site, 0.0), angle, length, 1.5 * s, 0.5, 0.08)
    main = main - (main[-1] - main[0]) / 2  # centred on the picked point
    width = rng.uniform(1.0, 1.5) * s
    alpha = polyline(main, width, site.size)
    for _ in range(rng.integers(1, 4)):
        start = main[rng.integers(len(main))]
        turn = angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2)
        branch = random_walk(rng, start, turn, length * rng.uniform(0.2, 0.5), 1.5 * s, 0.5, 0.1)
        alpha = np.maximum(alpha, polyline(branch, width * 0.8, site.size))
    img -= rng.uniform(30.0, 80.0) * alpha
    return alpha


def _contamination(img: Array, rng: np.random.Generator, site: Site) -> Array:
    s = site.size / 64
    if rng.random() < 0.35:  # a fibre
        length = rng.uniform(0.08, 0.25) * site.size
        pts = random_walk(
            rng, _centre(rng, site, 0.0), rng.uniform(0, 2 * np.pi), length, s, 0.1, 0.2
        )
        alpha = polyline(pts - (pts[-1] - pts[0]) / 2, rng.uniform(1.0, 1.6) * s, site.size)
    else:  # a particle with its own grain
        alpha = _blob(rng, site, _area(rng, 0.006, 0.03), 0.35)
    grain = band_noise(rng, site.size, site.size / 5, site.size / 10)
    mean = _local_mean(img, alpha)
    foreign = mean + _unclipped(mean, _offset(rng, img.shape[0], rng.uniform(25.0, 80.0)))
    foreign = foreign + 8.0 * grain
    img += alpha * (foreign - img)
    return alpha


def _worn(img: Array, rng: np.random.Generator, site: Site) -> Array:
    alpha = _blob(rng, site, _area(rng, 0.015, 0.065), 0.7)
    sigma = 4.0 * site.size / 64  # wider than the grain, so the patch loses its texture
    smooth = ndimage.gaussian_filter(img, (0, sigma, sigma), mode="nearest")
    img += rng.uniform(0.7, 1.0) * alpha * (smooth - img)
    return alpha


PAINT: dict[str, Callable[[Array, np.random.Generator, Site], Array]] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "crack": _crack,
    "contamination": _contamination,
    "worn": _worn,
}

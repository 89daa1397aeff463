"""Objects (washer, pill): a part on a dark conveyor, with its footprint (where the part is)
and a feature; and how a part is misplaced."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from trainer.inspection.drawing import Array, MakeParams, Params, Render, band_noise, grid, rotate


def _background(rng: np.random.Generator, size: int) -> Array:
    return band_noise(rng, size, 0.0, 3.0) * 0.6 + band_noise(rng, size, size / 4, size / 8) * 0.4


def _washer_params(rng: np.random.Generator, size: int) -> Params:
    s = size / 64
    return {
        "centre": size / 2 + rng.uniform(-2.5, 2.5, 2) * s,
        "radii": (0.36 * size * rng.uniform(0.98, 1.02), 0.15 * size * rng.uniform(0.97, 1.03)),
        "hole_offset": rng.uniform(-0.4, 0.4, 2) * s,
        "notch": rng.uniform(0.0, 2 * np.pi),  # the only feature that breaks the symmetry
        "light": np.deg2rad(rng.uniform(-15.0, 15.0)),
        "level": rng.uniform(145.0, 160.0),
        "metal": band_noise(rng, size, size / 5, size / 10),
        "background": _background(rng, size),
    }


def _ring(y: Array, x: Array, p: Params, size: int, dy: float = 0.0) -> tuple[Array, Array]:
    (cy, cx), (ro, ri) = p["centre"] + dy, p["radii"]
    r = np.hypot(y - cy, x - cx)
    rh = np.hypot(y - cy - p["hole_offset"][0], x - cx - p["hole_offset"][1])
    ny, nx = cy + ro * np.sin(p["notch"]), cx + ro * np.cos(p["notch"])
    notch = np.clip(0.045 * size + 0.5 - np.hypot(y - ny, x - nx), 0.0, 1.0)
    footprint = np.clip(ro - r + 0.5, 0, 1) * np.clip(rh - ri + 0.5, 0, 1) * (1 - notch)
    return footprint, r


def _washer(p: Params, size: int) -> tuple[Array, Array | None, Array | None]:
    s = size / 64
    y, x = grid(size)
    fp, r = _ring(y, x, p, size)
    (cy, cx), (ro, ri) = p["centre"], p["radii"]
    theta = np.arctan2(y - cy, x - cx)
    # Bevels catch the light at the rim of the hole and fall away at the outer edge; the flat
    # face shows the two broad reflections of a turned surface and faint concentric tool marks.
    bevel = 28 * np.exp(-(((r - ri) / (1.6 * s)) ** 2)) - 30 * np.exp(
        -(((ro - r) / (1.6 * s)) ** 2)
    )
    sheen = 16 * np.cos(2 * (theta - p["light"]))
    marks = 3 * np.sin(2 * np.pi * r / (2.5 * s))
    metal = p["level"] + bevel + sheen + marks + 4 * p["metal"]
    shadow = ndimage.gaussian_filter(_ring(y, x, p, size, dy=2.0 * s)[0], 1.5 * s)
    bg = (62 + 5 * p["background"]) * (1 - 0.4 * shadow)
    return (bg * (1 - fp) + metal * fp)[None], fp, None


_GLYPH = np.array([  # an imprint "K7" in units of the capsule's radius, centred on (0, 0)
    [(-0.55, -0.5), (-0.55, 0.5)], [(-0.55, 0.05), (-0.1, -0.5)], [(-0.4, -0.1), (-0.1, 0.5)],
    [(0.15, -0.5), (0.6, -0.5)], [(0.6, -0.5), (0.3, 0.5)],
])  # fmt: skip


def _pill_params(rng: np.random.Generator, size: int) -> Params:
    s = size / 64
    cap = np.array([190.0, 38.0, 42.0]) * rng.normal(1, 0.04, 3)
    return {
        "centre": size / 2 + rng.uniform(-2.5, 2.5, 2) * s,
        "angle": np.deg2rad(rng.uniform(-5.0, 5.0)),
        "half_length": 0.36 * size * rng.uniform(0.98, 1.02),
        "radius": 0.155 * size * rng.uniform(0.98, 1.02),
        "cap": cap,
        "body": np.array([228.0, 224.0, 214.0]) * rng.normal(1, 0.015, 3),
        "mark_at": np.array([0.45, 0.0]) + rng.normal(0.0, 0.02, 2),  # along, across / length
        "mark_angle": np.deg2rad(rng.uniform(-3.0, 3.0)),
        "speckle": band_noise(rng, size, size / 4, size / 8),
        "background": _background(rng, size),
    }


def _capsule(y: Array, x: Array, p: Params, dy: float = 0.0) -> tuple[Array, Array, Array]:
    (cy, cx), half, w = p["centre"] + dy, p["half_length"], p["radius"]
    a, b = rotate(y, x, cy, cx, p["angle"])
    dc = np.hypot(np.maximum(np.abs(a) - (half - w), 0.0), b)
    return np.clip(w - dc + 0.5, 0.0, 1.0), a, b


def _pill(p: Params, size: int) -> tuple[Array, Array | None, Array | None]:
    s = size / 64
    y, x = grid(size)
    fp, a, b = _capsule(y, x, p)
    half, w = p["half_length"], p["radius"]
    dc = np.hypot(np.maximum(np.abs(a) - (half - w), 0.0), b)
    nz = np.sqrt(np.clip(1 - (dc / w) ** 2, 0.0, 1.0))  # surface normal's z: a lit cylinder
    highlight = 0.3 * np.exp(-(((b / w + 0.4) / 0.16) ** 2)) * (np.abs(a) < half - 0.6 * w)
    seam = -0.1 * half
    body = np.clip((a - seam) + 0.5, 0.0, 1.0)  # the white body half, the cap left of the seam
    colour = p["cap"][:, None, None] * (1 - body) + p["body"][:, None, None] * body
    colour = colour * (0.5 + 0.5 * nz + 0.03 * p["speckle"]) + 255 * highlight
    colour = colour * (1 - 0.25 * np.exp(-(((a - seam) / (0.8 * s)) ** 2)))
    ga, gb = rotate(b, a, p["mark_at"][1] * half, p["mark_at"][0] * half, p["mark_angle"])
    mark = np.zeros_like(fp)
    for seg in _GLYPH * 0.6 * w:
        d = seg[1] - seg[0]
        t = np.clip(((ga - seg[0, 0]) * d[0] + (gb - seg[0, 1]) * d[1]) / (d @ d), 0, 1)
        dist = np.hypot(ga - seg[0, 0] - t * d[0], gb - seg[0, 1] - t * d[1])
        mark = np.maximum(mark, np.clip(0.45 * s + 0.5 - dist, 0.0, 1.0))
    mark = 0.85 * mark * fp
    ink = np.array([70.0, 62.0, 66.0])[:, None, None]
    colour = colour * (1 - mark) + ink * mark
    shadow = ndimage.gaussian_filter(_capsule(y, x, p, dy=2.0 * s)[0], 1.5 * s)
    bg = np.array([40.0, 46.0, 52.0])[:, None, None] * (1 + 0.12 * p["background"])
    bg = bg * (1 - 0.45 * shadow)
    return bg * (1 - fp) + colour * fp, fp, mark


def misplace(name: str, p: Params, rng: np.random.Generator, size: int) -> Params:
    """The part, or its inner feature, moved well beyond the normal pose jitter."""
    s = size / 64
    turn = rng.uniform(0.0, 2 * np.pi)
    shift = np.array([np.sin(turn), np.cos(turn)])
    mode = rng.integers(2)
    if name == "washer" and mode == 0:  # slid off its seat, but still in the frame
        ro = p["radii"][0]
        moved = p["centre"] + shift * rng.uniform(5.0, 8.0) * s
        return {**p, "centre": np.clip(moved, ro + 1.0, size - ro - 1.0)}
    if name == "washer":  # an off-centre punched hole
        return {**p, "hole_offset": shift * rng.uniform(2.5, 5.0) * s}
    if mode == 0:  # knocked askew on the tray
        sign = rng.choice([-1.0, 1.0])
        centre = p["centre"] + shift * rng.uniform(0.0, 4.0) * s
        return {**p, "centre": centre, "angle": p["angle"] + sign * np.deg2rad(rng.uniform(15, 40))}
    if rng.random() < 0.5:  # the imprint printed off its place
        return {**p, "mark_at": p["mark_at"] + shift * rng.uniform(0.1, 0.2) * np.array([1, 0.6])}
    sign = rng.choice([-1.0, 1.0])
    return {**p, "mark_angle": p["mark_angle"] + sign * np.deg2rad(rng.uniform(40.0, 180.0))}


OBJECTS: dict[str, tuple[MakeParams, Render]] = {
    "washer": (_washer_params, _washer),
    "pill": (_pill_params, _pill),
}

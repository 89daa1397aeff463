"""Procedural inspection images with local defects: an imitation of the MVTec AD benchmark.

MVTec AD (Bergmann et al. 2019) is the usual yardstick for unsupervised visual inspection:
train on good parts only, then find and localise scratches, holes, stains and the like. It is
a download under a non-commercial licence, so tests and benchmarks here use this imitation
instead: four textures (fabric, wood, metal, tiles) and two objects (washer, pill), each drawn
from band-limited noise and simple geometry with the normal variation a real line shows
(texture scale and orientation, lighting, sensor noise, pose jitter), and defects that are
small, varied in size and partly low-contrast, with a pixel mask of where each one is.

Everything is seeded: image ``i`` of a call comes from its own generator,
``default_rng([seed, stream, category, i])``, so the same arguments give the same bytes, and a
longer call starts with the images of a shorter one. A defective image is a good image of its
own stream with the defect painted in before lighting and sensor noise, as a camera would see it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage

DEFECTS = ("scratch", "hole", "stain", "crack", "contamination", "worn", "misplaced")
SIZES = (32, 256)  # smallest and largest image side the features are designed for
MASK_THRESHOLD = 0.4  # soft defect alpha above this is "visibly defective"

# Streams of per-image generators: training good, test good, then one per defect type, so no
# test image repeats a training image and each defect's base images are their own draws.
_TRAIN, _TEST_GOOD, _FIRST_DEFECT = 0, 1, 2

Params = dict[str, Any]
Array = np.ndarray


class InspectionDataError(ValueError):
    """A category, defect type or size the generator does not offer."""


@dataclass(frozen=True)
class Category:
    name: str
    kind: Literal["texture", "object"]
    channels: int
    defects: tuple[str, ...]


_COMMON = ("scratch", "hole", "stain", "crack", "contamination")
CATEGORIES: dict[str, Category] = {
    # A crack is not something woven cloth does; a pulled thread shows as a scratch.
    "fabric": Category(
        "fabric", "texture", 1, ("scratch", "hole", "stain", "contamination", "worn")
    ),
    "wood": Category("wood", "texture", 3, (*_COMMON, "worn")),
    "metal": Category("metal", "texture", 1, (*_COMMON, "worn")),
    "tiles": Category("tiles", "texture", 3, (*_COMMON, "worn")),
    "washer": Category("washer", "object", 1, (*_COMMON, "misplaced")),
    "pill": Category("pill", "object", 3, (*_COMMON, "misplaced")),
}


@dataclass(frozen=True)
class InspectionSet:
    images: Array  # uint8 (N, C, H, W)
    labels: Array  # object array of str: "good" or a defect name
    masks: Array  # bool (N, H, W), True on defective pixels
    category: str


# ---------------------------------------------------------------------------------------------
# Shared geometry and noise


def _grid(size: int) -> tuple[Array, Array]:
    """Pixel centres (y, x) in pixels."""
    c = np.arange(size, dtype=np.float64) + 0.5
    y, x = np.meshgrid(c, c, indexing="ij")
    return y, x


def _rotate(y: Array, x: Array, cy: float, cx: float, angle: float) -> tuple[Array, Array]:
    """Coordinates (along, across) in a frame turned by ``angle`` about (cy, cx)."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = y - cy, x - cx
    return dx * c + dy * s, -dx * s + dy * c


def _noise(
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


def _polyline(points: Array, width: float, size: int) -> Array:
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


def _walk(rng: np.random.Generator, start: Array, angle: float, length: float, step: float,
          jitter: float, drift: float) -> Array:  # fmt: skip
    """Points of a random walk: per-step direction ``jitter`` makes it jagged, ``drift`` bends."""
    n = max(int(length / step), 2)
    heading = angle + np.cumsum(rng.normal(0.0, drift, n)) + rng.normal(0.0, jitter, n)
    steps = step * np.stack([np.sin(heading), np.cos(heading)], axis=1)
    return np.vstack([start[None], start + np.cumsum(steps, axis=0)])


# ---------------------------------------------------------------------------------------------
# Textures: params are drawn first (all randomness), then rendered, so a defect can re-render


def _fabric_params(rng: np.random.Generator, size: int) -> Params:
    return {
        "period": 5.0 * size / 64 * rng.uniform(0.85, 1.15),
        "angle": np.deg2rad(rng.uniform(-3.0, 3.0)),
        "phase": rng.uniform(0.0, 4.0, 2),
        "tones": rng.normal(0.0, 0.06, (2, 64)),  # yarn thickness varies thread to thread
        "slub": [_noise(rng, size, 0.0, size / 6, a, 5.0) for a in (np.pi / 2, 0.0)],
        "mottle": _noise(rng, size, 2.0, 2.0),
        "level": rng.uniform(125.0, 140.0),
    }


def _fabric(p: Params, size: int) -> tuple[Array, Array | None, Array | None]:
    y, x = _grid(size)
    a, b = _rotate(y, x, 0.0, 0.0, p["angle"])
    u, v = a / p["period"] + p["phase"][0], b / p["period"] + p["phase"][1]
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    # 2/2 twill: each thread floats over two and under two, shifted by one per row, which
    # gives the diagonal ribs of denim and gabardine.
    step = np.mod(iu + iv, 4)
    warp_on_top = step < 2
    # A float is rounded over its whole length (two cells), and the weft is a darker yarn, so
    # the warp floats read as the bright diagonal ribs of twill.
    along_warp = np.sin(np.pi * (step + fv) / 2).clip(0.0) ** 0.5
    along_weft = np.sin(np.pi * (step - 2 + fu) / 2).clip(0.0) ** 0.5
    warp = (1 + np.take(p["tones"][0], iu.astype(int), mode="wrap")) * np.sin(np.pi * fu) ** 0.6
    weft = (1 + np.take(p["tones"][1], iv.astype(int), mode="wrap")) * np.sin(np.pi * fv) ** 0.6
    warp = warp * (0.75 + 0.25 * along_warp) + 0.08 * p["slub"][0]
    weft = 0.72 * weft * (0.75 + 0.25 * along_weft) + 0.08 * p["slub"][1]
    height = np.where(warp_on_top, warp, weft)
    img = p["level"] * (0.5 + 0.5 * height) * (1 + 0.04 * p["mottle"])
    return img[None], None, None


def _wood_params(rng: np.random.Generator, size: int) -> Params:
    light = np.array([205.0, 150.0, 100.0]) * rng.uniform(0.9, 1.04) * rng.normal(1, 0.03, 3)
    knots = []
    if rng.random() < 0.35:  # knots are part of normal wood, not a defect
        knots.append((*rng.uniform(0.15, 0.85, 2), rng.uniform(0.04, 0.07), rng.uniform(1.0, 2.0)))
    return {
        "angle": np.deg2rad(rng.uniform(-6.0, 6.0)),
        "freq": 6.0 * rng.uniform(0.85, 1.15),
        "offset": rng.uniform(0.0, 1.0),
        "bend": (rng.uniform(-1.5, 1.5), rng.uniform(0.2, 0.8)),
        "warp": _noise(rng, size, 0.0, 2.0, np.pi / 2, 2.5),
        "fine_warp": _noise(rng, size, 0.0, 4.0, np.pi / 2, 3.0),
        "streaks": _noise(rng, size, 0.0, size / 5, np.pi / 2, 8.0),
        "knots": knots,
        "light": light,
        "dark": light * np.array([0.62, 0.55, 0.5]) * rng.normal(1, 0.03, 3),
    }


def _wood(p: Params, size: int) -> tuple[Array, Array | None, Array | None]:
    y, x = _grid(size)
    a, b = _rotate(y, x, size / 2, size / 2, p["angle"])
    un, vn = a / size, b / size
    # Rings are level lines of the distance from the log's axis: nearly parallel across the
    # board, bent by the log's taper and its wobble, and wrapped round any knot.
    t = un * p["freq"] + p["offset"] + p["bend"][0] * (vn - p["bend"][1] + 0.5) ** 2
    t = t + 0.22 * p["warp"] + 0.06 * p["fine_warp"]
    core = np.zeros_like(t)
    for ky, kx, kr, ks in p["knots"]:
        r2 = ((y / size - ky) ** 2 + (x / size - kx) ** 2) / kr**2
        t = t + ks * np.exp(-r2)
        core = core + 0.7 * np.exp(-r2 / 0.25)
    late = (0.5 + 0.5 * np.cos(2 * np.pi * t)) ** 3  # narrow dark late-wood band per year
    g = np.clip(0.15 + 0.7 * late + 0.12 * p["streaks"] + core, 0.0, 1.0)
    img = p["light"][:, None, None] + (p["dark"] - p["light"])[:, None, None] * g
    return img, None, None


def _metal_params(rng: np.random.Generator, size: int) -> Params:
    angle = np.deg2rad(rng.uniform(-3.0, 3.0))
    return {
        "angle": angle,
        "level": rng.uniform(135.0, 155.0),
        "streaks": _noise(rng, size, 0.0, size / 4, angle, 14.0 * rng.uniform(0.85, 1.15)),
        "fine": _noise(rng, size, 0.0, size / 2, angle, 25.0),
        "coarse": _noise(rng, size, 0.0, size / 12, angle, 6.0),
        "sheen": (rng.uniform(0.5, 1.5), rng.uniform(0.0, 2 * np.pi)),
    }


def _metal(p: Params, size: int) -> tuple[Array, Array | None, Array | None]:
    y, x = _grid(size)
    _, b = _rotate(y, x, 0.0, 0.0, p["angle"])
    sheen = np.cos(2 * np.pi * p["sheen"][0] * b / size + p["sheen"][1])
    img = p["level"] + 6.0 * p["streaks"] + 3.0 * p["fine"] + 4.0 * p["coarse"] + 8.0 * sheen
    return img[None], None, None


def _tiles_params(rng: np.random.Generator, size: int) -> Params:
    base = np.array([196.0, 128.0, 96.0]) * rng.uniform(0.92, 1.05) * rng.normal(1, 0.02, 3)
    return {
        "period": size / 3.2 * rng.uniform(0.85, 1.15),
        "grout": 1.8 * size / 64 * rng.uniform(0.9, 1.1),
        "angle": np.deg2rad(rng.uniform(-1.0, 1.0)),
        "phase": rng.uniform(0.0, 1.0, 2),
        "base": base,
        "tone": rng.normal(0.0, 0.07, (8, 8)),  # each tile is fired a little differently
        "tint": rng.normal(0.0, 0.03, (3, 8, 8)),
        "mottle": [_noise(rng, size, 9.0, 4.0), _noise(rng, size, 3.0, 2.0)],
        "spots": _noise(rng, size, size / 4, size / 8),
        "grout_colour": np.array([178.0, 172.0, 160.0]) * rng.uniform(0.95, 1.05),
    }


def _tiles(p: Params, size: int) -> tuple[Array, Array | None, Array | None]:
    y, x = _grid(size)
    a, b = _rotate(y, x, 0.0, 0.0, p["angle"])
    u, v = a / p["period"] + p["phase"][0], b / p["period"] + p["phase"][1]
    iu, iv = np.floor(u).astype(int) % 8, np.floor(v).astype(int) % 8
    edge = np.minimum(np.minimum(u % 1, 1 - u % 1), np.minimum(v % 1, 1 - v % 1)) * p["period"]
    grout = np.clip(p["grout"] / 2 + 0.5 - edge, 0.0, 1.0)
    bevel = np.exp(-np.maximum(edge - p["grout"] / 2, 0) / (1.2 * size / 64))  # rounded rims
    m1, m2 = p["mottle"]
    shade = (1 + p["tone"][iv, iu]) * (1 - 0.15 * bevel) * (1 + 0.05 * m1 + 0.04 * m2)
    tile = p["base"][:, None, None] * shade * (1 + p["tint"][:, iv, iu])
    tile = tile + np.array([6.0, 4.0, 3.0])[:, None, None] * p["spots"]
    joint = p["grout_colour"][:, None, None] * (1 + 0.05 * p["spots"])
    return tile * (1 - grout) + joint * grout, None, None


# ---------------------------------------------------------------------------------------------
# Objects: a part on a dark conveyor, with its footprint (where the part is) and a feature


def _background(rng: np.random.Generator, size: int) -> Array:
    return _noise(rng, size, 0.0, 3.0) * 0.6 + _noise(rng, size, size / 4, size / 8) * 0.4


def _washer_params(rng: np.random.Generator, size: int) -> Params:
    s = size / 64
    return {
        "centre": size / 2 + rng.uniform(-2.5, 2.5, 2) * s,
        "radii": (0.36 * size * rng.uniform(0.98, 1.02), 0.15 * size * rng.uniform(0.97, 1.03)),
        "hole_offset": rng.uniform(-0.4, 0.4, 2) * s,
        "notch": rng.uniform(0.0, 2 * np.pi),  # the only feature that breaks the symmetry
        "light": np.deg2rad(rng.uniform(-15.0, 15.0)),
        "level": rng.uniform(145.0, 160.0),
        "metal": _noise(rng, size, size / 5, size / 10),
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
    y, x = _grid(size)
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
        "speckle": _noise(rng, size, size / 4, size / 8),
        "background": _background(rng, size),
    }


def _capsule(y: Array, x: Array, p: Params, dy: float = 0.0) -> tuple[Array, Array, Array]:
    (cy, cx), half, w = p["centre"] + dy, p["half_length"], p["radius"]
    a, b = _rotate(y, x, cy, cx, p["angle"])
    dc = np.hypot(np.maximum(np.abs(a) - (half - w), 0.0), b)
    return np.clip(w - dc + 0.5, 0.0, 1.0), a, b


def _pill(p: Params, size: int) -> tuple[Array, Array | None, Array | None]:
    s = size / 64
    y, x = _grid(size)
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
    ga, gb = _rotate(b, a, p["mark_at"][1] * half, p["mark_at"][0] * half, p["mark_angle"])
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


def _misplace(name: str, p: Params, rng: np.random.Generator, size: int) -> Params:
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


Render = Callable[[Params, int], tuple[Array, Array | None, Array | None]]
_SCENES: dict[str, tuple[Callable[[np.random.Generator, int], Params], Render]] = {
    "fabric": (_fabric_params, _fabric),
    "wood": (_wood_params, _wood),
    "metal": (_metal_params, _metal),
    "tiles": (_tiles_params, _tiles),
    "washer": (_washer_params, _washer),
    "pill": (_pill_params, _pill),
}


# ---------------------------------------------------------------------------------------------
# Local defects: each paints into a float image (C, H, W) and returns its soft alpha


@dataclass(frozen=True)
class _Site:
    size: int
    footprint: Array | None  # objects: defects land on the part
    dented: bool  # metal surfaces dent (shaded) rather than show a dark hole


def _centre(rng: np.random.Generator, site: _Site, margin: float) -> Array:
    if site.footprint is None:
        return rng.uniform(margin, site.size - margin, 2)
    ys, xs = np.nonzero(site.footprint > 0.99)
    k = rng.integers(len(ys))
    return np.array([ys[k], xs[k]], dtype=np.float64) + rng.uniform(0.0, 1.0, 2)


def _area(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))  # many small, a few large


def _blob(rng: np.random.Generator, site: _Site, area: float, soft: float) -> Array:
    """Soft alpha of an irregular blob covering about ``area`` of the image."""
    radius = np.sqrt(area / np.pi) * site.size
    cy, cx = _centre(rng, site, radius)
    aspect = rng.uniform(0.6, 1.0)
    y, x = _grid(site.size)
    a, b = _rotate(y, x, cy, cx, rng.uniform(0.0, np.pi))
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


def _scratch(img: Array, rng: np.random.Generator, site: _Site) -> Array:
    s = site.size / 64
    length = rng.uniform(0.10, 0.40) * site.size
    mid = _centre(rng, site, 0.0)
    heading = rng.uniform(0.0, 2 * np.pi) + np.linspace(-0.5, 0.5, 24) * rng.uniform(-0.6, 0.6)
    steps = length / 23 * np.stack([np.sin(heading), np.cos(heading)], axis=1)
    pts = np.cumsum(steps, axis=0)
    alpha = _polyline(pts - pts.mean(0) + mid, rng.uniform(1.0, 2.0) * s, site.size)
    delta = np.full((img.shape[0], 1, 1), rng.choice([-1.0, 1.0]) * rng.uniform(25.0, 80.0))
    img += _unclipped(_local_mean(img, alpha), delta) * alpha
    return alpha


def _hole(img: Array, rng: np.random.Generator, site: _Site) -> Array:
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


def _stain(img: Array, rng: np.random.Generator, site: _Site) -> Array:
    alpha = _blob(rng, site, _area(rng, 0.012, 0.065), 0.9)
    if img.shape[0] == 1:
        shift = rng.uniform(6.0, 15.0) * (-1.0 if rng.random() < 0.7 else 1.0)
        img += shift * alpha
    else:  # a tint: mostly hue, little brightness
        img += _offset(rng, 3, rng.uniform(8.0, 18.0)) * 0.6 * alpha
    return alpha


def _crack(img: Array, rng: np.random.Generator, site: _Site) -> Array:
    s = site.size / 64
    length = rng.uniform(0.15, 0.40) * site.size
    angle = rng.uniform(0.0, 2 * np.pi)
    main = _walk(rng, _centre(rng, site, 0.0), angle, length, 1.5 * s, 0.5, 0.08)
    main = main - (main[-1] - main[0]) / 2  # centred on the picked point
    width = rng.uniform(1.0, 1.5) * s
    alpha = _polyline(main, width, site.size)
    for _ in range(rng.integers(1, 4)):
        start = main[rng.integers(len(main))]
        turn = angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2)
        branch = _walk(rng, start, turn, length * rng.uniform(0.2, 0.5), 1.5 * s, 0.5, 0.1)
        alpha = np.maximum(alpha, _polyline(branch, width * 0.8, site.size))
    img -= rng.uniform(30.0, 80.0) * alpha
    return alpha


def _contamination(img: Array, rng: np.random.Generator, site: _Site) -> Array:
    s = site.size / 64
    if rng.random() < 0.35:  # a fibre
        length = rng.uniform(0.08, 0.25) * site.size
        pts = _walk(rng, _centre(rng, site, 0.0), rng.uniform(0, 2 * np.pi), length, s, 0.1, 0.2)
        alpha = _polyline(pts - (pts[-1] - pts[0]) / 2, rng.uniform(1.0, 1.6) * s, site.size)
    else:  # a particle with its own grain
        alpha = _blob(rng, site, _area(rng, 0.006, 0.03), 0.35)
    grain = _noise(rng, site.size, site.size / 5, site.size / 10)
    mean = _local_mean(img, alpha)
    foreign = mean + _unclipped(mean, _offset(rng, img.shape[0], rng.uniform(25.0, 80.0)))
    foreign = foreign + 8.0 * grain
    img += alpha * (foreign - img)
    return alpha


def _worn(img: Array, rng: np.random.Generator, site: _Site) -> Array:
    alpha = _blob(rng, site, _area(rng, 0.015, 0.065), 0.7)
    sigma = 4.0 * site.size / 64  # wider than the grain, so the patch loses its texture
    smooth = ndimage.gaussian_filter(img, (0, sigma, sigma), mode="nearest")
    img += rng.uniform(0.7, 1.0) * alpha * (smooth - img)
    return alpha


_PAINT: dict[str, Callable[[Array, np.random.Generator, _Site], Array]] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "crack": _crack,
    "contamination": _contamination,
    "worn": _worn,
}


# ---------------------------------------------------------------------------------------------
# One image, and the public API


def _sample(
    cat: Category, size: int, seed: int, stream: int, index: int, defect: str | None = None
) -> tuple[Array, Array]:
    """Image ``index`` of a stream as uint8 (C, H, W), and its mask; ``defect=None``: good."""
    key = zlib.crc32(cat.name.encode())  # stable across processes, unlike hash()
    scene_seq, defect_seq = np.random.SeedSequence([seed, stream, key, index]).spawn(2)
    rng = np.random.default_rng(scene_seq)
    make_params, render = _SCENES[cat.name]
    params = make_params(rng, size)
    img, footprint, feature = render(params, size)
    # Lighting and sensor noise come from the scene's stream: a defective image and its clean
    # twin differ only where the defect is.
    y, x = _grid(size)
    turn = rng.uniform(0.0, 2 * np.pi)
    ramp = ((x / size - 0.5) * np.cos(turn) + (y / size - 0.5) * np.sin(turn)) * rng.uniform(0, 0.1)
    light = (1 + rng.uniform(-0.08, 0.08)) * (1 + ramp)
    noise = rng.standard_normal(img.shape) * rng.uniform(2.0, 3.0)
    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        drng = np.random.default_rng(defect_seq)
        site = _Site(size, footprint, cat.name in ("metal", "washer"))
        min_pixels = max(4, round(4 * (size / 64) ** 2))
        for _ in range(100):  # resample a defect that ended up too small to see
            out = img.copy()
            if defect == "misplaced":
                out, moved, moved_feature = render(_misplace(cat.name, params, drng, size), size)
                assert footprint is not None and moved is not None
                mask = (footprint > 0.5) ^ (moved > 0.5)
                if feature is not None and moved_feature is not None:
                    mask |= (feature > 0.5) ^ (moved_feature > 0.5)
            else:
                alpha = _PAINT[defect](out, drng, site)
                if footprint is not None:  # off the part, a defect would not change the part
                    out = img + (out - img) * footprint
                    alpha = alpha * footprint
                mask = alpha > MASK_THRESHOLD
            if mask.sum() >= min_pixels:
                img = out
                break
        else:
            raise RuntimeError(f"could not place a visible {defect} on {cat.name}")
    pixels = np.clip(np.rint(img * light + noise), 0, 255).astype(np.uint8)
    return pixels, mask


def _category(name: str, defect: str | None = None) -> Category:
    if name not in CATEGORIES:
        raise InspectionDataError(
            f"unknown inspection category {name!r}; choose one of {', '.join(CATEGORIES)}"
        )
    cat = CATEGORIES[name]
    if defect is not None and defect not in cat.defects:
        where = "" if defect in DEFECTS else " (not a defect type at all)"
        raise InspectionDataError(
            f"defect {defect!r} is not valid for category {name!r}{where}; "
            f"choose one of {', '.join(cat.defects)}"
        )
    return cat


def _check(n: int, size: int, seed: int) -> None:
    if not SIZES[0] <= size <= SIZES[1]:
        raise InspectionDataError(f"size must be in {SIZES[0]}..{SIZES[1]}, got {size}")
    if n < 0 or seed < 0:
        raise InspectionDataError(f"n and seed must be non-negative, got n={n}, seed={seed}")


def _stream(cat: Category, size: int, seed: int, stream: int, n: int,
            defect: str | None) -> tuple[Array, Array]:  # fmt: skip
    images = np.zeros((n, cat.channels, size, size), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        images[i], masks[i] = _sample(cat, size, seed, stream, i, defect)
    return images, masks


def good(category: str, n: int, size: int = 64, seed: int = 0) -> Array:
    """``n`` good images of ``category``, uint8 (n, C, size, size)."""
    cat = _category(category)
    _check(n, size, seed)
    return _stream(cat, size, seed, _TRAIN, n, None)[0]


def defective(
    category: str, defect: str, n: int, size: int = 64, seed: int = 0
) -> tuple[Array, Array]:
    """``n`` images with one ``defect`` each: uint8 (n, C, H, W), and bool masks (n, H, W)."""
    cat = _category(category, defect)
    _check(n, size, seed)
    return _stream(cat, size, seed, _FIRST_DEFECT + DEFECTS.index(defect), n, defect)


def make_split(
    category: str,
    n_train: int = 400,
    n_test_good: int = 60,
    n_test_per_defect: int = 30,
    size: int = 64,
    seed: int = 0,
) -> tuple[Array, InspectionSet]:
    """Good training images, and a test set of other good images and each defect type."""
    cat = _category(category)
    for n in (n_train, n_test_good, n_test_per_defect):
        _check(n, size, seed)
    train = good(category, n_train, size, seed)
    parts = [_stream(cat, size, seed, _TEST_GOOD, n_test_good, None)]
    labels = ["good"] * n_test_good
    for defect in cat.defects:
        parts.append(defective(category, defect, n_test_per_defect, size, seed))
        labels += [defect] * n_test_per_defect
    images = np.concatenate([p[0] for p in parts])
    masks = np.concatenate([p[1] for p in parts])
    return train, InspectionSet(images, np.array(labels, dtype=object), masks, category)


def _write_pngs(folder: Path, images: Array) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(len(images) - 1)))  # names sort in image order
    names = [f"{i:0{digits}d}.png" for i in range(len(images))]
    for stale in folder.glob("*.png"):  # a smaller rewrite must not leave old images behind
        if stale.name not in names:
            stale.unlink()
    for name, img in zip(names, images, strict=True):
        pixels = img[0] if img.ndim == 3 and img.shape[0] == 1 else img
        if pixels.ndim == 3:
            pixels = pixels.transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / name)


def write_folder(
    category: str,
    root: Path,
    n_train: int = 400,
    n_test_good: int = 60,
    n_test_per_defect: int = 30,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a split as PNGs under ``root/<category>``; returns that folder.

    ``train/good``, ``test/good``, ``test/<defect>``, and beside ``test`` the folder
    ``masks/<defect>`` with a 0/255 mask of the same file name as each defective image (what
    ``vlaewatch evaluate`` reads pixel AUROC from).
    """
    train, test = make_split(category, n_train, n_test_good, n_test_per_defect, size, seed)
    out = Path(root) / category
    _write_pngs(out / "train" / "good", train)
    for label in ("good", *CATEGORIES[category].defects):
        pick = test.labels == label
        _write_pngs(out / "test" / label, test.images[pick])
        if label != "good":
            _write_pngs(out / "masks" / label, test.masks[pick].astype(np.uint8) * 255)
    return out

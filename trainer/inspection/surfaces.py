"""Textures (fabric, wood, metal, tiles): params are drawn first (all randomness), then
rendered, so a defect can re-render."""

from __future__ import annotations

import numpy as np

from trainer.inspection.drawing import Array, MakeParams, Params, Render, band_noise, grid, rotate


def _fabric_params(rng: np.random.Generator, size: int) -> Params:
    return {
        "period": 5.0 * size / 64 * rng.uniform(0.85, 1.15),
        "angle": np.deg2rad(rng.uniform(-3.0, 3.0)),
        "phase": rng.uniform(0.0, 4.0, 2),
        "tones": rng.normal(0.0, 0.06, (2, 64)),  # yarn thickness varies thread to thread
        "slub": [band_noise(rng, size, 0.0, size / 6, a, 5.0) for a in (np.pi / 2, 0.0)],
        "mottle": band_noise(rng, size, 2.0, 2.0),
        "level": rng.uniform(125.0, 140.0),
    }


def _fabric(p: Params, size: int) -> tuple[Array, Array | None, Array | None]:
    y, x = grid(size)
    a, b = rotate(y, x, 0.0, 0.0, p["angle"])
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
        "warp": band_noise(rng, size, 0.0, 2.0, np.pi / 2, 2.5),
        "fine_warp": band_noise(rng, size, 0.0, 4.0, np.pi / 2, 3.0),
        "streaks": band_noise(rng, size, 0.0, size / 5, np.pi / 2, 8.0),
        "knots": knots,
        "light": light,
        "dark": light * np.array([0.62, 0.55, 0.5]) * rng.normal(1, 0.03, 3),
    }


def _wood(p: Params, size: int) -> tuple[Array, Array | None, Array | None]:
    y, x = grid(size)
    a, b = rotate(y, x, size / 2, size / 2, p["angle"])
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
        "streaks": band_noise(rng, size, 0.0, size / 4, angle, 14.0 * rng.uniform(0.85, 1.15)),
        "fine": band_noise(rng, size, 0.0, size / 2, angle, 25.0),
        "coarse": band_noise(rng, size, 0.0, size / 12, angle, 6.0),
        "sheen": (rng.uniform(0.5, 1.5), rng.uniform(0.0, 2 * np.pi)),
    }


def _metal(p: Params, size: int) -> tuple[Array, Array | None, Array | None]:
    y, x = grid(size)
    _, b = rotate(y, x, 0.0, 0.0, p["angle"])
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
        "mottle": [band_noise(rng, size, 9.0, 4.0), band_noise(rng, size, 3.0, 2.0)],
        "spots": band_noise(rng, size, size / 4, size / 8),
        "grout_colour": np.array([178.0, 172.0, 160.0]) * rng.uniform(0.95, 1.05),
    }


def _tiles(p: Params, size: int) -> tuple[Array, Array | None, Array | None]:
    y, x = grid(size)
    a, b = rotate(y, x, 0.0, 0.0, p["angle"])
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


TEXTURES: dict[str, tuple[MakeParams, Render]] = {
    "fabric": (_fabric_params, _fabric),
    "wood": (_wood_params, _wood),
    "metal": (_metal_params, _metal),
    "tiles": (_tiles_params, _tiles),
}

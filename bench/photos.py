"""The inspection benchmark's second part: real photographs, with defects of a painter of its own.

Every category of the first part comes from our own generator (``trainer.inspection``), and
dozens of default choices were measured on them. A photograph the generator did not draw checks
those choices: a default that helps on the generator and hurts here is fitted to the generator.

- **Crops, split by rows.** A model trains on square crops from the top 70 % of a photograph's
  rows and is tested on crops from the bottom 25 % (``TRAIN_BAND``, ``TEST_BAND``): no test
  pixel was seen in training, and the gap keeps the bands' edges apart.
- **A painter of its own.** Defects are drawn with PIL shapes and numpy here, and this module
  imports nothing of ``trainer`` (an import-linter contract holds it): not the training
  corruptions (``trainer.corrupt``), not the generator's defects. A default that learned how
  *we* draw a scratch should find no help in how these are drawn.

The defects, each on its own crop, with its mask (where the paint covers the crop and changed
it visibly):

- ``scratch``: a straight line 1.5 to 2.5 pixels wide, lighter or darker;
- ``crack``: a dark polyline one pixel wide, turning at 2 to 4 points;
- ``stain``: a soft-edged ellipse, darker by 8 to 18 %: faint on purpose;
- ``worn``: a soft-edged ellipse in which the photograph is blurred (texture lost);
- ``hole``: an irregular dark polygon;
- ``contamination``: a cluster of specks of a colour the crop does not have there.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PHOTOS = ("moon", "ihc")  # <name>.png in the photographs' folder (its README: source, licence)
DEFECTS = ("scratch", "crack", "stain", "worn", "hole", "contamination")
TRAIN_BAND = (0.0, 0.70)  # share of the rows that training crops lie within
TEST_BAND = (0.75, 1.0)  # and test crops
# A pixel is defective where the paint's alpha is above MASK_ALPHA and it moved the pixel by
# more than MASK_CHANGE (a stain on a black patch changes nothing there: no defect to find).
MASK_ALPHA = 0.5
MASK_CHANGE = 2 / 255
SUPERSAMPLE = 4  # shapes are drawn this many times larger, then averaged down: smooth edges
TRIES = 20  # draws of a defect before a crop is given up as unpaintable

Array = np.ndarray
Paint = Callable[[Array, np.random.Generator], tuple[Array, Array]]


@dataclass(frozen=True)
class PhotoSplit:
    """Crops of one photograph: uint8 (N, C, S, S) to train on; to test, crops with their
    labels ("good" or the defect's name) and boolean masks (N, S, S)."""

    train: Array
    test: Array
    labels: Array
    masks: Array


def load_photo(folder: Path, name: str) -> Array:
    """A photograph as uint8 (C, H, W): grey ones with one channel, others RGB."""
    path = Path(folder) / f"{name}.png"
    if not path.is_file():
        raise FileNotFoundError(f"no photograph {path.name} in {folder}")
    with Image.open(path) as im:
        grey = im.mode in ("1", "L", "LA", "I", "I;16")
        arr = np.asarray(im.convert("L" if grey else "RGB"))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


def crops(
    photo: Array, band: tuple[float, float], n: int, size: int, rng: np.random.Generator
) -> Array:
    """``n`` random ``size`` x ``size`` crops lying wholly within ``band`` (shares of the rows)."""
    _, h, w = photo.shape
    first, last = int(band[0] * h), int(band[1] * h) - size
    if last < first or w < size:
        raise ValueError(f"a band of rows {band} of a {h} x {w} photograph holds no {size} crop")
    tops = rng.integers(first, last + 1, n)
    lefts = rng.integers(0, w - size + 1, n)
    at = zip(tops, lefts, strict=True)
    return np.stack([photo[:, t : t + size, x : x + size] for t, x in at])


def _shape(
    size: int, draw: Callable[[ImageDraw.ImageDraw, float], None], blur: float = 0.0
) -> Array:
    """An alpha (size, size) in [0, 1]: ``draw`` paints white on black at SUPERSAMPLE times the
    size (its second argument: that scale), softened by a Gaussian of ``blur`` pixels."""
    big = Image.new("L", (size * SUPERSAMPLE,) * 2, 0)
    draw(ImageDraw.Draw(big), SUPERSAMPLE)
    if blur:
        big = big.filter(ImageFilter.GaussianBlur(blur * SUPERSAMPLE))
    return np.asarray(big.resize((size, size), Image.Resampling.BOX), np.float32) / 255.0


def _point(size: int, rng: np.random.Generator, margin: float = 0.2) -> tuple[float, float]:
    lo, hi = margin * size, (1 - margin) * size
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def _scratch(x: Array, rng: np.random.Generator) -> tuple[Array, Array]:
    size = x.shape[-1]
    (cx, cy), angle = _point(size, rng), rng.uniform(0, math.pi)
    half = rng.uniform(0.12, 0.25) * size
    dx, dy = half * math.cos(angle), half * math.sin(angle)
    width = rng.uniform(1.5, 2.5)

    def draw(d: ImageDraw.ImageDraw, k: float) -> None:
        d.line(
            [((cx - dx) * k, (cy - dy) * k), ((cx + dx) * k, (cy + dy) * k)],
            fill=255,
            width=round(width * k),
        )

    shift = rng.uniform(0.25, 0.45) * rng.choice([-1.0, 1.0])
    return _shape(size, draw), np.clip(x + shift, 0, 1)


def _crack(x: Array, rng: np.random.Generator) -> tuple[Array, Array]:
    size = x.shape[-1]
    points = [_point(size, rng)]
    angle = rng.uniform(0, 2 * math.pi)
    for _ in range(int(rng.integers(3, 6))):
        angle += rng.uniform(-0.9, 0.9)
        step = rng.uniform(0.06, 0.12) * size
        px, py = points[-1]
        points.append((px + step * math.cos(angle), py + step * math.sin(angle)))

    def draw(d: ImageDraw.ImageDraw, k: float) -> None:
        d.line([(px * k, py * k) for px, py in points], fill=255, width=round(k), joint="curve")

    return _shape(size, draw), x * rng.uniform(0.25, 0.5)


def _ellipse(size: int, rng: np.random.Generator, lo: float, hi: float) -> Array:
    """A soft-edged ellipse's alpha, its edge softened by 0.3 of its smaller radius."""
    (cx, cy), rx, ry = _point(size, rng), rng.uniform(lo, hi) * size, rng.uniform(lo, hi) * size

    def draw(d: ImageDraw.ImageDraw, k: float) -> None:
        d.ellipse([(cx - rx) * k, (cy - ry) * k, (cx + rx) * k, (cy + ry) * k], fill=255)

    return _shape(size, draw, blur=0.3 * min(rx, ry))


def _stain(x: Array, rng: np.random.Generator) -> tuple[Array, Array]:
    alpha = _ellipse(x.shape[-1], rng, 0.10, 0.22)
    return alpha, x * (1 - rng.uniform(0.08, 0.18))


def _worn(x: Array, rng: np.random.Generator) -> tuple[Array, Array]:
    alpha = _ellipse(x.shape[-1], rng, 0.10, 0.20)
    radius = rng.uniform(1.5, 3.0)
    blurred = [
        Image.fromarray(np.uint8(np.round(c * 255))).filter(ImageFilter.GaussianBlur(radius))
        for c in x
    ]
    return alpha, np.stack([np.asarray(b, np.float32) / 255.0 for b in blurred])


def _hole(x: Array, rng: np.random.Generator) -> tuple[Array, Array]:
    size = x.shape[-1]
    cx, cy = _point(size, rng)
    n = int(rng.integers(6, 10))
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = rng.uniform(0.04, 0.09, n) * size
    poly = [
        (cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)
    ]

    def draw(d: ImageDraw.ImageDraw, k: float) -> None:
        d.polygon([(px * k, py * k) for px, py in poly], fill=255)

    fill = np.full_like(x, rng.uniform(0.0, 0.08)) + rng.normal(0, 0.01, x.shape)
    return _shape(size, draw), np.clip(fill, 0, 1)


def _contamination(x: Array, rng: np.random.Generator) -> tuple[Array, Array]:
    size = x.shape[-1]
    cx, cy = _point(size, rng)
    specks = [
        (cx + rng.normal(0, 0.06 * size), cy + rng.normal(0, 0.06 * size), rng.uniform(0.8, 2.0))
        for _ in range(int(rng.integers(3, 9)))
    ]

    def draw(d: ImageDraw.ImageDraw, k: float) -> None:
        for px, py, r in specks:
            d.ellipse([(px - r) * k, (py - r) * k, (px + r) * k, (py + r) * k], fill=255)

    # A colour far from the crop's own: its mean turned over, pushed to a bound.
    mean = x.mean(axis=(1, 2))
    dark, light = rng.uniform(0.0, 0.15, len(mean)), rng.uniform(0.85, 1.0, len(mean))
    colour = np.where(mean > 0.5, dark, light)
    return _shape(size, draw), np.broadcast_to(colour[:, None, None], x.shape).astype(np.float32)


PAINTERS: dict[str, Paint] = {
    "scratch": _scratch,
    "crack": _crack,
    "stain": _stain,
    "worn": _worn,
    "hole": _hole,
    "contamination": _contamination,
}


def paint(crop: Array, defect: str, rng: np.random.Generator) -> tuple[Array, Array]:
    """``crop`` (uint8, C x S x S) with ``defect`` painted on it, and the defect's mask
    (bool, S x S). ValueError for an unknown defect or a crop it cannot change visibly."""
    if defect not in PAINTERS:
        raise ValueError(f"no defect {defect!r}; these are painted: {', '.join(DEFECTS)}")
    x = crop.astype(np.float32) / 255.0
    for _ in range(TRIES):
        alpha, fill = PAINTERS[defect](x, rng)
        out = np.clip(np.round((x * (1 - alpha) + fill * alpha) * 255), 0, 255).astype(np.uint8)
        change = np.abs(out.astype(np.float32) - crop).max(axis=0) / 255.0
        mask = (alpha > MASK_ALPHA) & (change > MASK_CHANGE)
        if mask.any():
            return out, mask
    raise ValueError(f"{TRIES} draws of a {defect} changed nothing visible on this crop")


def photo_split(
    folder: Path,
    name: str,
    n_train: int = 400,
    n_test_good: int = 60,
    n_test_per_defect: int = 30,
    size: int = 64,
    seed: int = 0,
) -> PhotoSplit:
    """One photograph's seeded crops: training crops from ``TRAIN_BAND``; test crops from
    ``TEST_BAND``, good ones and each defect painted on crops of its own. Every set draws from
    a stream of its own (the photograph's name and ``seed`` pick them)."""
    photo = load_photo(folder, name)

    def rng(stream: int) -> np.random.Generator:
        return np.random.default_rng([seed, zlib.crc32(name.encode()), stream])

    train = crops(photo, TRAIN_BAND, n_train, size, rng(0))
    images = [crops(photo, TEST_BAND, n_test_good, size, rng(1))]
    masks = [np.zeros((n_test_good, size, size), bool)]
    labels = ["good"] * n_test_good
    for k, defect in enumerate(DEFECTS):
        draw = rng(100 + k)
        painted = [
            paint(c, defect, draw)
            for c in crops(photo, TEST_BAND, n_test_per_defect, size, rng(2 + k))
        ]
        images.append(np.stack([p[0] for p in painted]))
        masks.append(np.stack([p[1] for p in painted]))
        labels += [defect] * n_test_per_defect
    return PhotoSplit(
        train, np.concatenate(images), np.array(labels, dtype=object), np.concatenate(masks)
    )

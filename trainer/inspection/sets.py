"""The categories and defect types on offer, one seeded image, and the sets built of them."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from trainer.inspection.defects import PAINT, Site
from trainer.inspection.drawing import Array, MakeParams, Render, grid
from trainer.inspection.objects import OBJECTS, misplace
from trainer.inspection.surfaces import TEXTURES

DEFECTS = ("scratch", "hole", "stain", "crack", "contamination", "worn", "misplaced")
SIZES = (32, 256)  # smallest and largest image side the features are designed for
MASK_THRESHOLD = 0.4  # soft defect alpha above this is "visibly defective"

# Streams of per-image generators: training good, test good, then one per defect type, so no
# test image repeats a training image and each defect's base images are their own draws.
_TRAIN, _TEST_GOOD, _FIRST_DEFECT = 0, 1, 2


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


_SCENES: dict[str, tuple[MakeParams, Render]] = {**TEXTURES, **OBJECTS}


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
    y, x = grid(size)
    turn = rng.uniform(0.0, 2 * np.pi)
    ramp = ((x / size - 0.5) * np.cos(turn) + (y / size - 0.5) * np.sin(turn)) * rng.uniform(0, 0.1)
    light = (1 + rng.uniform(-0.08, 0.08)) * (1 + ramp)
    noise = rng.standard_normal(img.shape) * rng.uniform(2.0, 3.0)
    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        drng = np.random.default_rng(defect_seq)
        site = Site(size, footprint, cat.name in ("metal", "washer"))
        min_pixels = max(4, round(4 * (size / 64) ** 2))
        for _ in range(100):  # resample a defect that ended up too small to see
            out = img.copy()
            if defect == "misplaced":
                out, moved, moved_feature = render(misplace(cat.name, params, drng, size), size)
                assert footprint is not None and moved is not None
                mask = (footprint > 0.5) ^ (moved > 0.5)
                if feature is not None and moved_feature is not None:
                    mask |= (feature > 0.5) ^ (moved_feature > 0.5)
            else:
                alpha = PAINT[defect](out, drng, site)
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

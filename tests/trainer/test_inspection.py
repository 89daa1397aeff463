from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.inspection import (
    CATEGORIES,
    DEFECTS,
    InspectionDataError,
    InspectionSet,
    defective,
    good,
    make_split,
    sets,
    write_folder,
)


def _clean_twin(category: str, defect: str, i: int, size: int, seed: int) -> np.ndarray:
    """The good image a defective image was painted on: same stream and index, no defect."""
    stream = sets._FIRST_DEFECT + DEFECTS.index(defect)
    return sets._sample(CATEGORIES[category], size, seed, stream, i)[0]


def test_categories_and_their_defects() -> None:
    assert list(CATEGORIES) == ["fabric", "wood", "metal", "tiles", "washer", "pill"]
    assert [c.kind for c in CATEGORIES.values()] == ["texture"] * 4 + ["object"] * 2
    assert {n: c.channels for n, c in CATEGORIES.items()} == {
        "fabric": 1, "wood": 3, "metal": 1, "tiles": 3, "washer": 1, "pill": 3,
    }  # fmt: skip
    for name, cat in CATEGORIES.items():
        assert cat.name == name
        assert len(cat.defects) >= 5 and len(set(cat.defects)) == len(cat.defects)
        assert set(cat.defects) <= set(DEFECTS)
        assert ("misplaced" in cat.defects) == (cat.kind == "object")


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("category", list(CATEGORIES))
def test_shapes_dtypes_and_masks(category: str, size: int) -> None:
    cat = CATEGORIES[category]
    images = good(category, 2, size=size, seed=3)
    assert images.shape == (2, cat.channels, size, size) and images.dtype == np.uint8
    assert images.std() > 5  # a texture or a part, not a flat frame
    for defect in cat.defects:
        images, masks = defective(category, defect, 1, size=size, seed=3)
        assert images.shape == (1, cat.channels, size, size) and images.dtype == np.uint8
        assert masks.shape == (1, size, size) and masks.dtype == bool
        assert masks.any(), f"{category}/{defect}: empty mask"


@pytest.mark.parametrize("size", [32, 256])
def test_extreme_sizes(size: int) -> None:
    for category in ("fabric", "pill"):
        assert good(category, 1, size=size).shape[-2:] == (size, size)
        _, masks = defective(category, "scratch", 1, size=size)
        assert masks.any()


def test_same_seed_same_bytes_and_prefix() -> None:
    for category, defect in (("wood", "crack"), ("washer", "misplaced"), ("fabric", "worn")):
        assert np.array_equal(good(category, 3, seed=7), good(category, 3, seed=7))
        # Image i does not depend on how many images were asked for.
        assert np.array_equal(good(category, 5, seed=7)[:3], good(category, 3, seed=7))
        a, ma = defective(category, defect, 4, seed=7)
        b, mb = defective(category, defect, 2, seed=7)
        assert np.array_equal(a[:2], b) and np.array_equal(ma[:2], mb)
        assert not np.array_equal(good(category, 3, seed=7), good(category, 3, seed=8))


def test_good_images_vary() -> None:
    for category in CATEGORIES:
        images = good(category, 4).astype(np.float64)
        for i in range(1, 4):  # no two normal images are the same crop
            assert np.abs(images[i] - images[0]).mean() > 2


def test_defect_changes_the_masked_pixels() -> None:
    for category, cat in CATEGORIES.items():
        for defect in cat.defects:
            images, masks = defective(category, defect, 2, seed=1)
            for i in range(2):
                clean = _clean_twin(category, defect, i, 64, 1)
                diff = np.abs(images[i].astype(int) - clean.astype(int)).max(axis=0)
                inside, outside = diff[masks[i]].mean(), diff[~masks[i]].mean()
                assert inside > 2 and inside > 3 * outside, f"{category}/{defect}/{i}"


def test_contrast_is_strong_for_marks_and_low_for_stains() -> None:
    def inside_diff(category: str, defect: str, n: int = 6) -> float:
        images, masks = defective(category, defect, n, seed=2)
        diffs = [
            np.abs(images[i].astype(int) - _clean_twin(category, defect, i, 64, 2)).max(0)[masks[i]]
            for i in range(n)
        ]
        return float(np.median([d.mean() for d in diffs]))

    for category in ("wood", "tiles"):
        assert inside_diff(category, "scratch") > 20
        assert inside_diff(category, "crack") > 20
        assert inside_diff(category, "stain") < 20
        assert inside_diff(category, "worn") < 20


def test_defect_sizes_spread() -> None:
    fractions = []
    for category, defect in (("tiles", "hole"), ("tiles", "stain"), ("fabric", "worn")):
        _, masks = defective(category, defect, 12, seed=4)
        fractions.extend(masks.mean(axis=(1, 2)))
    assert min(fractions) <= 0.015 and max(fractions) >= 0.04
    _, masks = defective("metal", "scratch", 12, seed=4)
    assert masks.mean(axis=(1, 2)).max() < 0.03  # scratches are thin


def test_defects_stay_on_the_part() -> None:
    y, x = np.mgrid[:64, :64] + 0.5
    far = np.hypot(y - 32, x - 32) > 0.45 * 64  # background for both objects, whatever pose
    for category in ("washer", "pill"):
        for defect in ("scratch", "hole", "stain", "crack", "contamination"):
            _, masks = defective(category, defect, 3, seed=5)
            assert not (masks & far).any(), f"{category}/{defect}"


def test_make_split() -> None:
    train, test = make_split("pill", n_train=5, n_test_good=4, n_test_per_defect=2, seed=2)
    defects = CATEGORIES["pill"].defects
    assert isinstance(test, InspectionSet) and test.category == "pill"
    assert train.shape == (5, 3, 64, 64) and np.array_equal(train, good("pill", 5, seed=2))
    assert list(test.labels) == ["good"] * 4 + [d for d in defects for _ in range(2)]
    assert test.images.shape == (4 + 2 * len(defects), 3, 64, 64)
    assert test.masks.shape == (len(test.images), 64, 64) and test.masks.dtype == bool
    is_good = test.labels == "good"
    assert not test.masks[is_good].any() and test.masks[~is_good].any(axis=(1, 2)).all()
    # Test images are other draws than the training images.
    for img in test.images[is_good]:
        assert not any(np.array_equal(img, t) for t in train)


def test_write_folder_round_trips(tmp_path: Path) -> None:
    out = write_folder("tiles", tmp_path, n_train=3, n_test_good=2, n_test_per_defect=2, seed=1)
    assert out == tmp_path / "tiles"
    train, test = make_split("tiles", n_train=3, n_test_good=2, n_test_per_defect=2, seed=1)
    names = ["000.png", "001.png"]
    assert sorted(p.name for p in (out / "train" / "good").iterdir()) == [*names, "002.png"]
    for i, img in enumerate(train):
        read = np.asarray(Image.open(out / "train" / "good" / f"{i:03d}.png"))
        assert np.array_equal(read.transpose(2, 0, 1), img)
    for label in ("good", *CATEGORIES["tiles"].defects):
        pick = np.flatnonzero(test.labels == label)
        assert sorted(p.name for p in (out / "test" / label).iterdir()) == names
        for name, k in zip(names, pick, strict=True):
            read = np.asarray(Image.open(out / "test" / label / name))
            assert np.array_equal(read.transpose(2, 0, 1), test.images[k])
            if label != "good":
                mask = np.asarray(Image.open(out / "masks" / label / name))
                assert set(np.unique(mask)) <= {0, 255}
                assert np.array_equal(mask == 255, test.masks[k])
    assert not (out / "masks" / "good").exists()


def test_write_folder_grey_and_rewrite(tmp_path: Path) -> None:
    write_folder("washer", tmp_path, n_train=3, n_test_good=1, n_test_per_defect=1)
    out = write_folder("washer", tmp_path, n_train=2, n_test_good=1, n_test_per_defect=1)
    files = sorted((out / "train" / "good").iterdir())
    assert [p.name for p in files] == ["000.png", "001.png"]  # no stale image from before
    with Image.open(files[1]) as im:
        assert im.mode == "L"
        assert np.array_equal(np.asarray(im), good("washer", 2)[1, 0])


def test_clear_errors() -> None:
    with pytest.raises(InspectionDataError, match=r"unknown inspection category 'carpet'.*fabric"):
        good("carpet", 1)
    with pytest.raises(InspectionDataError, match="'misplaced' is not valid for category 'wood'"):
        defective("wood", "misplaced", 1)
    with pytest.raises(InspectionDataError, match=r"not a defect type at all.*scratch"):
        defective("pill", "dust", 1)
    with pytest.raises(InspectionDataError, match=r"size must be in 32\.\.256"):
        good("metal", 1, size=16)
    with pytest.raises(ValueError, match="unknown inspection category"):  # a ValueError too
        make_split("nope")
    with pytest.raises(InspectionDataError):
        write_folder("metal", Path("/nonexistent"), n_train=-1)

"""The inspection benchmark's photographs (bench/photos.py): crops from their own bands of rows,
defects painted where their masks say, and the part reported apart from the generator's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.inspection import main
from bench.photos import (
    DEFECTS,
    MASK_CHANGE,
    TEST_BAND,
    TRAIN_BAND,
    crops,
    load_photo,
    paint,
    photo_split,
)
from tests.figures import assert_recomputed
from vlae.checkpoint import load_checkpoint
from vlae.score import score_images


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two stand-in photographs of 160 x 160: grey grain, and colour cells on a light ground."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    grain = np.clip(120 + rng.normal(0, 12, (160, 160)), 0, 255).astype(np.uint8)
    Image.fromarray(grain).save(folder / "grain.png")
    cells = np.full((160, 160, 3), (230, 220, 200), np.uint8)
    for cy, cx in rng.integers(0, 160, (60, 2)):
        cells[max(0, cy - 5) : cy + 5, max(0, cx - 5) : cx + 5] = (150, 90, 40)
    Image.fromarray(cells).save(folder / "cells.png")
    return folder


def test_crops_come_from_their_own_band_of_rows() -> None:
    # Each pixel holds its row's number: a crop shows which rows it came from.
    photo = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 256, axis=2)
    rng = np.random.default_rng(0)
    train = crops(photo, TRAIN_BAND, 500, 32, rng)
    test = crops(photo, TEST_BAND, 500, 32, rng)
    assert train.shape == test.shape == (500, 1, 32, 32)
    assert train.min() >= 0 and train.max() < 0.70 * 256
    assert test.min() >= 0.75 * 256 and test.max() <= 255
    # Both bands are used to their edges, not a corner of them.
    assert train.min() < 8 and train.max() > 0.70 * 256 - 8 and test.max() > 247
    with pytest.raises(ValueError, match="holds no 128 crop"):
        crops(photo, TEST_BAND, 1, 128, rng)


@pytest.mark.parametrize("name", ["grain", "cells"])
def test_each_defect_changes_its_mask_and_little_else(photos: Path, name: str) -> None:
    photo = load_photo(photos, name)
    assert photo.shape == ((1, 160, 160) if name == "grain" else (3, 160, 160))
    base = crops(photo, TEST_BAND, 12, 32, np.random.default_rng(1))
    for defect in DEFECTS:
        for k, crop in enumerate(base):
            out, mask = paint(crop, defect, np.random.default_rng([k, 3]))
            assert out.shape == crop.shape and out.dtype == np.uint8 and mask.shape == (32, 32)
            change = np.abs(out.astype(np.float32) - crop).max(axis=0) / 255
            assert mask.any() and (change[mask] > MASK_CHANGE).all(), defect
            # The paint lies on the mask: what changes outside it is its soft edge.
            assert change[mask].mean() > 3 * change[~mask].mean(), (defect, k)
            again, same = paint(crop, defect, np.random.default_rng([k, 3]))
            assert (again == out).all() and (same == mask).all()  # seeded: repeatable
    with pytest.raises(ValueError, match="no defect 'dent'"):
        paint(base[0], "dent", np.random.default_rng(0))


def test_a_split_holds_each_defect_on_crops_of_its_own(photos: Path) -> None:
    split = photo_split(photos, "cells", n_train=20, n_test_good=6, n_test_per_defect=3, size=32)
    assert split.train.shape == (20, 3, 32, 32) and split.test.shape == (24, 3, 32, 32)
    assert list(split.labels[:6]) == ["good"] * 6 and sorted(set(split.labels[6:])) == sorted(
        DEFECTS
    )
    assert not split.masks[:6].any() and all(m.any() for m in split.masks[6:])
    again = photo_split(photos, "cells", n_train=20, n_test_good=6, n_test_per_defect=3, size=32)
    assert (again.test == split.test).all() and (again.train == split.train).all()
    other = photo_split(
        photos, "cells", n_train=20, n_test_good=6, n_test_per_defect=3, size=32, seed=1
    )
    assert not (other.train == split.train).all()
    # No training crop is a test crop.
    train = {c.tobytes() for c in split.train}
    assert not any(c.tobytes() in train for c in split.test[:6])


def test_the_photographs_are_reported_apart(photos: Path, tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    tiny = [
        "--categories",
        "",
        "--photos",
        str(photos),
        "--photo-names",
        "grain,cells",
        "--size",
        "32",
        "--n-train",
        "40",
        "--n-test-good",
        "8",
        "--n-test-per-defect",
        "4",
        "--epochs",
        "1",
        "--baseline-epochs",
        "0",
        "--no-pyod",
        "--out",
        str(tmp_path),
        "--keep",
        str(keep),
        "--jobs",
        "1",
    ]
    assert main(tiny) == 0
    report = json.loads((tmp_path / "inspection.json").read_text())
    assert report["categories"] == {} and report["summary"] is None
    assert list(report["photos"]) == ["grain", "cells"]
    assert set(report["photos_summary"]["goals"]) == {
        "mean_image_auroc",
        "min_image_auroc",
        "mean_pixel_auroc",
    }
    assert report["photos_summary"]["goals"]["mean_image_auroc"][1] == 0.95
    assert "Real photographs" in (tmp_path / "inspection.md").read_text()
    # The figures are sklearn's on the kept model's scores of the same crops, each painted
    # crop's map against its own mask. No floor: one epoch on 40 crops is near chance.
    grain = report["photos"]["grain"]
    split = photo_split(photos, "grain", n_train=40, n_test_good=8, n_test_per_defect=4, size=32)
    scores = score_images(load_checkpoint(keep / "photo-grain").model, split.test, maps=True)
    assert scores.maps is not None
    assert_recomputed(
        grain["image_auroc"]["local"],
        grain["pixel_auroc"],
        split.labels,
        split.masks,
        scores.score,
        scores.maps,
        DEFECTS,
    )


def test_nothing_to_run_or_a_missing_photograph_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, says in (
        (["--categories", ""], "nothing to run"),
        (
            ["--categories", "", "--photos", str(tmp_path)],
            f"--photos: no moon.png, ihc.png in {tmp_path}",
        ),
    ):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--out", str(tmp_path)])
        assert exc.value.code == 2 and says in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no report written

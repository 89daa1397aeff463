from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data import (
    DataError,
    NoNormalImagesError,
    load_digits,
    load_source,
    split_normal,
)


def _write_idx(root: Path, folder: str, n_train: int, n_test: int, seed: int) -> None:
    """A tiny dataset in torchvision's raw MNIST layout (uncompressed idx files)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.tobytes()
        )


def test_digits_is_the_bundled_mnist_subset(digits) -> None:
    assert len(digits.train) + len(digits.test) == 5000
    assert digits.train.image_shape == (1, 28, 28)
    assert digits.train.images.dtype == np.uint8
    assert digits.test.class_counts() == {str(d): 100 for d in range(10)}
    # The partition is fixed: a later `evaluate` sees the same test set as `train` left out.
    again = load_digits()
    assert np.array_equal(again.test.images, digits.test.images)


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_torchvision_layout_from_data_dir(tmp_path: Path, name: str, folder: str) -> None:
    _write_idx(tmp_path, folder, n_train=50, n_test=20, seed=1)
    source = load_source(name, data_dir=tmp_path)
    assert len(source.train) == 50 and len(source.test) == 20
    assert source.train.image_shape == (1, 28, 28)
    assert source.train.class_counts()["3"] == 5


def test_torchvision_missing_offline_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    # No network here: point the download at an address that refuses connections at once.
    from torchvision import datasets

    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataError, match="could not be downloaded"):
        load_source("mnist", data_dir=tmp_path)
    with pytest.raises(DataError, match="--data-dir"):
        load_source("mnist")


def _png(path: Path, size: tuple[int, int], mode: str, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value, 0)).save(path)


def test_image_folder_any_size_resized(tmp_path: Path) -> None:
    for i in range(6):
        _png(tmp_path / "good" / f"{i}.png", (40 + i, 30), "RGB", 200)
        _png(tmp_path / "scratch" / f"{i}.jpg", (10, 90), "RGB", 20)
    (tmp_path / "good" / "notes.txt").write_text("not an image")
    source = load_source("folder", image_folder=tmp_path, image_shape=(0, 16, 24))
    everything = len(source.train) + len(source.test)
    assert everything == 12
    assert source.train.image_shape == (3, 16, 24)
    assert set(source.train.class_counts()) == {"good", "scratch"}
    split = split_normal(source, ["good"])
    assert set(split.train.class_counts()) == {"good"}


def test_flat_image_folder_is_all_normal(tmp_path: Path) -> None:
    for i in range(10):
        _png(tmp_path / f"{i}.png", (28, 28), "L", i * 20)
    source = load_source("folder", image_folder=tmp_path, image_shape=(1, 28, 28))
    assert set(source.train.class_counts()) == {"normal"}


def test_folder_images_are_read_as_the_scorer_reads_them(tmp_path: Path) -> None:
    from vlae.images import Limits, decode_image

    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.jpg", quality=80
        )
    source = load_source("folder", image_folder=tmp_path, image_shape=(3, 16, 24))
    everything = np.concatenate([source.train.images, source.test.images])
    served = [decode_image((tmp_path / f"{i}.jpg").read_bytes(), (3, 16, 24), Limits(resize=True))
              for i in range(4)]  # fmt: skip
    assert {a.tobytes() for a in everything} == {b.tobytes() for b in served}


@pytest.mark.parametrize(("mode", "reason"), [("RGBA", "alpha"), ("I;16", "16/32-bit"),
                                              ("L", "channel")])  # fmt: skip
def test_a_file_the_scorer_refuses_is_refused_in_training_too(
    tmp_path: Path, mode: str, reason: str
) -> None:
    _png(tmp_path / "0.png", (8, 8), "RGB", 10)
    Image.new(mode, (8, 8)).save(tmp_path / "1.png")
    with pytest.raises(DataError, match=rf"1\.png.*{reason}"):
        load_source("folder", image_folder=tmp_path, image_shape=(3, 8, 8))


def test_unreadable_image_in_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_source("folder", image_folder=tmp_path)


def test_refuses_to_train_without_normal_images(digits) -> None:
    with pytest.raises(NoNormalImagesError, match="no training image"):
        split_normal(digits, ["cat"])
    with pytest.raises(NoNormalImagesError):
        split_normal(digits, [])


def test_split_keeps_only_normal_and_holds_out_disjoint_slices(digits) -> None:
    split = split_normal(digits, ["0", "6"])
    for part in (split.train, split.validation, split.calibration):
        assert set(part.class_counts()) <= {"0", "6"}
    n_normal = sum(digits.train.class_counts()[c] for c in ("0", "6"))
    assert len(split.train) + len(split.validation) + len(split.calibration) == n_normal
    keys = [
        {img.tobytes() for img in part.images}
        for part in (split.train, split.validation, split.calibration, split.test)
    ]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not keys[i] & keys[j]

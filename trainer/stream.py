"""Training images streamed through Ray Data, for folders larger than one process should hold.

The driver lists the files (a local folder, or a folder under a URI that pyarrow's filesystems
read: ``file://``, ``s3://``, ``gs://``, ...) and splits the list exactly as ``split_normal``
splits the in-memory arrays: the same seeded test partition, the same normal-only train /
validation / calibration indices. Only the held-out normal images are decoded in the driver,
at most ``MAX_VALIDATION`` and ``MAX_CALIBRATION`` of them (a seeded sample), so its memory
does not grow with the folder. The training files are read and decoded by Ray Data's own
tasks (``read_binary_files`` then ``vlae.images.decode_image``, the scorer's reader) and
stream to the Train workers through ``ray.train.get_dataset_shard``: a worker holds a few
batches, not the dataset. File order is shuffled each epoch, and rows within a buffer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from trainer.data import (
    IMAGE_SUFFIXES,
    MASKS,
    DataError,
    LabelledImages,
    NormalSplit,
    fixed_test_partition,
    normal_indices,
    read_image_bytes,
)

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    import ray.data

MAX_VALIDATION = 2_000  # held-out normal images decoded in the driver, at most
MAX_CALIBRATION = 5_000
HELD_OUT_BYTES = 1 << 30  # and at most this much of them, decoded (uint8)
SHUFFLE_BUFFER = 1_024  # rows a worker shuffles within, beyond the per-epoch file order
STREAM_ABOVE_BYTES = 2 << 30  # --reader auto: a folder decoding to more than this streams
# Logical CPUs of a read-and-decode task: a fraction, so that the tasks run beside Train
# workers and Serve replicas that hold most of a node's CPUs.
TASK_CPUS = 0.5


def is_uri(folder: str | Path) -> bool:
    """A folder named by a URI (``s3://bucket/prefix``) rather than a local path."""
    return "://" in str(folder)


def filesystem(folder: str | Path) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a folder or URI, and the folder's path in it."""
    import pyarrow.fs as pafs

    if not is_uri(folder):
        return pafs.LocalFileSystem(), str(Path(folder).resolve())
    if urlsplit(str(folder)).password is not None:
        raise DataError("a URI with credentials is refused (Ray shows task arguments): give "
                        "them in the environment, as AWS_ACCESS_KEY_ID")  # fmt: skip
    try:
        return pafs.FileSystem.from_uri(str(folder))
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError variants
        raise DataError(f"cannot open {folder}: {exc}") from exc


@dataclass(frozen=True)
class ImageFiles:
    """Image files under one folder, one class name each, and the (C, H, W) they decode to:
    the training part of a streamed split. Paths are relative to ``root``."""

    root: str  # as given: a local path or a URI
    paths: np.ndarray  # str, relative to root, "class/name.png" or "name.png"
    labels: np.ndarray  # str, one class name per file
    sizes: np.ndarray  # int64, bytes on disk
    shape: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.shape

    def subset(self, idx: np.ndarray) -> ImageFiles:
        return ImageFiles(self.root, self.paths[idx], self.labels[idx], self.sizes[idx],
                          self.shape)  # fmt: skip

    def class_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.labels.astype(str), return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts, strict=True)}

    def fingerprint(self) -> str:
        """A hash of the file list (names and sizes), not of the pixels: hashing them would
        read the whole folder in the driver."""
        h = hashlib.sha256()
        for p, s in zip(self.paths, self.sizes, strict=True):
            h.update(f"{p}\0{int(s)}\n".encode())
        return h.hexdigest()[:16]

    def decoded_bytes(self) -> int:
        """What the in-memory reader would hold of these files."""
        c, h, w = self.shape
        return len(self) * c * h * w

    def read(self) -> LabelledImages:
        """Decode every file in this process (held-out sets, a profiling sample)."""
        fs, base = filesystem(self.root)
        images = np.empty((len(self), *self.shape), dtype=np.uint8)
        for i, p in enumerate(self.paths):
            full = f"{base}/{p}"
            images[i] = read_image_bytes(_read(fs, full), full, self.shape)
        return LabelledImages(images, self.labels.astype(object))

    def sample(self, n: int, seed: int = 0) -> ImageFiles:
        """A seeded sample of at most ``n`` files, in list order."""
        if len(self) <= n:
            return self
        return self.subset(np.sort(np.random.default_rng(seed).choice(len(self), n, False)))


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    try:
        with fs.open_input_file(path) as f:
            return bytes(f.read())
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _channels(fs: pafs.FileSystem, path: str) -> int:
    """1 for a grey image file, 3 for colour (``trainer.data.image_channels``, through fs)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(_read(fs, path))) as im:
            return 1 if im.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def list_images(folder: str | Path, shape: tuple[int, int, int]) -> ImageFiles:
    """The image files of a folder, as ``trainer.data.read_folder`` takes them (subfolders
    are classes, ``masks`` is not one; else every image is 'normal'), in the same order. A
    channel count of 0 takes the first image's."""
    import pyarrow.fs as pafs

    fs, base = filesystem(folder)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except (OSError, FileNotFoundError) as exc:
        raise DataError(f"image folder {folder} does not exist: {exc}") from None
    files, dirs = [], set()
    for info in infos:
        rel = PurePosixPath(info.path).relative_to(PurePosixPath(base))
        if info.type == pafs.FileType.Directory and len(rel.parts) == 1 and rel.name != MASKS:
            dirs.add(rel.name)
        elif info.type == pafs.FileType.File and rel.suffix.lower() in IMAGE_SUFFIXES:
            files.append((rel, info.size))
    if dirs:
        rows = sorted((r.parts[0], r.name, str(r), s) for r, s in files
                      if len(r.parts) == 2 and r.parts[0] in dirs)  # fmt: skip
    else:
        rows = sorted(("normal", r.name, str(r), s) for r, s in files if len(r.parts) == 1)
    if not rows:
        raise DataError(f"no PNG or JPEG images under {folder}")
    if shape[0] == 0:
        shape = (_channels(fs, f"{base}/{rows[0][2]}"), *shape[1:])
    if shape[0] not in (1, 3):
        raise DataError(f"image folders support 1 or 3 channels, not {shape[0]}")
    return ImageFiles(
        root=str(folder),
        paths=np.array([r[2] for r in rows], dtype=str),
        labels=np.array([r[0] for r in rows], dtype=str),
        sizes=np.array([r[3] for r in rows], dtype=np.int64),
        shape=shape,
    )


def held_out_caps(shape: tuple[int, int, int]) -> tuple[int, int]:
    """How many validation and calibration images the driver decodes at most: the caps, or
    fewer of large images, so that both fit in ``HELD_OUT_BYTES`` (in their ratio)."""
    c, h, w = shape
    fit = HELD_OUT_BYTES // (c * h * w)
    total = MAX_VALIDATION + MAX_CALIBRATION
    if fit >= total:
        return MAX_VALIDATION, MAX_CALIBRATION
    n_val = max(1, fit * MAX_VALIDATION // total)
    return n_val, max(1, fit - n_val)


def split_files(
    files: ImageFiles,
    normal_classes: list[str] | tuple[str, ...],
    seed: int = 0,
    calibration_fraction: float = 0.2,
    validation_fraction: float = 0.1,
) -> NormalSplit[ImageFiles]:
    """``split_normal`` on a file list: the same test partition and normal indices as the
    in-memory reader's, the training files left undecoded, the held-out ones decoded (a
    seeded sample of at most ``MAX_VALIDATION`` / ``MAX_CALIBRATION``)."""
    normal = tuple(str(c) for c in normal_classes)
    part, _ = fixed_test_partition(files.labels)
    trainable = files.subset(part)
    train, val, cal = normal_indices(trainable.labels, normal, calibration_fraction,
                                     validation_fraction, seed, f"folder:{files.root}")  # fmt: skip
    empty = LabelledImages(np.zeros((0, *files.shape), np.uint8), np.array([], dtype=object))
    n_val, n_cal = held_out_caps(files.shape)
    return NormalSplit(
        normal_classes=normal,
        train=trainable.subset(train),
        validation=trainable.subset(val).sample(n_val, seed).read(),
        calibration=trainable.subset(cal).sample(n_cal, seed).read(),
        test=empty,  # streamed training does not hold the test partition
    )


def decode_batch(
    batch: dict[str, np.ndarray],
    shape: tuple[int, int, int],
    conditions: dict[str, int] | None,
    by_folder: bool = True,
) -> dict[str, np.ndarray]:
    """A Ray Data batch of files (``bytes``, ``path``) as uint8 images ``x`` (N, C, H, W),
    and, for a conditional model, each one's condition index ``c``: its class's, the class
    being its folder's name (``by_folder``), or 'normal' for a folder without classes."""
    paths = [str(p) for p in batch["path"]]
    x = np.empty((len(paths), *shape), dtype=np.uint8)
    for i, (data, path) in enumerate(zip(batch["bytes"], paths, strict=True)):
        x[i] = read_image_bytes(bytes(data), path, shape)
    out = {"x": x}
    if conditions is not None:
        labels = [PurePosixPath(p).parent.name if by_folder else "normal" for p in paths]
        out["c"] = np.array([conditions[label] for label in labels], dtype=np.int64)
    return out


@dataclass(frozen=True)
class StreamedTrain:
    """The training images as a Ray Data dataset (built in the driver, where Ray runs), and,
    in a Train worker, this rank's batches of it (``ShardBatches``)."""

    files: ImageFiles
    conditions: dict[str, int] | None  # class -> condition index, for a conditional model
    seed: int = 0

    def __len__(self) -> int:
        return len(self.files)

    def dataset(self) -> ray.data.Dataset:
        import ray.data
        from ray.data import FileShuffleConfig

        fs, base = filesystem(self.files.root)
        ds = ray.data.read_binary_files(
            [f"{base}/{p}" for p in self.files.paths],
            filesystem=fs,
            include_paths=True,
            # A new file order each epoch (each execution), from the run's seed.
            shuffle=FileShuffleConfig(seed=self.seed),
            num_cpus=TASK_CPUS,
        )
        by_folder = len(self.files) > 0 and "/" in str(self.files.paths[0])
        kwargs = {"shape": self.files.shape, "conditions": self.conditions, "by_folder": by_folder}
        return ds.map_batches(decode_batch,  # type: ignore[arg-type]
                              batch_format="numpy", batch_size=64,
                              num_cpus=TASK_CPUS, fn_kwargs=kwargs)  # fmt: skip

    def batches(self, epoch: int, batch: int, rank: int) -> Iterator[tuple[Any, Any]]:
        raise RuntimeError("a streamed training set is read in Ray Train workers (ShardBatches)")


@dataclass(frozen=True)
class ShardBatches:
    """A Train worker's share of a ``StreamedTrain``: float batches in [0, 1]."""

    shard: Any  # ray.data.DataIterator
    n: int  # images in the whole training set
    seed: int = 0

    def __len__(self) -> int:
        return self.n

    def batches(self, epoch: int, batch: int, rank: int) -> Iterator[tuple[Any, Any]]:
        import torch

        seed = int(np.random.default_rng([self.seed, epoch, rank]).integers(2**31))
        for b in self.shard.iter_torch_batches(
            batch_size=batch, local_shuffle_buffer_size=max(SHUFFLE_BUFFER, 4 * batch),
            local_shuffle_seed=seed,
        ):  # fmt: skip
            yield b["x"].to(torch.float32).div_(255.0), b.get("c")

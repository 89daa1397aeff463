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
from dataclasses import dataclass, replace
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
    image_channels,
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
PARQUET_SUFFIX = ".parquet"
IMAGE_COLUMN, LABEL_COLUMN = "image", "label"  # of a Parquet source


def is_uri(folder: str | Path) -> bool:
    """A folder named by a URI (``s3://bucket/prefix``) rather than a local path."""
    return "://" in str(folder)


def is_parquet(folder: str | Path) -> bool:
    """A Parquet file, or a folder of them, rather than a folder of image files."""
    fs, base = filesystem(folder)
    return parquet_files(fs, base) is not None


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
    # Images in Parquet files: each one's row in the file ``paths`` names ("" for the root
    # itself); None for image files.
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.shape

    def subset(self, idx: np.ndarray) -> ImageFiles:
        rows = None if self.rows is None else self.rows[idx]
        return ImageFiles(self.root, self.paths[idx], self.labels[idx], self.sizes[idx],
                          self.shape, rows)  # fmt: skip

    def class_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.labels.astype(str), return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts, strict=True)}

    def fingerprint(self) -> str:
        """A hash of the file list (names and sizes), not of the pixels: hashing them would
        read the whole folder in the driver."""
        h = hashlib.sha256()
        rows = self.rows if self.rows is not None else np.full(len(self), -1)
        for p, s, r in zip(self.paths, self.sizes, rows, strict=True):
            h.update(f"{p}\0{int(s)}\0{int(r)}\n".encode())
        return h.hexdigest()[:16]

    def decoded_bytes(self) -> int:
        """What the in-memory reader would hold of these files."""
        c, h, w = self.shape
        return len(self) * c * h * w

    def read(self) -> LabelledImages:
        """Decode every file in this process (held-out sets, a profiling sample)."""
        fs, base = filesystem(self.root)
        images = np.empty((len(self), *self.shape), dtype=np.uint8)
        if self.rows is None:
            for i, p in enumerate(self.paths):
                full = _full(base, p)
                images[i] = read_image_bytes(_read(fs, full), full, self.shape)
        else:
            for rel in np.unique(self.paths):
                mine = np.flatnonzero(self.paths == rel)
                full = _full(base, str(rel))
                for j, data in zip(mine, _parquet_images(fs, full, self.rows[mine]),
                                   strict=True):  # fmt: skip
                    images[j] = read_image_bytes(data, f"{full}#{self.rows[j]}", self.shape)
        return LabelledImages(images, self.labels.astype(object))

    def sample(self, n: int, seed: int = 0) -> ImageFiles:
        """A seeded sample of at most ``n`` files, in list order."""
        if len(self) <= n:
            return self
        return self.subset(np.sort(np.random.default_rng(seed).choice(len(self), n, False)))


def _full(base: str, rel: str) -> str:
    return f"{base}/{rel}" if rel else base


def _row_group_starts(meta: Any) -> np.ndarray:
    """The first row of each row group of a Parquet file's metadata, and its row count."""
    return np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])


def _parquet_images(fs: pafs.FileSystem, path: str, rows: np.ndarray) -> list[bytes]:
    """The ``image`` column's values at these rows of a Parquet file, reading only the row
    groups that hold them."""
    import pyarrow.parquet as pq

    try:
        with fs.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            starts = _row_group_starts(pf.metadata)
            groups = np.searchsorted(starts, rows, side="right") - 1
            out: dict[int, bytes] = {}
            for g in np.unique(groups):
                col = pf.read_row_group(int(g), columns=[IMAGE_COLUMN]).column(IMAGE_COLUMN)
                for r in rows[groups == g]:
                    out[int(r)] = col[int(r - starts[g])].as_py()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return [out[int(r)] for r in rows]


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    try:
        with fs.open_input_file(path) as f:
            return bytes(f.read())
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def list_images(folder: str | Path, shape: tuple[int, int, int]) -> ImageFiles:
    """The image files of a folder, as ``trainer.data.read_folder`` takes them (subfolders
    are classes, ``masks`` is not one; else every image is 'normal'), in the same order. A
    channel count of 0 takes the first image's."""
    import pyarrow.fs as pafs

    fs, base = filesystem(folder)
    tables = parquet_files(fs, base)
    if tables is not None:
        return _list_parquet(folder, fs, base, tables, shape)
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
        first = f"{base}/{rows[0][2]}"
        shape = (image_channels(_read(fs, first), first), *shape[1:])
    if shape[0] not in (1, 3):
        raise DataError(f"image folders support 1 or 3 channels, not {shape[0]}")
    return ImageFiles(
        root=str(folder),
        paths=np.array([r[2] for r in rows], dtype=str),
        labels=np.array([r[0] for r in rows], dtype=str),
        sizes=np.array([r[3] for r in rows], dtype=np.int64),
        shape=shape,
    )


def parquet_files(fs: pafs.FileSystem, base: str) -> list[str] | None:
    """The Parquet files of a folder, or the one file named, sorted; None when there are none
    (a folder of image files)."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        return [base] if base.lower().endswith(PARQUET_SUFFIX) else None
    if info.type != pafs.FileType.Directory:
        return None
    found = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    is_table = [i.type == pafs.FileType.File and i.path.lower().endswith(PARQUET_SUFFIX)
                for i in found]  # fmt: skip
    files = sorted(i.path for i, keep in zip(found, is_table, strict=True) if keep)
    return files or None


def _list_parquet(folder: str | Path, fs: pafs.FileSystem, base: str, files: list[str],
                  shape: tuple[int, int, int]) -> ImageFiles:  # fmt: skip
    """The rows of Parquet files, each an image: an ``image`` column of encoded PNG or JPEG
    files, and a ``label`` column of class names (without one, every row is 'normal'); in
    file order, then row order. Only the labels are read here."""
    import pyarrow.parquet as pq

    paths, rows, labels, sizes = [], [], [], []
    for f in files:
        try:
            with fs.open_input_file(f) as fh:
                pf = pq.ParquetFile(fh)
                names, n = pf.schema_arrow.names, pf.metadata.num_rows
                if IMAGE_COLUMN not in names:
                    raise DataError(f"{f}: no '{IMAGE_COLUMN}' column of encoded images")
                if LABEL_COLUMN in names:
                    col = pf.read(columns=[LABEL_COLUMN]).column(LABEL_COLUMN).to_pylist()
                    labels.append(np.array([str(v) for v in col], dtype=str))
                else:
                    labels.append(np.full(n, "normal"))
        except OSError as exc:
            raise DataError(f"cannot read {f}: {exc}") from exc
        rel = str(PurePosixPath(f).relative_to(PurePosixPath(base))) if f != base else ""
        paths.append(np.full(n, rel))
        rows.append(np.arange(n, dtype=np.int64))
        sizes.append(np.full(n, fs.get_file_info(f).size or 0, dtype=np.int64))
    if not sum(len(r) for r in rows):
        raise DataError(f"no rows in the Parquet files under {folder}")
    files_info = ImageFiles(str(folder), np.concatenate(paths), np.concatenate(labels),
                            np.concatenate(sizes), shape, np.concatenate(rows))  # fmt: skip
    if shape[0] == 0:
        first = files_info.subset(np.array([0]))
        data = _parquet_images(fs, _full(base, str(first.paths[0])), first.rows)[0]  # type: ignore[arg-type]
        files_info = replace(files_info, shape=(image_channels(data, str(folder)), *shape[1:]))
    if files_info.shape[0] not in (1, 3):
        raise DataError(f"images support 1 or 3 channels, not {files_info.shape[0]}")
    return files_info


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
        if self.files.rows is not None:
            return self._parquet_dataset(fs, base)
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

    def _parquet_dataset(self, fs: pafs.FileSystem, base: str) -> ray.data.Dataset:
        """Rows of Parquet files: a task a row group, reading it and decoding its rows of the
        training set; the row groups in a new order each epoch."""
        import pyarrow.parquet as pq
        import ray.data

        files, rows = self.files, self.files.rows
        assert rows is not None
        items = []
        for rel in np.unique(files.paths):
            mine = np.flatnonzero(files.paths == rel)
            with fs.open_input_file(_full(base, str(rel))) as fh:
                meta = pq.ParquetFile(fh).metadata
            starts = _row_group_starts(meta)
            groups = np.searchsorted(starts, rows[mine], side="right") - 1
            for g in np.unique(groups):
                at = mine[groups == g]
                codes = None if self.conditions is None else [
                    self.conditions[str(label)] for label in files.labels[at]]  # fmt: skip
                items.append({"path": _full(base, str(rel)), "rows": rows[at].tolist(),
                              "c": codes})  # fmt: skip
        ds = ray.data.from_items(items, override_num_blocks=len(items)).randomize_block_order()
        return ds.map_batches(decode_parquet_rows,  # type: ignore[arg-type]
                              batch_format="numpy", batch_size=1, num_cpus=TASK_CPUS,
                              fn_kwargs={"root": files.root, "shape": files.shape})  # fmt: skip

    def batches(self, epoch: int, batch: int, rank: int) -> Iterator[tuple[Any, Any]]:
        raise RuntimeError("a streamed training set is read in Ray Train workers (ShardBatches)")


def decode_parquet_rows(
    batch: dict[str, np.ndarray], root: str, shape: tuple[int, int, int]
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data's task for a Parquet row group: its training rows (``path``, ``rows``, and
    their condition indices ``c`` or None) decoded, 64 at a time."""
    fs, _ = filesystem(root)
    for path, rows, codes in zip(batch["path"], batch["rows"], batch["c"], strict=True):
        wanted = np.asarray(rows, dtype=np.int64)
        data = _parquet_images(fs, str(path), wanted)
        for a in range(0, len(wanted), 64):
            chunk = zip(data[a : a + 64], wanted[a : a + 64], strict=True)
            x = np.stack([read_image_bytes(d, f"{path}#{r}", shape) for d, r in chunk])
            out = {"x": x}
            if codes is not None:
                out["c"] = np.asarray(codes[a : a + 64], dtype=np.int64)
            yield out


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

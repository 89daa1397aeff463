"""``vlaewatch explore``: the latent-space views of a checkpoint on a dataset's test images,
each written as a PNG, with the numbers returned as JSON.

Items are named ``test:N`` (the N-th image of the dataset's test partition, the one
``vlaewatch evaluate`` uses) or by an image file (PNG, JPEG, or NPY of one image). A
conditional model encodes a test item under the condition of its class when the class is one
of the model's conditions, and under its best condition otherwise (as the scorer does for
an item without a mapped line).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.settings import Settings
from vlaewatch.cli.args import UsageError, parse_size
from vlaewatch.cli.console import err
from vlaewatch.cli.data import DataChoice, add_data_args, dataset_of

if TYPE_CHECKING:
    import numpy as np

    from trainer.data import LabelledImages
    from vlae.card import ModelCard
    from vlae.checkpoint import LoadedModel
    from vlae.explore import CodeDtype, MapMethod
    from vlae.views import Items

MAX_STEPS = 64
MAX_IMAGES = 1024


def add_parser(sub: Any) -> None:
    """The ``explore`` command, a subcommand a view, and their flags."""
    from vlae.explore import TSNE_MAX_POINTS

    x = sub.add_parser(
        "explore",
        help="the latent space of a model: map, samples, interpolation, traversal, compression",
    )
    x.set_defaults(run=run)
    xsub = x.add_subparsers(dest="explore_command", required=True)

    m = _add_view(xsub, "latent-map", "2-D map of normal latent means with test items overlaid",
                  "latent-map.png")  # fmt: skip
    m.add_argument("--method", choices=("auto", "tsne", "pca"), default="auto",
                   help=f"auto: t-SNE up to {TSNE_MAX_POINTS:,} points, PCA beyond")  # fmt: skip
    m.add_argument("--n-test", type=int, default=300, help="test items overlaid")
    m.add_argument("--fpr", type=float, default=0.01, help="flag items above this threshold")
    m.add_argument("--size", type=parse_size, default=(480, 640), help="HxW pixels")
    m.add_argument("--seed", type=int, default=0)

    sm = _add_view(xsub, "sample", "images decoded from the prior", "samples.png")
    sm.add_argument("--n", type=int, default=16, help="samples (per condition)")
    sm.add_argument("--condition", help="a conditional model's condition (default: each)")
    sm.add_argument("--seed", type=int, default=0)

    i = _add_view(xsub, "interpolate", "decode the straight latent path between two items",
                  "interpolation.png")  # fmt: skip
    i.add_argument("item_a", help="test:N or an image file")
    i.add_argument("item_b", help="test:N or an image file")
    i.add_argument("--steps", type=int, default=10)

    t = _add_view(xsub, "traverse", "move one latent dimension at a time", "traversal.png")
    t.add_argument("item", nargs="?", help="start item (default: the normal centroid)")
    t.add_argument("--dims", type=_dims, help="dimensions (default: the most used ones)")
    t.add_argument("--n-dims", type=int, default=4, help="how many of the most used dims")
    t.add_argument("--steps", type=int, default=9)
    t.add_argument("--span", type=float, default=3.0,
                   help="each side, in standard deviations of the normal items' means")  # fmt: skip
    t.add_argument("--condition", help="a conditional model's condition at the centroid")

    c = _add_view(xsub, "compress", "encode items to latent codes and back", "compression.png")
    c.add_argument("items", nargs="*", help="test:N or image files (default: --n normal ones)")
    c.add_argument("--n", type=int, default=8, help="normal test items when none are named")
    c.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="how the latent code is stored")  # fmt: skip
    c.add_argument("--store", type=Path,
                   help="rate-distortion table over the models of this store (default: the "
                        "folder holding the checkpoint)")  # fmt: skip


def _add_view(xsub: Any, name: str, help_: str, out: str) -> argparse.ArgumentParser:
    """A view's subcommand with the flags every view takes."""
    p: argparse.ArgumentParser = xsub.add_parser(name, help=help_)
    p.add_argument("--checkpoint", type=Path,
                   help="checkpoint directory, or a model store (default "
                        "VLAEWATCH_MODEL_STORE: its newest version)")  # fmt: skip
    p.add_argument("--version", help="model version in the store")
    add_data_args(p, None)
    p.add_argument("--out", type=Path, default=Path(out), help=f"PNG to write ({out})")
    p.add_argument("--json", type=Path, help="also write the JSON result here")
    p.add_argument("--scale", type=int, default=2, help="upscaling of image tiles (1-16)")
    return p


def _dims(text: str) -> list[int]:
    try:
        return [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give latent dimensions like 0,3,7") from None


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """``vlaewatch explore VIEW``: the view's PNG written to ``--out``; its numbers returned."""
    from vlae.checkpoint import load_checkpoint, resolve_checkpoint

    if not 1 <= args.scale <= 16:
        raise UsageError("--scale: 1 to 16")
    for name in ("steps", "n", "n_test", "n_dims"):
        value = getattr(args, name, None)
        if value is not None and not 1 <= value <= MAX_IMAGES:
            raise UsageError(f"--{name.replace('_', '-')}: 1 to {MAX_IMAGES}")
    source = args.checkpoint or settings.store_path
    loaded = load_checkpoint(resolve_checkpoint(source, args.version))
    cmd = args.explore_command
    data_choice = DataChoice.from_args(args)
    test = None if cmd == "sample" else dataset_of(data_choice, settings, loaded.card).test
    try:
        png, data = _view(args, loaded, test)
    except ValueError as exc:  # a request that does not fit the model
        raise UsageError(str(exc)) from exc
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    result = {"command": f"explore {cmd}", "model_version": loaded.version,
              "png": str(args.out), **data}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def _view(args: argparse.Namespace, loaded: LoadedModel, test: Any) -> tuple[bytes, dict[str, Any]]:
    from vlae import views

    cmd = args.explore_command
    if cmd in ("interpolate", "traverse") and not 2 <= args.steps <= MAX_STEPS:
        raise UsageError(f"--steps: 2 to {MAX_STEPS}")
    if cmd == "latent-map":
        h, w = args.size
        return latent_map(loaded, test, args.n_test, args.method, args.fpr, (w, h), args.seed)
    if cmd == "sample":
        return views.sample(loaded, args.n, args.condition, args.seed, args.scale)
    if cmd == "interpolate":
        items = resolve_items(loaded, [args.item_a, args.item_b], test)
        return views.interpolate(loaded, items, args.steps, args.scale)
    if cmd == "traverse":
        start = resolve_items(loaded, [args.item], test) if args.item else None
        return views.traverse(loaded, start, args.dims, args.n_dims, args.steps, args.span,
                              args.scale, args.condition)  # fmt: skip
    return _compress(args, loaded, test)


def _compress(
    args: argparse.Namespace, loaded: LoadedModel, test: LabelledImages
) -> tuple[bytes, dict[str, Any]]:
    """The items' codes and reconstructions, and a rate-distortion table over the store."""
    from vlae import views

    specs = args.items or _normal_test_items(loaded.card, test, args.n)
    png, data = views.compress(loaded, resolve_items(loaded, specs, test), args.dtype, args.scale)
    store = args.store or loaded.path.parent
    idx = [int(n[5:]) for n in _normal_test_items(loaded.card, test, 200)]
    data["rate_distortion"] = rate_distortion(
        Path(store), test.images[idx], test.labels[idx], args.dtype
    )
    data["rate_distortion_store"] = str(store)
    for row in data["rate_distortion"]:
        err(f"latent {row['latent_dim']:4d}  {row['code_bytes']:6d} B  ratio "
            f"{row['ratio']:7.2f}  mse {row['mse']:.4f}  PSNR {row['psnr_db']:5.2f} dB  "
            f"{row['model_version']}")  # fmt: skip
    return png, data


def _normal_test_items(card: ModelCard, test: LabelledImages, n: int) -> list[str]:
    normal = set(card.normal_classes)
    idx = [i for i, lab in enumerate(test.labels.astype(str)) if lab in normal][:n]
    return [f"test:{i}" for i in idx]


def _read_file(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    import numpy as np

    from trainer.data import DataError, read_image

    if path.suffix.lower() != ".npy":
        return read_image(path, shape)  # type: ignore[arg-type]
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] == shape[0] and arr.shape[0] != shape[0]:
        arr = arr.transpose(2, 0, 1)
    if tuple(arr.shape) != shape:
        raise DataError(f"{path}: shape {list(arr.shape)} is not the model's {list(shape)}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr * (255 if arr.max() <= 1 else 1)), 0, 255).astype(np.uint8)
    return arr


def resolve_items(loaded: LoadedModel, specs: list[str], test: LabelledImages) -> Items:
    """``test:N`` or image-file item specs as images and conditions."""
    import numpy as np

    from trainer.data import DataError
    from vlae.views import Items, conditions_of

    shape = loaded.card.image_shape
    images, conds = [], []
    for spec in specs:
        if spec.startswith("test:"):
            try:
                i = int(spec[5:])
                image, label = test.images[i], test.labels[i]
            except (ValueError, IndexError):
                raise DataError(
                    f"item {spec!r}: test has items test:0..test:{len(test) - 1}"
                ) from None
            images.append(image)
            conds.append(conditions_of(loaded, np.array([label]))[0])
        else:
            path = Path(spec)
            if not path.is_file():
                raise DataError(f"item {spec!r} is neither test:N nor an image file")
            images.append(_read_file(path, shape))
            conds.append(-1)
    return Items(list(specs), np.stack(images), np.array(conds, np.int64))


def latent_map(
    loaded: LoadedModel, test: LabelledImages, n_test: int, method: MapMethod,
    fpr: float, size: tuple[int, int], seed: int = 0,
) -> tuple[bytes, dict[str, Any]]:  # fmt: skip
    """Normal calibration latents with ``n_test`` test items overlaid (normal / anomalous by
    their true class), those above the conformal threshold at ``fpr`` flagged."""
    import numpy as np

    from vlae.score import score_images
    from vlae.views import Items, conditions_of, map_view

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(test), size=min(n_test, len(test)), replace=False))
    images, labels = test.images[idx], test.labels[idx].astype(str)
    normal = list(loaded.card.normal_classes)
    conds = conditions_of(loaded, labels)
    scores = score_images(loaded.model, images, conds if loaded.conditions else None).score
    cal = np.sort(loaded.calibration["score"].to_numpy())
    rank = min(len(cal), int(np.ceil((len(cal) + 1) * (1 - fpr))))
    threshold = float(cal[rank - 1])
    groups = ["normal (test)" if lab in normal else "anomalous (test)" for lab in labels]
    items = Items([f"test:{i}" for i in idx], images, conds)
    title = f"model {loaded.version}: latent means, flagged: score > {threshold:.3g} ({fpr:g})"
    png, data = map_view(loaded, items, groups, scores > threshold, method, size, title)
    return png, {**data, "threshold": threshold, "fpr": fpr}


def rate_distortion(
    store: Path, images: np.ndarray, labels: np.ndarray, dtype: CodeDtype
) -> list[dict[str, Any]]:
    """Compression ratio and reconstruction error of every model in the store whose image
    shape fits, on the same images, by latent size."""
    from vlae import explore
    from vlae.checkpoint import CheckpointError, list_versions, load_checkpoint
    from vlae.views import conditions_of

    rows = []
    for stored in list_versions(store):
        if stored.card.image_shape != images.shape[1:]:
            continue
        try:
            loaded = load_checkpoint(stored.path)
        except CheckpointError:
            continue  # a damaged version is not a point on the curve
        result = explore.compress(loaded.model, images, conditions_of(loaded, labels), dtype)
        s = result.summary()
        rows.append({"model_version": loaded.version, "variant": loaded.card.variant,
                     "normal_classes": loaded.card.normal_classes,
                     **{k: s[k] for k in ("latent_dim", "code_bytes", "ratio", "mse",
                                          "psnr_db")}})  # fmt: skip
    return sorted(rows, key=lambda r: (r["latent_dim"], r["mse"]))

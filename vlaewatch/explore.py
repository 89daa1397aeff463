"""``vlaewatch explore``: the latent-space views of a checkpoint on a dataset's test images,
each written as a PNG, with the numbers returned as JSON.

Items are named ``test:N`` (the N-th image of the dataset's test partition, the one
``vlaewatch evaluate`` uses) or by an image file (PNG, JPEG, or NPY of one image). A
conditional model encodes a test item under the condition of its class when the class is one
of the model's conditions, and under its best condition otherwise (as the scorer does for
an item without a mapped line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainer.data import DataError, LabelledImages, read_image
from vlae import explore
from vlae.checkpoint import CheckpointError, LoadedModel, list_versions, load_checkpoint
from vlae.views import Items, compress, conditions_of, interpolate, map_view, sample, traverse

__all__ = ["compress", "interpolate", "latent_map", "rate_distortion", "resolve_items",
           "sample", "traverse"]  # fmt: skip

MAX_STEPS = 64
MAX_IMAGES = 1024


def _read_file(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    if path.suffix.lower() != ".npy":
        return read_image(path, shape)
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
    shape = tuple(int(x) for x in loaded.card["image_shape"])
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
            images.append(_read_file(path, shape))  # type: ignore[arg-type]
            conds.append(-1)
    return Items(list(specs), np.stack(images), np.array(conds, np.int64))


def latent_map(
    loaded: LoadedModel, test: LabelledImages, n_test: int, method: explore.MapMethod,
    fpr: float, size: tuple[int, int], seed: int = 0,
) -> tuple[bytes, dict[str, Any]]:  # fmt: skip
    """Normal calibration latents with ``n_test`` test items overlaid (normal / anomalous by
    their true class), those above the conformal threshold at ``fpr`` flagged."""
    from vlae.score import score_images

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(test), size=min(n_test, len(test)), replace=False))
    images, labels = test.images[idx], test.labels[idx].astype(str)
    normal = [str(c) for c in loaded.card["normal_classes"]]
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
    store: Path, images: np.ndarray, labels: np.ndarray, dtype: explore.CodeDtype
) -> list[dict[str, Any]]:
    """Compression ratio and reconstruction error of every model in the store whose image
    shape fits, on the same images, by latent size."""
    rows = []
    shape = list(images.shape[1:])
    for card in list_versions(store):
        if list(card.get("image_shape", [])) != shape:
            continue
        try:
            loaded = load_checkpoint(card["path"])
        except CheckpointError:
            continue  # a damaged version is not a point on the curve
        result = explore.compress(loaded.model, images, conditions_of(loaded, labels), dtype)
        s = result.summary()
        rows.append({"model_version": loaded.version, "variant": card.get("variant"),
                     "normal_classes": card.get("normal_classes"),
                     **{k: s[k] for k in ("latent_dim", "code_bytes", "ratio", "mse",
                                          "psnr_db")}})  # fmt: skip
    return sorted(rows, key=lambda r: (r["latent_dim"], r["mse"]))

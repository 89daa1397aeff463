"""The one image reader: how a file becomes model pixels, in training, in service and in the
explorer alike, so a model never sees other pixels in service than it was trained on.

Accepted: PNG and JPEG files, NPY arrays (uint8, or float in [0, 1]), 8-bit grey or colour.
Refused, with a reason: alpha channels, 16- and 32-bit images, other formats, animations.
Images must have the model's channel count and size (unless resizing is asked for: training
folders and deployments that resize, both bilinear). Guards: byte and pixel limits checked
before decoding (no decompression bombs), single-frame only, NaN/inf rejected. Pillow decodes
every PNG and JPEG: a hand-written PNG reader gained 1.2x at 64 x 64 grey and 1.03x at
128 x 128 colour (``python -m bench.fastpaths``, bench/results/fastpaths.md).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np

NPY_MAGIC = b"\x93NUMPY"


class InputError(ValueError):
    """An item that cannot be scored; ``status`` is the HTTP status that fits."""

    def __init__(self, reason: str, status: int = 422) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Input limits (413 when exceeded)."""

    max_request_bytes: int = 64 * 1024 * 1024
    max_items: int = 1024
    max_image_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096  # decoded width x height
    resize: bool = False  # resize images of another size instead of refusing them


def _check_pixels(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError("image contains NaN or inf")
        if arr.min() < 0 or arr.max() > 1:
            raise InputError("float pixels must be in [0, 1]")
        return np.rint(arr * 255).astype(np.uint8)
    if arr.dtype.kind in "iu":
        if arr.min() < 0 or arr.max() > 255:
            raise InputError(f"{arr.dtype} pixels must be in [0, 255]")
        return arr.astype(np.uint8)
    raise InputError(f"unsupported array dtype {arr.dtype}")


def _to_chw(arr: np.ndarray, shape: tuple[int, int, int], limits: Limits) -> np.ndarray:
    """One image (H, W) or (H, W, C) to uint8 (C, H, W) of the model's shape."""
    c, h, w = shape
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise InputError(f"an image must be HxW or HxWxC, got shape {list(arr.shape)}")
    if 0 in arr.shape:
        raise InputError(f"an image has no pixels: shape {list(arr.shape)}")
    if arr.shape[2] != c:
        raise InputError(f"image has {arr.shape[2]} channel(s); the model takes {c}")
    arr = _check_pixels(arr)
    if arr.shape[:2] != (h, w):
        if not limits.resize:
            raise InputError(f"image is {arr.shape[0]}x{arr.shape[1]}; the model takes {h}x{w}")
        arr = _resize(arr, h, w)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _resize(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    if arr.shape[2] == 1:
        im = Image.fromarray(arr[:, :, 0]).resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(im)[:, :, None]
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR))


def _npy_header(f: io.BytesIO) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an NPY file's header declares; ``f`` is left where the data starts."""
    major, _ = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if major == 1
            else np.lib.format.read_array_header_2_0)  # fmt: skip
    shape, _, dtype = read(f)
    return shape, dtype


def _check_npy_header(data: bytes) -> None:
    """Refuse an NPY file whose header does not parse, holds objects, or declares more data
    than the file holds, before numpy allocates the array: a 20-byte header can ask for 730 GiB."""
    f = io.BytesIO(data)
    try:
        shape, dtype = _npy_header(f)
    except Exception as exc:  # numpy's header parser raises many kinds on damaged bytes
        raise InputError(f"cannot read NPY array: {exc}") from None
    if dtype.hasobject:
        raise InputError("cannot read NPY array: it holds Python objects")
    if math.prod(shape) * dtype.itemsize > len(data) - f.tell():
        raise InputError("cannot read NPY array: its header declares more data than it holds")


def load_npy(data: bytes, limits: Limits) -> np.ndarray:
    """An NPY payload as an array; no pickled objects."""
    if len(data) > limits.max_request_bytes:
        raise InputError(f"NPY body larger than {limits.max_request_bytes} bytes", 413)
    _check_npy_header(data)
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot read NPY array: {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise InputError("NPY body must hold one array")
    return arr


def split_batch(arr: np.ndarray, shape: tuple[int, int, int], limits: Limits) -> list[np.ndarray]:
    """An NPY batch (N, H, W[, C]), or a single image, as a list of per-item arrays. The shape
    is checked before anything iterates: an array with no pixels costs nothing to load, and
    ``(10**7, 0, 0)`` took the replica's event loop 5 s to split."""
    c = shape[0]
    single = arr.ndim == 2 or (arr.ndim == 3 and c > 1 and arr.shape[-1] == c)
    if not single and arr.ndim not in (3, 4):
        raise InputError(f"expected an array N x H x W[x C], got shape {list(arr.shape)}")
    if 0 in arr.shape:
        raise InputError(f"an array with an empty dimension: shape {list(arr.shape)}")
    if single:
        return [arr]
    if len(arr) > limits.max_items:
        raise InputError(f"{len(arr)} images; at most {limits.max_items}", 413)
    if arr.shape[1] * arr.shape[2] > limits.max_pixels:
        raise InputError(f"image larger than {limits.max_pixels} pixels", 413)
    return list(arr)


def decode_array(arr: np.ndarray, shape: tuple[int, int, int], limits: Limits) -> np.ndarray:
    """One image array to uint8 (C, H, W)."""
    if arr.dtype == np.uint8 and shape[0] == 1 and arr.shape == shape[1:]:
        return arr[None]  # already what the model takes (the common NPY batch item): a view
    if arr.ndim >= 2 and arr.shape[0] * arr.shape[1] > limits.max_pixels:
        raise InputError(f"image larger than {limits.max_pixels} pixels", 413)
    return _to_chw(arr, shape, limits)


def decode_image(data: bytes, shape: tuple[int, int, int], limits: Limits) -> np.ndarray:
    """One PNG, JPEG or NPY file to uint8 (C, H, W) of the model's shape."""
    if not data:
        raise InputError("empty file")
    if len(data) > limits.max_image_bytes:
        raise InputError(f"file larger than {limits.max_image_bytes} bytes", 413)
    if data.startswith(NPY_MAGIC):
        arr = load_npy(data, limits)
        if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
            raise InputError("an NPY file part must hold one image")
        return decode_array(arr, shape, limits)
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Only these two parsers ever see a caller's bytes.
            with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as im:
                w, h = im.size
                # The header's size is known before any pixel is decoded.
                check_declared(h, w, shape, limits)
                if getattr(im, "n_frames", 1) > 1:
                    raise InputError("animated images are not supported; send one frame")
                im.load()
                arr = _pil_to_array(im)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError("cannot decode image: not a PNG or JPEG") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError("image too large to decode (decompression bomb guard)", 413) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot decode image: {exc}") from None
    return _to_chw(arr, shape, limits)


def source_size(payload: bytes | np.ndarray, limits: Limits) -> tuple[int, int] | None:
    """The (H, W) of an image as sent (an array, or a PNG, JPEG or NPY file that decoded),
    read from its header without decoding it again; None if it has none."""
    if isinstance(payload, np.ndarray):
        return (int(payload.shape[0]), int(payload.shape[1])) if payload.ndim >= 2 else None
    try:
        if payload.startswith(NPY_MAGIC):
            shape = _npy_header(io.BytesIO(payload))[0]
            return (int(shape[0]), int(shape[1])) if len(shape) >= 2 else None
        from PIL import Image

        with Image.open(io.BytesIO(payload), formats=("PNG", "JPEG")) as im:
            return int(im.size[1]), int(im.size[0])
    except (OSError, ValueError, SyntaxError):
        return None


def check_declared(h: int, w: int, shape: tuple[int, int, int], limits: Limits) -> None:
    """Refuse an image by the size its header declares, before a pixel is decoded: larger
    than ``max_pixels``, or (without ``resize``) not the model's size."""
    if w * h > limits.max_pixels:
        raise InputError(f"image of {w}x{h} exceeds {limits.max_pixels} pixels", 413)
    if not limits.resize and (h, w) != shape[1:]:
        raise InputError(f"image is {h}x{w} (by its header); the model takes "
                         f"{shape[1]}x{shape[2]}")  # fmt: skip


def _pil_to_array(im: object) -> np.ndarray:
    from PIL import Image

    assert isinstance(im, Image.Image)
    mode = im.mode
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise InputError(f"{mode} images (16/32-bit) are not supported; send 8-bit")
    elif mode not in ("L", "RGB", "LA", "RGBA"):
        raise InputError(f"unsupported colour mode {mode}")
    if im.mode in ("LA", "RGBA"):
        raise InputError("images with an alpha channel are not supported")
    return np.asarray(im, dtype=np.uint8)


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1], the models' input range."""
    return images.astype(np.float32) / 255.0

"""Hand-written fast paths taken out of the product, kept here so ``bench.fastpaths`` can time
them against the product's plain paths on any machine.

None gained 2x on its whole path at the inspection sizes (bench/results/fastpaths.md):

- ``plain_png``: a PNG chunk and checksum reader that skipped Pillow's ``Image.open`` for
  8-bit grey or RGB PNGs (was ``vlae.images._plain_png``);
- ``tune_decoder``: each transposed convolution timed three ways at load and the fastest kept
  by swapping the layer's class (was ``vlae.inference``);
- ``keep_batch_memory``: glibc's mmap and trim thresholds pinned with ``mallopt`` (was
  ``vlae.allocator``).
"""

from __future__ import annotations

import ctypes
import struct
import sys
import time
import zlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlae.images import Limits, check_declared

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLAIN_PNG_MODES = {(8, 0): "L", (8, 2): "RGB"}  # (bit depth, colour type) -> Pillow mode
PLAIN_PNG_MAX_PIXELS = 1 << 24


def _png_chunks(data: bytes) -> list[tuple[bytes, memoryview]] | None:
    """Every chunk of a PNG as (kind, body), or None when a length or checksum is off."""
    view, pos, chunks = memoryview(data), 8, []
    while pos + 12 <= len(data):
        n, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + n
        if end + 4 > len(data):
            return None
        if zlib.crc32(view[pos + 4 : end]) != int.from_bytes(view[end : end + 4], "big"):
            return None
        chunks.append((kind, view[pos + 8 : end]))
        pos = end + 4
    return chunks if pos == len(data) else None


def plain_png(data: bytes, shape: tuple[int, int, int], limits: Limits) -> np.ndarray | None:
    """A plain PNG (chunks IHDR, IDAT..., IEND, every checksum right) as an (H, W[, C]) uint8
    array, or None: anything else takes ``Image.open``."""
    if len(data) < 57 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    size, _, w, h, depth, colour, method, filtering, interlace = struct.unpack_from(
        ">I4sIIBBBBB", data, 8
    )
    mode = PLAIN_PNG_MODES.get((depth, colour))
    if size != 13 or mode is None or method or filtering or interlace or not w or not h:
        return None
    if zlib.crc32(data[12:29]) == int.from_bytes(data[29:33], "big"):  # a sound header
        check_declared(h, w, shape, limits)
    if w * h > min(limits.max_pixels, PLAIN_PNG_MAX_PIXELS):
        return None
    chunks = _png_chunks(data)
    kinds = [kind for kind, _ in chunks or []]
    if not chunks or kinds[-1] != b"IEND" or set(kinds[1:-1]) != {b"IDAT"}:
        return None
    from PIL import Image

    try:
        im = Image.frombytes(mode, (w, h), b"".join(body for _, body in chunks[1:-1]), "zip", mode)
    except (ValueError, OSError):
        return None
    return np.asarray(im, dtype=np.uint8)


IMPLS = ("default", "channels_last", "gemm_fold")
TUNE_BATCH = 64


class TunedConvTranspose2d(nn.ConvTranspose2d):
    """A ``ConvTranspose2d`` computed the way ``impl`` names (``IMPLS``)."""

    impl: str = "default"

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        if self.impl == "channels_last":
            return super().forward(input.contiguous(memory_format=torch.channels_last),
                                   output_size)  # fmt: skip
        if self.impl == "gemm_fold" and output_size is None:
            return gemm_fold(self, input)
        return super().forward(input, output_size)


def foldable(layer: nn.ConvTranspose2d) -> bool:
    """Whether ``gemm_fold`` computes this layer: one group, no dilation, no output padding."""
    return (
        layer.groups == 1
        and tuple(layer.dilation) == (1, 1)
        and tuple(layer.output_padding) == (0, 0)
        and layer.padding_mode == "zeros"
        and isinstance(layer.padding, tuple)
    )


def gemm_fold(layer: nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """The layer as one matrix product and a ``fold`` that adds the overlapping windows."""
    n, c_in, h, w = x.shape
    kh, kw = layer.kernel_size
    sh, sw = layer.stride
    ph, pw = (int(p) for p in layer.padding)  # a tuple of ints: ``foldable``
    cols = x.permute(0, 2, 3, 1).reshape(n, h * w, c_in) @ layer.weight.reshape(c_in, -1)
    size = ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)
    out = F.fold(cols.transpose(1, 2), size, (kh, kw), stride=(sh, sw), padding=(ph, pw))
    if layer.bias is not None:
        out = out + layer.bias.view(1, layer.out_channels, 1, 1)
    return out


def _best_seconds(fn: Callable[[], Tensor], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def tune_layer(layer: nn.ConvTranspose2d, x: Tensor, repeats: int = 3) -> str:
    """Make ``layer`` a ``TunedConvTranspose2d`` using the fastest way for input like ``x``
    whose output matches the default's; returns the way chosen."""
    layer.__class__ = TunedConvTranspose2d
    assert isinstance(layer, TunedConvTranspose2d)
    times: dict[str, float] = {}
    reference: Tensor | None = None
    for impl in IMPLS:
        if impl == "gemm_fold" and not foldable(layer):
            continue
        layer.impl = impl
        out = layer(x)
        if reference is None:
            reference = out
        elif not torch.allclose(out, reference, rtol=1e-4, atol=1e-5):
            continue
        times[impl] = _best_seconds(lambda: layer(x), repeats)
    layer.impl = min(times, key=times.__getitem__)
    return layer.impl


@torch.no_grad()
def tune_decoder(decoder: nn.Sequential, input_shape: tuple[int, ...]) -> list[str]:
    """Tune every ``ConvTranspose2d`` of a CPU ``decoder`` at the shapes a ``TUNE_BATCH``-image
    batch meets; the ways chosen, in order."""
    param = next(decoder.parameters(), None)
    if param is None or param.device.type != "cpu":
        return []
    x = torch.rand(TUNE_BATCH, *input_shape, dtype=param.dtype)
    chosen = []
    for module in decoder:
        if isinstance(module, nn.ConvTranspose2d):
            chosen.append(tune_layer(module, x))
        x = module(x)
    return chosen


# glibc's mallopt parameters (malloc.h), and where its dynamic rule tops out on 64-bit Linux.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def keep_batch_memory() -> bool:
    """Pin glibc's mmap and trim thresholds for this process; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )

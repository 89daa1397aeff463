"""Faster CPU inference for a loaded model's transposed convolutions, with the same numbers.

A CPU ``ConvTranspose2d`` runs through oneDNN by default. On the 2-CPU bench machine that was
the slowest of three equivalent ways for both layers of the default ConvVLAE's decoder: a batch
of 60 took 4.35 ms in the 64-to-32-channel layer against 2.92 ms with its input in channels-last
order, and 2.92 ms in the 32-to-1-channel layer against 0.79 ms as one matrix product and a
``fold`` (col2im); the decoder was half of the scoring forward pass (bench/README.md, "Where
the time goes", step 15). Which way wins depends on the CPU, the layer and the threads, so a
loaded model times the three on each layer at its own input shape and keeps the fastest. The
outputs agree to float32 rounding (about 1e-7 of a score); a way that disagreed more would not
be chosen. Parameters, their names and the state dict are unchanged: a tuned layer is an
``nn.ConvTranspose2d`` whose ``forward`` takes another route.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMPLS = ("default", "channels_last", "gemm_fold")
TUNE_BATCH = 64  # a batch the replica sees under load (frames reads hold tens of images)


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
    """The layer as one matrix product (every input pixel times the kernel, for all output
    channels) and a ``fold`` that adds the overlapping kernel windows into the output."""
    n, c_in, h, w = x.shape
    kh, kw = layer.kernel_size
    sh, sw = layer.stride
    ph, pw = (int(p) for p in layer.padding)  # a tuple of ints: ``foldable``
    c_out = layer.out_channels
    cols = x.permute(0, 2, 3, 1).reshape(n, h * w, c_in) @ layer.weight.reshape(c_in, -1)
    size = ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)
    out = F.fold(cols.transpose(1, 2), size, (kh, kw), stride=(sh, sw), padding=(ph, pw))
    if layer.bias is not None:
        out = out + layer.bias.view(1, c_out, 1, 1)
    return out


def _seconds(fn: Callable[[], Tensor], repeats: int) -> float:
    """Best of ``repeats`` timings of ``fn`` (already called once: the caller's check of its
    output is its warm-up)."""
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
        times[impl] = _seconds(lambda: layer(x), repeats)
    layer.impl = min(times, key=times.__getitem__)
    return layer.impl


@torch.no_grad()
def tune_decoder(decoder: nn.Sequential, input_shape: tuple[int, ...]) -> list[str]:
    """Tune every ``ConvTranspose2d`` of ``decoder`` at the shapes it meets for a
    ``TUNE_BATCH``-image batch of ``input_shape`` items; the ways chosen, in order."""
    param = next(decoder.parameters(), None)
    if param is None or param.device.type != "cpu":
        return []  # GPUs pick their own kernels (cuDNN)
    x = torch.rand(TUNE_BATCH, *input_shape, dtype=param.dtype)
    chosen = []
    for module in decoder:
        if isinstance(module, nn.ConvTranspose2d):
            chosen.append(tune_layer(module, x))
        x = module(x)
    return chosen

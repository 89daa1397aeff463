"""The tuned transposed convolutions compute what the default ones do."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from vlae.checkpoint import load_checkpoint, save_checkpoint
from vlae.inference import (
    IMPLS,
    TunedConvTranspose2d,
    foldable,
    gemm_fold,
    tune_decoder,
    tune_layer,
)
from vlae.model import ConvVLAE, ConvVLAEConfig, build_model


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride", "padding", "size"),
    [(64, 32, 4, 2, 1, (7, 7)), (32, 1, 4, 2, 1, (14, 14)), (3, 5, 3, 2, 1, (5, 7)),
     (4, 2, 5, 3, 0, (3, 4)), (2, 3, 4, 2, 1, (1, 1))],
)  # fmt: skip
def test_every_way_matches_the_default(
    c_in: int, c_out: int, kernel: int, stride: int, padding: int, size: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding).eval()
    x = torch.rand(6, c_in, *size)
    with torch.no_grad():
        expected = layer(x)
        tuned = copy.deepcopy(layer)
        tuned.__class__ = TunedConvTranspose2d
        assert isinstance(tuned, TunedConvTranspose2d)
        for impl in IMPLS:
            tuned.impl = impl
            out = tuned(x)
            assert out.shape == expected.shape, impl
            assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5), impl
        assert torch.allclose(gemm_fold(layer, x), expected, rtol=1e-5, atol=1e-5)


def test_a_layer_gemm_fold_cannot_compute_keeps_another_way() -> None:
    torch.manual_seed(0)
    for layer in (nn.ConvTranspose2d(4, 4, 3, 2, 1, output_padding=1),
                  nn.ConvTranspose2d(4, 4, 3, 1, 1, dilation=2),
                  nn.ConvTranspose2d(4, 4, 3, 2, 1, groups=2)):  # fmt: skip
        assert not foldable(layer)
        x = torch.rand(3, 4, 6, 6)
        with torch.no_grad():
            expected = layer(x)
            assert tune_layer(layer, x) in ("default", "channels_last")
            assert torch.allclose(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_a_tuned_model_scores_as_before_with_the_same_state() -> None:
    torch.manual_seed(0)
    model = build_model(ConvVLAEConfig()).eval()
    assert isinstance(model, ConvVLAE)
    tuned = copy.deepcopy(model)
    chosen = tune_decoder(tuned.decoder, tuned.feat_shape)
    assert len(chosen) == 2 and set(chosen) <= set(IMPLS)
    assert all(isinstance(m, TunedConvTranspose2d) for m in tuned.decoder
               if isinstance(m, nn.ConvTranspose2d))  # fmt: skip
    x = torch.rand(9, 1, 28, 28)
    with torch.no_grad():
        (r0, k0), (r1, k1) = model.anomaly_score(x), tuned.anomaly_score(x)
    assert torch.allclose(r1, r0, rtol=1e-5) and torch.allclose(k1, k0, rtol=1e-5)
    # The same parameters under the same names: checkpoints and hashes do not change.
    assert tuned.state_dict().keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(tuned.state_dict()[name], value)
    # A tuned layer still trains (every way is differentiable).
    tuned.train()
    logits, _, _ = tuned(x)
    logits.sum().backward()
    assert all(p.grad is not None for p in tuned.decoder.parameters())


def test_a_loaded_conv_checkpoint_is_tuned(tmp_path: Path) -> None:
    cfg = ConvVLAEConfig(channels=(8, 16), hidden=32, latent_dim=4)
    model = build_model(cfg)
    calibration = pd.DataFrame({"recon": [1.0], "kl": [1.0], "complexity": [0.0], "score": [2.0]})
    path = save_checkpoint(tmp_path / "ckpt", cfg,
                           {"model": model.state_dict(), "denoiser": model.state_dict()}, {},
                           calibration)  # fmt: skip
    loaded = load_checkpoint(path)
    assert loaded.denoiser is not None
    for m in (loaded.model, loaded.denoiser):
        layers = [x for x in m.modules() if isinstance(x, nn.ConvTranspose2d)]
        assert len(layers) == 2
        assert all(isinstance(x, TunedConvTranspose2d) and x.impl in IMPLS for x in layers)

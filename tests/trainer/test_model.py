from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from trainer.model import (
    VLAE,
    ConditionalVLAE,
    ConvVLAE,
    ConvVLAEConfig,
    VLAEConfig,
    add_noise,
    bernoulli_nll,
    build_model,
    config_from_dict,
    config_to_dict,
    kl_divergence,
)


def test_mlp_vlae_matches_the_deck_shapes() -> None:
    model = build_model(VLAEConfig())
    assert isinstance(model, VLAE)
    x = torch.rand(5, 1, 28, 28)
    logits, mu, logvar = model(x)
    assert logits.shape == x.shape
    assert mu.shape == logvar.shape == (5, 20)
    assert [m.out_features for m in model.encoder if isinstance(m, torch.nn.Linear)] == [256, 128]
    assert model.decode(mu).min() >= 0 and model.decode(mu).max() <= 1


def test_kl_matches_torch_distributions() -> None:
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch_kl(q, p).sum(dim=1)
    assert torch.allclose(kl_divergence(mu, logvar), expected, atol=1e-5)


def test_recon_is_summed_bce_as_in_the_deck() -> None:
    x = torch.rand(3, 1, 4, 4)
    logits = torch.randn(3, 1, 4, 4)
    deck = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none")
    assert torch.allclose(bernoulli_nll(logits, x), deck.flatten(1).sum(1), atol=1e-4)


def test_anomaly_score_is_deterministic() -> None:
    model = build_model(VLAEConfig(latent_dim=4, hidden=(32,))).eval()
    x = torch.rand(8, 1, 28, 28)
    r1, k1 = model.anomaly_score(x)
    r2, k2 = model.anomaly_score(x)
    assert torch.equal(r1, r2) and torch.equal(k1, k2)
    assert (k1 >= 0).all()


def test_conditional_model_needs_and_uses_conditions() -> None:
    model = build_model(VLAEConfig(num_conditions=3, latent_dim=4, hidden=(32,)))
    assert isinstance(model, ConditionalVLAE)
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(ValueError, match="condition"):
        model(x)
    a = model.anomaly_score(x, torch.tensor([0, 0, 0, 0]))
    b = model.anomaly_score(x, torch.tensor([2, 2, 2, 2]))
    assert not torch.allclose(a[0], b[0])


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 48), (1, 33, 17), (3, 8, 8)])
def test_conv_vlae_any_size_and_channels(shape: tuple[int, int, int]) -> None:
    model = build_model(ConvVLAEConfig(image_shape=shape, batch_norm=True, num_conditions=2))
    assert isinstance(model, ConvVLAE)
    x = torch.rand(2, *shape)
    recon, kl = model.elbo_terms(x, c=torch.tensor([0, 1]))
    assert recon.shape == kl.shape == (2,)
    assert model.decode(torch.zeros(2, 32), torch.tensor([1, 0])).shape == (2, *shape)


@pytest.mark.parametrize(
    "cfg", [VLAEConfig(batch_norm=True, num_conditions=2), ConvVLAEConfig(channels=(8, 16, 32))]
)
def test_config_round_trip(cfg: VLAEConfig | ConvVLAEConfig) -> None:
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_add_noise_stays_in_range() -> None:
    x = torch.rand(10, 1, 8, 8)
    noisy = add_noise(x, 0.5)
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert not torch.equal(noisy, x)

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from vlae.condition import BEST, Condition
from vlae.likelihood import (
    MAP_TERMS,
    bernoulli_kl_map,
    bernoulli_nll,
    combine_score,
    gaussian_map,
    kl_divergence,
    total_variation,
)
from vlae.model import (
    VLAE,
    ConditionalVLAE,
    ConvVLAE,
    ConvVLAEConfig,
    SpatialVLAE,
    SpatialVLAEConfig,
    VLAEConfig,
    add_noise,
    build_model,
    config_from_dict,
    config_to_dict,
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


@pytest.mark.parametrize("value", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_a_perfect_reconstruction_costs_nothing_at_any_pixel_value(value: float) -> None:
    x = torch.full((1, 3, 4, 4), value)
    logits = torch.logit(x.clamp(1e-6, 1 - 1e-6))
    assert torch.allclose(bernoulli_kl_map(logits, x), torch.zeros(1, 4, 4), atol=1e-4)
    assert torch.allclose(gaussian_map(x, x, torch.zeros(3)), torch.zeros(1, 4, 4))
    # Plain BCE does not: its floor is highest at mid-grey (the bias the fair terms remove).
    if 0 < value < 1:
        assert bernoulli_nll(logits, x).item() > 1.0


def test_a_dark_hole_costs_more_than_grey_texture_under_the_fair_terms() -> None:
    grey = torch.full((1, 1, 4, 4), 0.5)
    perfect = torch.zeros_like(grey)  # grey texture, reconstructed exactly
    hole = grey.clone()
    hole[..., 1:3, 1:3] = 0.0
    poor = perfect.clone()
    poor[..., 1:3, 1:3] = torch.logit(torch.tensor(0.2))  # the hole reconstructed badly
    # The Bernoulli bias: the badly reconstructed hole costs less than perfect grey texture.
    assert bernoulli_nll(poor, hole) < bernoulli_nll(perfect, grey)
    assert bernoulli_kl_map(poor, hole).sum() > bernoulli_kl_map(perfect, grey).sum() + 0.5


def test_spatial_vlae_has_a_latent_cell_per_patch_and_round_trips() -> None:
    cfg = SpatialVLAEConfig(image_shape=(3, 32, 48), channels=(8, 16), latent_dim=4)
    model = build_model(cfg)
    assert isinstance(model, SpatialVLAE)
    x = torch.rand(2, 3, 32, 48)
    logits, mu, logvar = model(x)
    assert logits.shape == x.shape and mu.shape == (2, 4, 8, 12)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    terms = model.pixel_terms(x)
    assert terms.shape == (2, len(MAP_TERMS), 32, 48)
    # The KL spread over the pixels sums back to the latent's KL.
    kl = terms[:, MAP_TERMS.index("kl")]
    assert torch.allclose(kl.sum(dim=(1, 2)), kl_divergence(mu, logvar), rtol=1e-4)
    with pytest.raises(ValueError, match="multiples of 4"):
        build_model(SpatialVLAEConfig(image_shape=(1, 30, 32), channels=(8, 16)))


def test_local_score_is_the_maximum_of_the_standardised_map() -> None:
    torch.manual_seed(0)
    cfg = SpatialVLAEConfig(image_shape=(1, 32, 32), channels=(8, 16), latent_dim=4)
    model = build_model(cfg).eval()
    normal = torch.rand(16, 1, 32, 32) * 0.1 + 0.45
    model.set_map_stats(model.pixel_terms(normal))
    x = normal[:2].clone()
    x[1, :, 10:14, 10:14] = 1.0  # a bright 4 x 4 defect
    recon, kl = model.anomaly_maps(x)
    r, k = model.anomaly_score(x)
    assert torch.allclose(r + k, (recon + kl).flatten(1).max(dim=1).values, atol=1e-5)
    assert (r + k)[1] > (r + k)[0] + 3
    peak = int((recon + kl)[1].argmax())
    assert 8 <= peak // 32 <= 15 and 8 <= peak % 32 <= 15  # where the defect is


def test_a_smoothed_patch_is_found_by_its_missing_texture() -> None:
    # A worn patch: the texture is gone. The reconstruction of a smooth patch is as good as of
    # any other, so only the texture term can see it.
    torch.manual_seed(0)
    cfg = SpatialVLAEConfig(image_shape=(1, 32, 32), channels=(8, 16), latent_dim=4,
                            map_norm="pooled")  # fmt: skip
    model = build_model(cfg).eval()
    normal = torch.rand(24, 1, 32, 32) * 0.4 + 0.3
    model.set_map_stats(model.pixel_terms(normal))
    x = torch.rand(2, 1, 32, 32) * 0.4 + 0.3
    x[1, :, 16:26, 4:14] = 0.5  # the texture's own mean: no brighter, no darker
    with torch.no_grad():
        terms = model.pixel_terms(x)[:, MAP_TERMS.index("texture")]
    assert terms[1, 21, 9] > terms[1, 5, 25] + 0.05  # the term is minus the energy
    recon, kl = model.anomaly_maps(x)
    r, k = model.anomaly_score(x)
    assert (r + k)[1] > (r + k)[0] + 3
    peak = int((recon + kl)[1].argmax())
    assert 14 <= peak // 32 <= 27 and 2 <= peak % 32 <= 15


def test_the_defect_head_learns_alone_and_makes_the_score() -> None:
    # The head reads the input beside its (detached) reconstruction: its loss must leave the
    # VLAE's weights alone, and its logit is the recon part of the local score.
    torch.manual_seed(0)
    cfg = SpatialVLAEConfig(image_shape=(1, 16, 16), channels=(8, 16), latent_dim=4, head=4)
    model = build_model(cfg)
    assert model.map_terms[-1] == "defect" and config_from_dict(config_to_dict(cfg)) == cfg
    x = torch.rand(4, 1, 16, 16)
    mask = torch.zeros(4, 16, 16)
    mask[:, 4:8, 4:8] = 1.0
    _, _, head = model.repair_terms(x, x, mask)
    head.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    others = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    assert others and all(p.grad is None for p in others)
    model.eval()
    model.set_map_stats(model.pixel_terms(torch.rand(8, 1, 16, 16)))
    terms = model.pixel_terms(x)
    assert terms.shape == (4, 5, 16, 16)
    z = model._term_maps(terms)
    peak = model.term_peak[-1]
    recon, _ = model.anomaly_maps(x)
    assert torch.allclose(recon, (z[:, -1] - peak[0]) / peak[1], atol=1e-5)


def test_the_kl_weight_scales_the_kl_part_alone_and_older_cards_keep_weight_one() -> None:
    # The default beside a defect head weighs the KL term by 0.5 (trainer.defaults); a card
    # written before the field existed reads as 1, so its model scores as it did.
    torch.manual_seed(0)
    cfg = SpatialVLAEConfig(image_shape=(1, 16, 16), channels=(8, 16), latent_dim=4, head=4)
    old = config_to_dict(cfg)
    del old["kl_weight"]
    assert config_from_dict(old).kl_weight == 1.0
    model = build_model(cfg).eval()
    model.set_map_stats(model.pixel_terms(torch.rand(8, 1, 16, 16)))
    x = torch.rand(3, 1, 16, 16)
    recon, kl = model.anomaly_maps(x)
    half = build_model(dataclasses.replace(cfg, kl_weight=0.5)).eval()
    half.load_state_dict(model.state_dict())
    recon_half, kl_half = half.anomaly_maps(x)
    assert float(kl.detach().max()) > 0  # random weights: some place's KL is above its normal peak
    assert torch.allclose(recon_half, recon) and torch.allclose(kl_half, 0.5 * kl)


def test_too_few_normal_maps_for_per_pixel_statistics_fall_back_to_pooled() -> None:
    cfg = SpatialVLAEConfig(image_shape=(1, 16, 16), channels=(8, 16), map_norm="pixel")
    model = build_model(cfg).eval()
    model.set_map_stats(model.pixel_terms(torch.rand(1, 1, 16, 16)))  # one validation image
    recon, kl = model.anomaly_score(torch.rand(3, 1, 16, 16))
    assert torch.isfinite(recon).all() and torch.isfinite(kl).all()


def test_a_condition_is_an_index_or_best_in_every_encoding() -> None:
    names = ("3", "8")
    assert Condition.named("best", names) == Condition.best() == Condition.from_code(BEST)
    assert Condition.named("8", names) == Condition.of(1) == Condition.from_code(1)
    assert Condition.best().code == BEST and Condition.of(1).code == 1
    assert Condition.of(1).codes(3).tolist() == [1, 1, 1]
    assert torch.equal(Condition.of(1).one_hot(3), torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="not one of"):
        Condition.named("5", names)
    with pytest.raises(ValueError, match="one-hot"):
        Condition.best().one_hot(2)
    with pytest.raises(ValueError, match=">= 0"):
        Condition.of(-1)


def test_the_score_is_the_same_from_arrays_tensors_and_maps() -> None:
    recon, kl, tv = torch.rand(4) * 100, torch.rand(4), torch.rand(4) * 50
    for kind in ("elbo", "elbo_per_tv", "local"):
        t = combine_score(recon, kl, tv, kind)
        a = combine_score(recon.numpy(), kl.numpy(), tv.numpy(), kind)
        assert np.array_equal(t.numpy(), a)
    model = build_model(VLAEConfig(latent_dim=4, hidden=(32,))).eval()
    x = torch.rand(3, 1, 28, 28)
    r, k = model.anomaly_score(x)
    score = combine_score(r, k, total_variation(x), "elbo_per_tv")
    assert torch.allclose(model.score_map(x).sum(dim=(1, 2)), score, rtol=1e-4)

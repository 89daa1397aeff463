"""The model, likelihood, score and training a run takes when none is named, and the
structured corruptions the repairing model is trained on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import trainer.corrupt
from trainer.corrupt import LINES, VISIBLE, _fill, corrupt, noise_level
from trainer.defaults import choose_model, choose_training
from trainer.inspection import good
from trainer.train import TrainArrays, TrainConfig, fit
from vlae.model import ConvVLAEConfig, SpatialVLAEConfig


def test_digits_keep_the_model_measured_best_on_them(digits) -> None:
    cfg, prof = choose_model(digits.train.images[:500])
    assert isinstance(cfg, ConvVLAEConfig) and prof.near_binary
    assert (cfg.likelihood, cfg.score_kind) == ("bernoulli", "elbo_per_tv")
    assert choose_training(cfg).epochs == 20 and not choose_training(cfg).denoising


def test_photographs_get_the_spatial_model_and_the_local_score() -> None:
    texture, texture_prof = choose_model(good("fabric", 64))
    part, part_prof = choose_model(good("pill", 64, size=128))
    for cfg in (texture, part):
        assert isinstance(cfg, SpatialVLAEConfig)
        assert (cfg.likelihood, cfg.score_kind) == ("gaussian", "local")
    # A texture looks the same everywhere; a part in a fixture does not.
    assert not texture_prof.aligned and part_prof.aligned
    assert (texture.map_norm, part.map_norm) == ("pooled", "pixel")
    assert part.image_shape == (3, 128, 128) and part.map_sigma == 2.0
    assert texture.kl_weight == part.kl_weight == 0.5  # beside the defect head
    train = choose_training(part)
    assert train.denoising and train.noise == "structured" and not train.denoiser
    assert train.crop == 64
    # On a part in a fixture the corruptions go mostly onto the part; a texture's stay uniform
    # (centred on its grain's extremes they cost metal's worn patches: bench/README.md).
    assert train.corrupt_on_part and not choose_training(texture).corrupt_on_part
    assert not choose_training(part, corrupt_on_part=False).corrupt_on_part
    # ... and more of them are thin lines (scratches, cracks).
    assert (train.corrupt_lines, choose_training(texture).corrupt_lines) == (0.6, 0.35)


def test_what_the_user_names_wins_over_the_choice() -> None:
    cfg, _ = choose_model(good("wood", 16), arch="conv", score_kind="elbo", latent_dim=7)
    assert isinstance(cfg, ConvVLAEConfig) and cfg.score_kind == "elbo" and cfg.latent_dim == 7
    assert choose_training(cfg, epochs=3).epochs == 3


def test_settings_that_cannot_train_are_refused_before_training() -> None:
    import pytest

    conv, _ = choose_model(good("wood", 4), arch="conv")
    with pytest.raises(ValueError, match="crop"):
        choose_training(conv, crop=16)
    odd, _ = choose_model(good("wood", 4, size=34))
    with pytest.raises(ValueError, match="multiples of 4"):
        choose_training(odd)


def test_corruptions_are_local_seeded_and_leave_the_rest_alone() -> None:
    x = torch.from_numpy(good("tiles", 32).astype(np.float32) / 255)
    torch.manual_seed(0)
    a, mask = corrupt(x, 0.5)
    torch.manual_seed(0)
    b, mask_b = corrupt(x, 0.5)
    assert torch.equal(a, b) and torch.equal(mask, mask_b)  # a run is repeatable
    changed = (a - x).abs().amax(dim=1) > 1e-6  # (N, H, W)
    # The mask (what a defect head learns to find) is where a pixel visibly changed: where the
    # fill moved it by more than VISIBLE, before a blurred fill's noise is put back (which can
    # move a few of those pixels back a little).
    assert mask.sum() > 0 and bool((mask.bool() <= changed).all())
    moved = (a - x).abs().amax(dim=1)[mask.bool()]
    assert float((moved > VISIBLE).float().mean()) > 0.97 and bool((moved > VISIBLE / 4).all())
    touched = changed.flatten(1).any(dim=1)
    assert 0.25 < touched.float().mean() < 0.75  # about half of the images
    # Each corruption is a local region, not the whole image.
    share = changed[touched].flatten(1).float().mean(dim=1)
    assert share.max() < 0.6 and share.min() > 0
    assert a.min() >= 0 and a.max() <= 1


def test_corruptions_land_mostly_on_the_part() -> None:
    # A part (a bright square) on a dark fixture covering 1/16 of the image: uniform centres
    # would hit it 1 time in 16; on_part_centres about ON_PART of the time.
    from trainer.corrupt import ON_PART, on_part_centres

    x = torch.full((400, 3, 64, 64), 0.1)
    x[:, :, 8:24, 40:56] = 0.8
    torch.manual_seed(0)
    c = on_part_centres(x)
    on = ((c[:, 0] >= 6) & (c[:, 0] < 26) & (c[:, 1] >= 38) & (c[:, 1] < 58)).float().mean()
    assert ON_PART - 0.1 < float(on) < ON_PART + 0.15
    assert bool((c >= 0).all()) and bool((c[:, 0] < 64).all()) and bool((c[:, 1] < 64).all())
    # A flat image has nowhere to stand out: uniform.
    flat = on_part_centres(torch.full((200, 1, 32, 32), 0.5))
    assert float(flat[:, 0].std()) > 6
    # Asked for (TrainConfig.corrupt_on_part), it moves the corruptions.
    torch.manual_seed(0)
    a = corrupt(x[:8], 0.5)[1]
    torch.manual_seed(0)
    b = corrupt(x[:8], 0.5, on_part=True)[1]
    assert not torch.equal(a, b)


def test_the_share_of_thin_lines_is_asked_for() -> None:
    # A thin polyline (0.7 to 2.5 pixels wide) leaves almost nothing after a 5 x 5 erosion;
    # a blob (0.5 to 12 % of the image) mostly survives it.
    x = torch.from_numpy(good("tiles", 64).astype(np.float32) / 255)

    def thick(lines: float) -> float:
        torch.manual_seed(0)
        mask = corrupt(x, 1.0, lines=lines)[1]
        core = -F.max_pool2d(-mask[:, None], 5, 1, 2)[:, 0]
        return float((core.flatten(1).sum(1) > 0).float().mean())

    assert thick(0.0) > 0.8 and thick(1.0) < 0.1
    assert 0.3 < thick(0.6) < 0.6 and thick(LINES) > thick(0.6)


def test_a_tint_turns_the_hue_and_keeps_the_brightness() -> None:
    # A stain on a coloured part is mostly a change of hue; a brightness shift does not
    # teach it (pill stains: image AUROC 0.61 -> 0.86 with tints among the fills).
    x = torch.from_numpy(good("tiles", 16).astype(np.float32) / 255)
    torch.manual_seed(0)
    for i in range(len(x)):
        delta = _fill(x, "tint", i) - x[i]
        unclipped = ((x[i] > 0.2) & (x[i] < 0.8)).all(dim=0)
        brightness = delta.mean(dim=0)[unclipped]
        hue = (delta - delta.mean(dim=0)).abs().amax(dim=0)[unclipped]
        assert float(brightness.abs().max()) <= 0.03 + 1e-6
        assert float(hue.min()) >= 0.04 / 2**0.5 - 1e-6  # the smallest turn: 4 %


def test_a_defect_head_needs_structured_corruptions_to_learn_from() -> None:
    cfg = SpatialVLAEConfig(image_shape=(1, 16, 16), channels=(8, 16), latent_dim=4, head=4)
    x = torch.rand(4, 1, 16, 16)
    with pytest.raises(ValueError, match="structured corruptions"):
        fit(cfg, TrainConfig(epochs=1), TrainArrays(x, x[:1]))
    chosen, _ = choose_model(good("fabric", 8))
    assert isinstance(chosen, SpatialVLAEConfig) and chosen.head > 0
    # What vlaewatch train picks for it trains the head: one epoch runs.
    images = torch.from_numpy(good("fabric", 8).astype(np.float32) / 255)
    result = fit(chosen, choose_training(chosen, epochs=1), TrainArrays(images, images[:2]))
    assert any(k.startswith("head.") for k in result.state_dicts["model"])


def test_a_blurred_fill_keeps_the_cameras_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worn patch under a camera is as noisy as the rest of the part. A blurred fill without
    # that noise taught the head to look for missing noise, which real worn patches keep
    # (metal's worn patches: image AUROC 0.856 -> 0.975 with the noise put back).
    torch.manual_seed(0)
    ramp = torch.linspace(0.3, 0.7, 64)
    flat = (ramp.view(1, 1, 1, -1) + 0.1 * ramp.view(1, 1, -1, 1)).repeat(4, 1, 1, 1)
    est = noise_level((flat + 0.01 * torch.randn_like(flat))[0])
    assert est.shape == (1, 1, 1) and 0.0085 < float(est) < 0.0115  # a ramp has no noise

    x = torch.from_numpy(good("metal", 16).astype(np.float32) / 255)
    monkeypatch.setattr("trainer.corrupt.FILLS", ("smooth",))
    torch.manual_seed(1)
    out, mask = corrupt(x, 1.0, lines=0.0)
    real = trainer.corrupt.noise_level
    monkeypatch.setattr("trainer.corrupt.noise_level", lambda img: torch.zeros_like(real(img)))
    torch.manual_seed(1)
    quiet, mask_q = corrupt(x, 1.0, lines=0.0)  # the same draws, no noise put back
    assert torch.equal(mask, mask_q) and int(mask.sum()) > 500
    added = (out - quiet)[:, 0]
    sigma = torch.stack([real(img) for img in x]).view(-1, 1, 1).expand_as(added)
    ratio = float(added[mask > 0].std() / sigma[mask > 0].mean())
    assert 0.5 < ratio < 1.1  # the image's own noise, times the fill's alpha (0.6 to 1)
    moved = ((quiet - x).abs().amax(dim=1, keepdim=True) > 0).float()
    untouched = F.max_pool2d(moved, 9, 1, 4)[:, 0] == 0  # well outside the blob (alpha 0)
    assert bool(untouched.any()) and float(added[untouched].abs().max()) == 0.0

"""The plain training loop and the training job around it (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from trainer.data import split_normal
from trainer.pipeline import DatasetInfo, train_arrays, train_model
from trainer.train import LoopContext, TrainArrays, TrainConfig, fit
from vlae.checkpoint import (
    CheckpointError,
    list_versions,
    load_checkpoint,
    resolve_checkpoint,
)
from vlae.model import ConvVLAEConfig, VLAEConfig

SMALL = VLAEConfig(latent_dim=8, hidden=(64, 32))


def _arrays(n: int = 96) -> TrainArrays:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 1, 28, 28, generator=g) > 0.7).float()
    return TrainArrays(train_x=x[: n - 16], val_x=x[n - 16 :])


def test_fit_lowers_the_loss_and_trains_the_denoiser() -> None:
    result = fit(
        SMALL, TrainConfig(epochs=4, batch_size=16), _arrays(), LoopContext(log=lambda _: None)
    )
    assert set(result.state_dicts) == {"model", "denoiser"}
    history = result.history
    assert len(history) == 4
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"recon", "kl", "val_loss", "denoiser_val_loss", "lr", "eta_s"} <= set(history[0])


@pytest.mark.parametrize("schedule", ["plateau", "cosine", "none"])
def test_lr_schedules(schedule: str) -> None:
    cfg = TrainConfig(epochs=3, batch_size=16, lr_schedule=schedule, denoiser=False)  # type: ignore[arg-type]
    history = fit(SMALL, cfg, _arrays(), LoopContext(log=lambda _: None)).history
    if schedule == "cosine":
        assert history[-1]["lr"] < 1e-3
    else:
        assert history[-1]["lr"] == pytest.approx(1e-3)


def test_resume_continues_from_the_saved_state() -> None:
    cfg = TrainConfig(epochs=3, batch_size=16, denoiser=False)
    states: list[dict] = []
    full = fit(
        SMALL,
        cfg,
        _arrays(),
        LoopContext(log=lambda _: None, report=lambda m, s: states.append(s())),
    )
    logs: list[str] = []
    resumed = fit(SMALL, cfg, _arrays(), LoopContext(log=logs.append, restore=states[1]))
    assert any("resuming at epoch 3/3" in line for line in logs)
    assert len(resumed.history) == 3
    assert resumed.history[:2] == full.history[:2]
    for k, v in full.state_dicts["model"].items():
        assert torch.allclose(v, resumed.state_dicts["model"][k], atol=1e-5), k


def test_only_normal_images_reach_the_training_loop(digits, tmp_path: Path) -> None:
    split = split_normal(digits, ["0"])
    seen: list[TrainArrays] = []

    def spy(model_cfg, cfg, data):
        seen.append(data)
        return fit(model_cfg, cfg, data, LoopContext(log=lambda _: None))

    path = train_model(
        split,
        SMALL,
        TrainConfig(epochs=1),
        DatasetInfo("digits"),
        spy,
        {"kind": "in-process"},
        out=tmp_path / "ckpt",
    )
    data = seen[0]
    fed = {img.tobytes() for img in (data.train_x * 255).round().to(torch.uint8).numpy()}
    fed |= {img.tobytes() for img in (data.val_x * 255).round().to(torch.uint8).numpy()}
    labels = digits.train.labels.astype(str)
    zeros = {img.tobytes() for img in digits.train.images[labels == "0"]}
    others = {img.tobytes() for img in digits.train.images[labels != "0"]}
    others |= {img.tobytes() for img in digits.test.images}
    calibration = {img.tobytes() for img in split.calibration.images}
    assert fed <= zeros
    assert not fed & others
    assert not fed & calibration  # the calibration set is never trained on
    assert len(data.train_x) == len(split.train)

    card = json.loads((path / "model_card.json").read_text())
    assert card["dataset"]["train_class_counts"] == {"0": len(split.train)}
    calib = pd.read_csv(path / "calibration.csv")
    assert len(calib) == len(split.calibration) == card["dataset"]["n_calibration"]
    assert set(calib["label"].astype(str)) == {"0"}
    assert card["score_kind"] == "elbo_per_tv"
    per_tv = (calib["recon"] + calib["kl"]) / (calib["complexity"] + 1)
    assert np.allclose(calib["score"], per_tv, rtol=1e-5)


def test_model_card_and_checkpoint_round_trip(digits, tmp_path: Path) -> None:
    split = split_normal(digits, ["3", "8"])
    cfg = ConvVLAEConfig(latent_dim=6, channels=(8, 16), hidden=32, num_conditions=1)
    run = lambda m, c, d: fit(m, c, d, LoopContext(log=lambda _: None))  # noqa: E731
    path = train_model(
        split,
        cfg,
        TrainConfig(epochs=1, denoising=True, beta=2.0),
        DatasetInfo("digits"),
        run,
        {"kind": "in-process"},
        store=tmp_path,
    )
    loaded = load_checkpoint(path)
    card = loaded.card
    assert path.name == loaded.version == card.model_version
    assert card.variant == "DenoisingConditionalConvVLAE"
    assert card.architecture["arch"] == "conv"
    assert card.architecture["num_conditions"] == 2
    assert card.conditions == ["3", "8"]
    assert card.beta == 2.0 and card.latent_dim == 6
    assert card.image_shape == (1, 28, 28)
    assert card.normal_classes == ["3", "8"]
    assert {"torch", "ray", "python", "vlaewatch"} <= set(card.versions)
    assert card.epochs == 1 and "val_loss" in card.metrics
    assert loaded.denoiser is not None
    assert resolve_checkpoint(tmp_path) == path
    assert [v.card.model_version for v in list_versions(tmp_path)] == [loaded.version]
    with pytest.raises(CheckpointError, match="no version"):
        resolve_checkpoint(tmp_path, "feedfacefeedface")


def _small_checkpoint(digits, directory: Path, normal: str) -> Path:
    split = split_normal(digits, [normal])
    run = lambda m, c, d: fit(m, c, d, LoopContext(log=lambda _: None))  # noqa: E731
    return train_model(
        split,
        SMALL,
        TrainConfig(epochs=1),
        DatasetInfo("digits"),
        run,
        {"kind": "in-process"},
        out=directory,
    )


def test_corrupted_or_swapped_weights_are_refused(digits, tmp_path: Path) -> None:
    path = _small_checkpoint(digits, tmp_path / "a", "1")
    load_checkpoint(path)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        load_checkpoint(path)

    other = _small_checkpoint(digits, tmp_path / "b", "7")
    (other / "denoiser.safetensors").write_bytes(
        (tmp_path / "a" / "denoiser.safetensors").read_bytes()
    )
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        load_checkpoint(other)

    # The calibration scores (thresholds come from them) are covered too.
    third = _small_checkpoint(digits, tmp_path / "c", "7")
    load_checkpoint(third)
    (third / "calibration.csv").write_bytes((tmp_path / "a" / "calibration.csv").read_bytes())
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        load_checkpoint(third)


def test_not_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_arrays_carry_conditions_for_conditional_models(digits) -> None:
    split = split_normal(digits, ["2", "5"])
    arrays = train_arrays(split, conditional=True)
    assert arrays.train_c is not None
    assert set(arrays.train_c.tolist()) == {0, 1}
    assert train_arrays(split, conditional=False).train_c is None

"""Ray Train launches the loop: a real local cluster, a TorchTrainer with two workers."""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.launch import RayLaunch, fit_with_ray, new_run_name
from trainer.train import TrainArrays, TrainConfig
from vlae.model import VLAEConfig, build_model

SMALL = VLAEConfig(latent_dim=8, hidden=(64, 32))


def _arrays() -> TrainArrays:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(80, 1, 28, 28, generator=g) > 0.7).float()
    return TrainArrays(train_x=x[:64], val_x=x[64:])


def test_torch_trainer_two_workers_then_resume(ray_cluster, tmp_path: Path) -> None:
    name = new_run_name("test-fit")
    launch = RayLaunch(storage_path=tmp_path, run_name=name, num_workers=2, cpus_per_worker=1,
                       checkpoint_every_s=0)  # fmt: skip
    first = fit_with_ray(SMALL, TrainConfig(epochs=2, batch_size=16), _arrays(), launch)
    assert [h["epoch"] for h in first.history] == [1.0, 2.0]
    assert first.history[-1]["loss"] < first.history[0]["loss"]
    model = build_model(SMALL)
    model.load_state_dict(first.state_dicts["model"])
    assert set(first.state_dicts) == {"model", "denoiser"}
    checkpoints = [p for p in (tmp_path / name).glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 2  # one each epoch, num_to_keep=2

    # Same name and storage: the run resumes from its newest checkpoint rather than restarting.
    # Rank 0's epochs reach the driver's progress display through a Ray queue.
    shown: list[tuple[float, int]] = []
    show = lambda metrics, epochs: shown.append((metrics["epoch"], epochs))  # noqa: E731
    resumed = fit_with_ray(SMALL, TrainConfig(epochs=3, batch_size=16), _arrays(), launch, show)
    assert shown == [(3.0, 3)]
    assert len(resumed.history) == 3
    assert resumed.history[:2] == first.history
    assert resumed.history[2]["epoch"] == 3.0


def test_run_names_are_unique() -> None:
    assert len({new_run_name() for _ in range(50)}) == 50

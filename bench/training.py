"""Training speed: Ray Train against the plain loop on the same data, model and epochs.

The plain loop is ``trainer.train.fit`` called in-process (torch's default threads); Ray Train
runs that same function through ``trainer.launch.fit_with_ray`` on one worker holding every
CPU, then on two workers of one CPU each (data parallel, gloo all-reduce). Times are wall
clock from the call to the returned weights: worker start, the object store, the per-epoch
checkpoints and the final checkpoint read are all Ray's overhead.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

from trainer.data import NormalSplit
from trainer.launch import RayLaunch, fit_with_ray, new_run_name
from trainer.model import ConvVLAEConfig
from trainer.pipeline import train_arrays
from trainer.train import FitResult, LoopContext, TrainConfig, fit


def _epoch_s(result: FitResult) -> float:
    """Median seconds of one epoch as the loop measured it (rank 0)."""
    times = sorted(h["epoch_s"] for h in result.history)
    return times[len(times) // 2]


def training_overhead(split: NormalSplit, epochs: int) -> dict[str, Any]:
    """Wall time of the same fit three ways, and the ratios to the plain loop."""
    model_cfg = ConvVLAEConfig(image_shape=split.train.image_shape)  # the product default
    cfg = TrainConfig(epochs=epochs)  # with the companion denoiser, as `vlaewatch train`
    arrays = train_arrays(split, conditional=False)
    cpus = os.cpu_count() or 2
    runs: dict[str, Any] = {}

    t0 = time.perf_counter()
    result = fit(model_cfg, cfg, arrays, LoopContext(log=lambda _: None))
    runs["plain"] = {"wall_s": time.perf_counter() - t0, "epoch_s": _epoch_s(result)}
    print(f"train plain: {runs['plain']['wall_s']:.1f} s", file=sys.stderr)

    with tempfile.TemporaryDirectory() as storage:
        for name, workers in (("ray_1_worker", 1), ("ray_2_workers", 2)):
            launch = RayLaunch(storage_path=storage, run_name=new_run_name("bench"),
                               num_workers=workers, cpus_per_worker=cpus / workers)  # fmt: skip
            t0 = time.perf_counter()
            result = fit_with_ray(model_cfg, cfg, arrays, launch)
            runs[name] = {"wall_s": time.perf_counter() - t0, "epoch_s": _epoch_s(result)}
            print(f"train {name}: {runs[name]['wall_s']:.1f} s", file=sys.stderr)

    plain = runs["plain"]["wall_s"]
    return {
        "n_train": len(split.train),
        "epochs": epochs,
        "model": "ConvVLAE + companion denoiser (the `vlaewatch train` default)",
        "runs": runs,
        "overhead_ratio": runs["ray_1_worker"]["wall_s"] / plain,
        "two_workers_ratio": runs["ray_2_workers"]["wall_s"] / plain,
    }

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
from trainer.pipeline import train_arrays
from trainer.train import FitResult, LoopContext, TrainConfig, fit
from vlae.model import ConvVLAEConfig


def _epoch_s(result: FitResult) -> float:
    """Median seconds of one epoch as the loop measured it (rank 0)."""
    times = sorted(h["epoch_s"] for h in result.history)
    return times[len(times) // 2]


def training_overhead(split: NormalSplit, epochs: int, repeats: int = 2) -> dict[str, Any]:
    """Wall time of the same fit three ways, and the ratios to the plain loop.

    The plain loop and one Ray worker run ``repeats`` times in turn (plain, Ray, plain, Ray,
    ...): this VM's speed drifts by ±10 % over minutes, and taking turns spreads the drift over
    both. The overhead ratio is the summed Ray time over the summed plain time; each pair's
    own ratio is kept beside it."""
    model_cfg = ConvVLAEConfig(image_shape=split.train.image_shape)  # the product default
    cfg = TrainConfig(epochs=epochs)  # with the companion denoiser, as `vlaewatch train`
    arrays = train_arrays(split, conditional=False)
    cpus = os.cpu_count() or 2
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "ray_1_worker": [], "ray_2_workers": []}

    def timed(name: str, call: Any) -> None:
        t0 = time.perf_counter()
        result = call()
        runs[name].append({"wall_s": time.perf_counter() - t0, "epoch_s": _epoch_s(result)})
        print(f"train {name}: {runs[name][-1]['wall_s']:.1f} s", file=sys.stderr)

    with tempfile.TemporaryDirectory() as storage:

        def ray(workers: int) -> FitResult:
            launch = RayLaunch(storage_path=storage, run_name=new_run_name("bench"),
                               num_workers=workers, cpus_per_worker=cpus / workers)  # fmt: skip
            return fit_with_ray(model_cfg, cfg, arrays, launch)

        for _ in range(repeats):
            timed("plain", lambda: fit(model_cfg, cfg, arrays, LoopContext(log=lambda _: None)))
            timed("ray_1_worker", lambda: ray(1))
        timed("ray_2_workers", lambda: ray(2))

    def total(name: str) -> float:
        return sum(r["wall_s"] for r in runs[name])

    plain = total("plain") / repeats
    pairs = zip(runs["plain"], runs["ray_1_worker"], strict=True)
    return {
        "n_train": len(split.train),
        "epochs": epochs,
        "repeats": repeats,
        "model": "ConvVLAE + companion denoiser (the `vlaewatch train` default)",
        "runs": runs,
        "overhead_ratio": total("ray_1_worker") / total("plain"),
        "pair_ratios": [r["wall_s"] / p["wall_s"] for p, r in pairs],
        "two_workers_ratio": total("ray_2_workers") / plain,
    }

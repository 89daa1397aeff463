"""Ray Train launches the plain training loop (``train.fit``) on N data-parallel workers.

Workers are GPU workers when the cluster has a GPU for each, CPU workers otherwise. Every rank
reports each epoch's metrics through ``ray.train.report``; rank 0 adds the whole loop state as a
checkpoint after the first epoch, then at most every ``checkpoint_every_s`` seconds, and after
the last one (each checkpoint costs about 0.1 s on this small a model). A run started again
under the same name and storage path resumes from its newest checkpoint, and a worker that dies
is replaced and resumes the same way (``FailureConfig``).
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer import progress
from trainer.stream import ShardBatches, StreamedTrain
from trainer.train import FitResult, LoopContext, TrainArrays, TrainConfig, fit
from vlae.model import ModelConfig, config_from_dict, config_to_dict

if TYPE_CHECKING:
    from ray.train import Result, ScalingConfig
    from ray.train.torch import TorchTrainer

STATE_FILE = "state.pt"


def new_run_name(prefix: str = "vlaewatch-train") -> str:
    """A run name no earlier run has: reusing a name resumes that run."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RayLaunch:
    """How Ray Train runs the loop."""

    storage_path: str | Path
    run_name: str
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool | None = None  # None: GPU workers when the cluster has a GPU for each
    max_failures: int = 1
    checkpoints_to_keep: int = 2
    checkpoint_every_s: float = 30.0  # 0: every epoch
    # How often the Train controller collects the workers' reports. A worker's report waits
    # for it (a queue of one), so Ray's default of 2 s added up to 2 s to every epoch.
    poll_interval_s: float = 0.2
    log_level: str = "WARNING"


def _load_state(directory: str | Path) -> dict[str, Any]:
    # weights_only: a checkpoint holds tensors and plain numbers, never code.
    state: dict[str, Any] = torch.load(Path(directory) / STATE_FILE, weights_only=True)
    return state


def _worker_loop(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: fetch the data, restore, call the plain loop."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    torch.set_num_threads(max(1, int(config["threads"])))
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    restore = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            restore = _load_state(d)

    epochs, every = int(config["train"]["epochs"]), float(config["checkpoint_every_s"])
    saved_at = [-float("inf")]

    def report(metrics: dict[str, float], state_fn: Any) -> None:
        # Every rank reports (it is a barrier); only rank 0 carries the checkpoint, when due.
        due = metrics["epoch"] >= epochs or time.monotonic() - saved_at[0] >= every
        if rank != 0 or not due:
            ray.train.report(metrics, checkpoint=None)
            return
        saved_at[0] = time.monotonic()
        with tempfile.TemporaryDirectory() as d:
            torch.save(state_fn(), Path(d) / STATE_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))

    refs, sink, streamed = config["arrays"], config.get("progress"), config.get("streamed")
    got: dict[str, Any] = {name: None if r is None else ray.get(r) for name, r in refs.items()}
    arrays = TrainArrays(
        train_x=got["train_x"], val_x=got["val_x"], train_c=got["train_c"], val_c=got["val_c"],
        stream=None if streamed is None else ShardBatches(
            ray.train.get_dataset_shard("train"), streamed["n"], streamed["seed"]),
    )  # fmt: skip
    ctx = LoopContext(
        rank=rank,
        world_size=world,
        device=ray.train.torch.get_device(),
        wrap=ray.train.torch.prepare_model,
        report=report,
        restore=restore,
        # stderr: the driver's stdout stays machine-readable (the CLI prints JSON there).
        log=lambda line: print(f"[train] {line}", file=sys.stderr, flush=True),
        progress=None if sink is None else functools.partial(progress.put, sink),
    )
    fit(config_from_dict(config["model"]), TrainConfig(**config["train"]), arrays, ctx)


def fit_with_ray(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    data: TrainArrays,
    launch: RayLaunch,
    show: Callable[[dict[str, float], int], None] | None = None,
) -> FitResult:
    """Run ``fit`` under a Ray Train ``TorchTrainer``; Ray must already be initialised.
    ``show`` (a ``LoopContext.progress``) gets each epoch's metrics in this process."""
    # Read by Ray Train from the driver's environment and passed to its controller; a value
    # the user set stays.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(launch.poll_interval_s))
    relay = None if show is None else progress.Relay(show).start()
    try:
        trainer = _trainer(model_cfg, cfg, data, launch, None if relay is None else relay.sink)
        result = _fit_keeping_signals(trainer)
    finally:
        if relay is not None:
            relay.stop()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {launch.run_name} ended without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = _load_state(d)
    return FitResult(state_dicts=state["models"], history=list(state["history"]))


def _trainer(
    model_cfg: ModelConfig, cfg: TrainConfig, data: TrainArrays, launch: RayLaunch, sink: Any
) -> TorchTrainer:
    """The ``TorchTrainer`` of a run: ``_worker_loop`` on each worker, with its configs."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchTrainer

    arrays = {"train_x": data.train_x, "val_x": data.val_x, "train_c": data.train_c,
              "val_c": data.val_c}  # fmt: skip
    streamed = data.stream if isinstance(data.stream, StreamedTrain) else None
    return TorchTrainer(
        _worker_loop,
        # Streamed training images: Ray Data reads and decodes them, and each worker takes
        # its shard (``ray.train.get_dataset_shard``).
        datasets=None if streamed is None else {"train": streamed.dataset()},
        train_loop_config={
            "model": config_to_dict(model_cfg),
            "train": cfg.to_dict(),
            # The arrays go through the object store once, not pickled into each worker's task.
            "arrays": {name: None if a is None else ray.put(a) for name, a in arrays.items()},
            "streamed": None if streamed is None else {"n": len(streamed), "seed": streamed.seed},
            "threads": launch.cpus_per_worker,
            "checkpoint_every_s": launch.checkpoint_every_s,
            "progress": sink,  # a Ray queue to the driver's progress display, or None
        },
        scaling_config=_scaling(launch),
        run_config=RunConfig(
            name=launch.run_name,
            storage_path=str(Path(launch.storage_path).resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=launch.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=launch.max_failures),
            # Ray logs every report at INFO; the loop prints its own progress line per epoch.
            logging_config=LoggingConfig(log_level=launch.log_level),  # type: ignore[call-arg]
        ),
    )


def _scaling(launch: RayLaunch) -> ScalingConfig:
    """The workers: GPU workers when asked, or (``use_gpu`` None) when the cluster has a GPU
    for each."""
    from ray.train import ScalingConfig

    use_gpu = launch.use_gpu
    if use_gpu is None:
        use_gpu = cluster_gpus() >= launch.num_workers
    resources: dict[str, float] = {"CPU": launch.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1.0
    return ScalingConfig(
        num_workers=launch.num_workers, use_gpu=use_gpu, resources_per_worker=resources
    )


def _fit_keeping_signals(trainer: TorchTrainer) -> Result:
    """``trainer.fit()``'s result. TorchTrainer.fit installs its own SIGINT handler (abort the
    run) and leaves it in place: the caller's come back, so a long-running command (demo,
    serve) still stops on Ctrl-C."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return trainer.fit()
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)


def cluster_gpus() -> float:
    """GPUs the connected cluster has (0 on CPU-only clusters)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))

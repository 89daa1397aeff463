"""``vlaewatch train``: fit a VLAE on a dataset's normal images, with Ray Train or in this
process, and write its checkpoint."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.settings import Settings
from vlaewatch.cli.args import UsageError, add_verbose, classes, config_default, given, ray_logs
from vlaewatch.cli.console import err
from vlaewatch.cli.data import DataChoice, add_data_args, load
from vlaewatch.cli.embedded import ray_cluster

if TYPE_CHECKING:
    import numpy as np

    from trainer.data import LabelledImages, NormalSplit
    from trainer.defaults import Arch, DataProfile
    from trainer.pipeline import Fitter
    from trainer.stream import ImageFiles
    from trainer.train import TrainConfig
    from vlae.model import ModelConfig


DEFAULT_DATASET = "digits"


@dataclass(frozen=True)
class TrainOptions:
    """What ``vlaewatch train`` takes, one field a flag. None: the default of the config the
    value feeds (the model's and TrainConfig as trainer/defaults.py chooses them, RayLaunch)."""

    data: DataChoice = field(default_factory=lambda: DataChoice(dataset=DEFAULT_DATASET))
    normal: list[str] | None = None
    arch: Arch = "auto"
    score_kind: str | None = None
    likelihood: str | None = None
    latent_dim: int | None = None
    conditional: bool = False
    line_condition: dict[str, str] = field(default_factory=dict)
    batch_norm: bool = False
    beta: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    lr_schedule: str | None = None
    denoising: bool = False
    no_denoiser: bool = False
    noise: str | None = None
    noise_factor: float | None = None
    crop: int | None = None
    seed: int | None = None
    workers: int | None = None
    cpus_per_worker: float | None = None
    no_ray: bool = False
    reader: str = "auto"
    address: str | None = None
    run_name: str | None = None
    resume: str | None = None
    max_failures: int | None = None
    checkpoint_every_s: float | None = None
    storage_path: Path | None = None
    out: Path | None = None
    store: Path | None = None
    verbose: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainOptions:
        names = [f.name for f in dataclasses.fields(cls) if f.name != "data"]
        return cls(data=DataChoice.from_args(args), **{n: getattr(args, n) for n in names})


def add_parser(sub: Any) -> None:
    """The ``train`` command and its flags."""
    t = sub.add_parser("train", help="fit a VLAE on normal images with Ray Train")
    add_data_args(t, DEFAULT_DATASET)
    t.add_argument(
        "--normal",
        type=classes,
        help="comma-separated normal classes; only these are trained on (default: 0, or "
        "'normal' for a folder without class subfolders)",
    )
    _add_model_args(t)
    _add_training_args(t)
    _add_ray_args(t)
    add_verbose(t)
    dest = t.add_mutually_exclusive_group()
    dest.add_argument("--out", type=Path, help="write the checkpoint to this directory")
    dest.add_argument(
        "--store",
        type=Path,
        help="model store: checkpoint goes to STORE/<version> (default "
        "VLAEWATCH_MODEL_STORE or HOME/models)",
    )
    t.set_defaults(run=run)


def _add_model_args(t: argparse.ArgumentParser) -> None:
    from vlae.model import ConvVLAEConfig, SpatialVLAEConfig, VLAEConfig

    spatial, conv = SpatialVLAEConfig, ConvVLAEConfig
    t.add_argument(
        "--arch",
        choices=("auto", "mlp", "conv", "spatial"),
        default=TrainOptions.arch,
        help="auto (default): chosen from the images (trainer/defaults.py): conv for "
        "near-binary small images such as digits, spatial for grey and colour photographs; "
        "conv: convolutional VLAE; mlp: the deck's VLAE; spatial: fully convolutional VLAE "
        "with a latent cell per 4 x 4 pixels",
    )
    t.add_argument(
        "--score-kind",
        choices=("local", "elbo_per_tv", "elbo"),
        help=f"default: the architecture's ({spatial.score_kind} for spatial, "
        f"{conv.score_kind} otherwise); local: "
        "the anomaly map's maximum, recon + KL where the image is worst; elbo_per_tv: "
        "(recon + KL) per unit of input complexity; elbo: recon + KL of the whole image",
    )
    t.add_argument(
        "--likelihood",
        choices=("gaussian", "bernoulli"),
        help=f"default: the architecture's ({spatial.likelihood} for spatial, "
        f"{conv.likelihood} otherwise)",
    )
    t.add_argument(
        "--latent-dim",
        type=int,
        help=f"latent size (default {VLAEConfig.latent_dim} mlp, {conv.latent_dim} conv, "
        f"{spatial.latent_dim} a cell spatial)",
    )
    t.add_argument(
        "--conditional",
        action="store_true",
        help="ConditionalVLAE: the normal class is a condition of the model",
    )
    t.add_argument(
        "--line-condition",
        type=_line_conditions,
        default={},
        metavar="LINE=CLASS,...",
        help="conditional model: score each line's items under that normal class ('best': "
        "the class an item fits best; line '*': lines not listed). A mapped model refuses "
        "items of other lines (422, dead-lettered)",
    )
    t.add_argument("--batch-norm", action="store_true", help="batch-norm layers (deck slide 14)")


def _chosen() -> tuple[TrainConfig, TrainConfig]:
    """What trainer/defaults.py chooses for a spatial model, and for the others: the flags'
    help shows it rather than numbers of its own."""
    from trainer.defaults import choose_training
    from vlae.model import ConvVLAEConfig, SpatialVLAEConfig

    return choose_training(SpatialVLAEConfig()), choose_training(ConvVLAEConfig())


def _add_training_args(t: argparse.ArgumentParser) -> None:
    spatial, other = _chosen()
    t.add_argument("--beta", type=float, help="weight of the KL term")
    t.add_argument(
        "--epochs", type=int, help=f"default {spatial.epochs} spatial, {other.epochs} otherwise"
    )
    t.add_argument("--batch-size", type=int)
    t.add_argument(
        "--lr",
        type=float,
        help=f"default {_short(spatial.lr)} spatial, {_short(other.lr)} otherwise",
    )
    t.add_argument(
        "--lr-schedule",
        choices=("none", "plateau", "cosine"),
        help=f"default: {spatial.lr_schedule} for spatial, {other.lr_schedule} otherwise "
        "(plateau halved the LR during early posterior collapse on small datasets and kept the "
        "model there)",
    )
    t.add_argument(
        "--denoising",
        action="store_true",
        help="train the scoring model itself on noisy inputs (DenoisingVLAE; always for spatial)",
    )
    t.add_argument(
        "--no-denoiser",
        action="store_true",
        help="skip the companion DenoisingVLAE that the denoised previews use (a spatial model "
        "repairs by itself and has none)",
    )
    t.add_argument(
        "--noise",
        choices=("structured", "gaussian"),
        help="what a denoising model learns to remove: structured local corruptions "
        "(default for spatial) or the deck's Gaussian noise (default otherwise)",
    )
    t.add_argument("--noise-factor", type=float, help="Gaussian noise's std")
    t.add_argument(
        "--crop",
        type=int,
        help="train on random square crops of this side (default: half "
        "the image side for spatial; none otherwise)",
    )
    t.add_argument("--seed", type=int)


def _short(lr: float) -> str:
    """A learning rate as people write it: 2e-3."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _add_ray_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--workers", type=int, help="Ray Train workers")
    t.add_argument("--cpus-per-worker", type=float)
    t.add_argument("--no-ray", action="store_true", help="run the same loop in this process")
    t.add_argument(
        "--reader",
        choices=("auto", "memory", "stream"),
        default=TrainOptions.reader,
        help="how a folder's training images reach the workers: memory (decoded in this "
        "process, shipped as arrays: fastest for small sets), stream (read and decoded by Ray "
        "Data tasks, each worker streaming its shard: memory that does not grow with the "
        "folder); auto (default): stream for a URI or a folder of more than 2 GiB decoded",
    )
    t.add_argument("--address", help="Ray cluster to join (RAY_ADDRESS); default: local cluster")
    t.add_argument("--run-name", help="Ray Train run name (default: a new unique name)")
    t.add_argument(
        "--resume",
        metavar="RUN_NAME",
        help="resume the Ray Train run of that name from its newest checkpoint",
    )
    t.add_argument(
        "--max-failures",
        type=int,
        help="worker failures a run survives by restarting from its checkpoint",
    )
    t.add_argument(
        "--checkpoint-every-s",
        type=float,
        help="Ray Train checkpoints the run after its first epoch, then at most this often, "
        "and after its last: what a failure or a resumed run repeats (0: every epoch)",
    )
    t.add_argument(
        "--storage-path",
        type=Path,
        help="Ray Train run storage (VLAEWATCH_RUNS_DIR, default HOME/runs)",
    )


def _line_conditions(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        line, sep, cond = part.partition("=")
        if not sep or not line.strip() or not cond.strip():
            raise argparse.ArgumentTypeError(f"{part!r}: use LINE=CONDITION[,LINE=CONDITION...]")
        out[line.strip()] = cond.strip()
    return out


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """``vlaewatch train``."""
    return train(TrainOptions.from_args(args), settings)


def train(opts: TrainOptions, settings: Settings) -> dict[str, Any]:
    """Fit a model as ``opts`` say; where its checkpoint is and what its card says."""
    from trainer.data import folder_name, split_normal
    from trainer.pipeline import DatasetInfo, train_model
    from trainer.stream import split_files
    from trainer.train import TrainConfig
    from vlae.checkpoint import read_card

    normal = opts.normal or (["normal"] if opts.data.dataset == "folder" else ["0"])
    seed = config_default(TrainConfig, "seed") if opts.seed is None else opts.seed
    files = _streamed_files(opts)
    split: NormalSplit[Any]
    if files is None:
        source = load(opts.data, settings)
        name, split = source.name, split_normal(source, normal, seed=seed)
    else:
        name, split = folder_name(files.root), split_files(files, normal, seed=seed)
    model_cfg, data_profile, cfg = _configs(opts, _profile_images(split.train), seed)
    data_dir = opts.data.data_dir or settings.data_dir
    image_folder = opts.data.image_folder
    dataset = DatasetInfo(
        name=name,
        data_dir=str(data_dir or "") or None,
        image_folder=str(image_folder) if image_folder else None,
    )
    counts = split.train.class_counts()
    err(
        f"training on {len(split.train)} normal images {counts} "
        f"({len(split.validation)} validation, {len(split.calibration)} calibration held out)"
    )
    out, store = opts.out, None if opts.out else (opts.store or settings.store_path)
    with contextlib.ExitStack() as stack:
        fitter, launcher = _fitter(opts, settings, stack, streamed=files is not None)
        path = train_model(split, model_cfg, cfg, dataset, fitter, launcher, out=out, store=store,
                           line_conditions=opts.line_condition,
                           data_profile=data_profile.to_dict())  # fmt: skip
    card = read_card(path)
    return {
        "checkpoint": str(path),
        "model_version": card.model_version,
        "image_shape": list(card.image_shape),
        "variant": card.variant,
        "metrics": card.metrics,
    }


def _streamed_files(opts: TrainOptions) -> ImageFiles | None:
    """The training folder's file list when its images stream through Ray Data (``--reader
    stream``, or ``auto`` for a URI or a folder that decodes to more than
    ``trainer.stream.STREAM_ABOVE_BYTES``); None when they are read into memory."""
    from trainer.data import DataError
    from trainer.stream import STREAM_ABOVE_BYTES, is_uri, list_images
    from vlaewatch.cli.data import image_shape

    data, reader = opts.data, opts.reader
    if reader == "memory" or data.dataset != "folder" or data.image_folder is None:
        if reader == "stream":
            raise UsageError("--reader stream reads --dataset folder --image-folder (a folder "
                             "or a URI)")  # fmt: skip
        return None
    if opts.no_ray:
        if reader == "stream":
            raise UsageError("--reader stream needs Ray (Ray Data reads the files): drop --no-ray")
        return None
    try:
        files = list_images(data.image_folder, image_shape(data) or (0, 0, 0))
    except DataError as exc:
        raise UsageError(str(exc)) from None
    if reader == "stream" or is_uri(data.image_folder):
        return files
    return files if files.decoded_bytes() > STREAM_ABOVE_BYTES else None


def _check_room_for_data_tasks(train_cpus: float) -> None:
    """Streamed training needs CPUs beyond the Train workers' for Ray Data's read tasks:
    without them the tasks wait for the workers, which wait for the tasks."""
    import ray

    from trainer.stream import TASK_CPUS

    free = ray.available_resources().get("CPU", 0.0)
    if free - train_cpus < TASK_CPUS:
        raise UsageError(
            f"the Ray cluster has {free:g} CPUs free; {train_cpus:g} for the Train workers "
            f"leave less than the {TASK_CPUS:g} a Ray Data read task takes: use fewer "
            "--workers or --cpus-per-worker, or add a node"
        )


def _profile_images(train: LabelledImages | ImageFiles) -> np.ndarray:
    """Training images to choose the model from: of a streamed set, just the sample that
    ``profile`` measures, so that both readers choose the same model."""
    from trainer.defaults import profile_indices
    from trainer.stream import ImageFiles

    if isinstance(train, ImageFiles):
        return train.subset(profile_indices(len(train))).read().images
    return train.images


def _configs(
    opts: TrainOptions, images: np.ndarray, seed: int
) -> tuple[ModelConfig, DataProfile, TrainConfig]:
    """The model and training configs: chosen from the images, the options win."""
    from trainer.defaults import choose_model, choose_training

    try:
        model_cfg, data_profile = choose_model(
            images, opts.arch, score_kind=opts.score_kind,
            likelihood=opts.likelihood, batch_norm=opts.batch_norm or None,
            num_conditions=1 if opts.conditional else None, latent_dim=opts.latent_dim,
        )  # fmt: skip
        cfg = choose_training(
            model_cfg, epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr,
            beta=opts.beta, lr_schedule=opts.lr_schedule, denoising=opts.denoising or None,
            denoiser=False if opts.no_denoiser else None, noise=opts.noise,
            noise_factor=opts.noise_factor, crop=opts.crop, seed=seed,
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return model_cfg, data_profile, cfg


def _fitter(
    opts: TrainOptions, settings: Settings, stack: contextlib.ExitStack, streamed: bool = False
) -> tuple[Fitter, dict[str, Any]]:
    """The loop in this process, or on Ray Train (joining or starting a cluster, left when the
    stack closes); and how it ran, for the model card. A local cluster for ``streamed``
    training has a logical CPU beyond the Train workers' for Ray Data's read tasks: without
    one they would wait for the workers, which wait for them."""
    from trainer.progress import EpochBar
    from trainer.train import LoopContext, fit

    bar = EpochBar()
    stack.callback(bar.close)
    if opts.no_ray:
        ctx = LoopContext(log=err, progress=bar)
        return (lambda m, c, d: fit(m, c, d, ctx)), {"kind": "in-process"}
    from trainer.launch import RayLaunch, cluster_gpus, fit_with_ray, new_run_name

    launch = RayLaunch(
        storage_path=opts.storage_path or settings.runs_path,
        run_name=opts.resume or opts.run_name or new_run_name(),
        **given(num_workers=opts.workers, cpus_per_worker=opts.cpus_per_worker,
                max_failures=opts.max_failures, checkpoint_every_s=opts.checkpoint_every_s),
    )  # fmt: skip
    cpus = None
    if streamed:
        need = math.ceil(launch.num_workers * launch.cpus_per_worker) + 1
        cpus = max(len(os.sched_getaffinity(0)), need)
    info = ray_cluster(stack, opts.address, settings, opts.verbose, num_cpus=cpus)
    if streamed:
        _check_room_for_data_tasks(launch.num_workers * launch.cpus_per_worker)
    logs = f"; {ray_logs(info)}" if info["owned"] else ""  # else the caller has said where
    err(f"Ray Train run {launch.run_name} on {info['address']}{logs}")
    launcher = {
        "kind": "ray-train",
        "run_name": launch.run_name,
        "workers": launch.num_workers,
        "gpu": cluster_gpus() > 0,
    }
    return (lambda m, c, d: fit_with_ray(m, c, d, launch, show=bar)), launcher

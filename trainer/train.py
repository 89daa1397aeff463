"""The training loop: a plain function. Ray Train only launches it (see ``launch.py``).

The loop fits the scoring model and, optionally, a companion denoising model on the same
batches (noisy input, clean target: the deck's DenoisingVLAE, slide 12), which the previews use.
It works in one process (rank 0 of 1) or as one rank of a data-parallel group.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from trainer.corrupt import LINES, corrupt
from vlae.base import VLAEBase
from vlae.model import ModelConfig, add_noise, build_model

LRSchedule = Literal["none", "plateau", "cosine"]
Noise = Literal["gaussian", "structured"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``beta`` weights the KL term (the deck's disentangled loss)."""

    epochs: int = 10
    batch_size: int = 32  # global: split across data-parallel workers
    lr: float = 1e-3
    beta: float = 1.0
    lr_schedule: LRSchedule = "none"
    denoising: bool = False  # train the scoring model itself on noisy inputs
    denoiser: bool = True  # also fit a companion DenoisingVLAE for denoised previews
    noise_factor: float = 0.5  # Gaussian noise: its standard deviation
    # What a denoising model learns to remove: the deck's Gaussian noise, or local structured
    # corruptions (trainer/corrupt.py) in ``corrupt_fraction`` of the images.
    noise: Noise = "gaussian"
    corrupt_fraction: float = 0.5
    # Centre most corruptions on the part (``trainer.corrupt.on_part_centres``): for objects in
    # a fixture, whose training crops are mostly fixture (``choose_training`` sets it for
    # them; on a texture it cost worn patches: bench/README.md).
    corrupt_on_part: bool = False
    # Share of the corruptions that are thin polylines (scratches, cracks), the rest blobs
    # (``choose_training`` takes more of them on an aligned part: bench/README.md).
    corrupt_lines: float = LINES
    # Train a fully convolutional model on random square crops of this size (0: whole
    # images): four times the steps a second at half the side, and a new view each time.
    crop: int = 0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BatchStream(Protocol):
    """Training images that arrive in batches rather than as one array (``trainer.stream``):
    ``len`` images in all, and a rank's float batches (N, C, H, W) and condition indices
    (or None) for one epoch."""

    def __len__(self) -> int: ...

    def batches(self, epoch: int, batch: int, rank: int) -> Iterator[tuple[Tensor, Any]]: ...


@dataclass
class TrainArrays:
    """Float images in [0, 1] (N, C, H, W) and optional condition indices, train and validation.
    ``train_x`` None: the training images come from ``stream``."""

    train_x: Tensor | None
    val_x: Tensor
    train_c: Tensor | None = None
    val_c: Tensor | None = None
    stream: BatchStream | None = None

    @property
    def n_train(self) -> int:
        if self.train_x is not None:
            return len(self.train_x)
        if self.stream is None:
            raise ValueError("no training images: neither train_x nor a stream")
        return len(self.stream)


@dataclass
class LoopContext:
    """Where the loop runs: its rank, the device, and how it reports and restores."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None
    # Wraps a model for data parallelism (Ray's prepare_model); identity when alone.
    wrap: Callable[[nn.Module], nn.Module] = lambda m: m
    # Called once per epoch with the epoch's metrics and a function producing the loop state.
    report: Callable[[dict[str, float], Callable[[], dict[str, Any]]], None] | None = None
    restore: dict[str, Any] | None = None
    log: Callable[[str], None] = print
    # Called on rank 0 after each epoch with its metrics and the run's epoch count: the
    # progress display (trainer.progress), reached through Ray when the loop runs in a worker.
    progress: Callable[[dict[str, float], int], None] | None = None


@dataclass
class FitResult:
    """Trained weights (CPU state dicts by member name) and per-epoch metrics."""

    state_dicts: dict[str, dict[str, Tensor]]
    history: list[dict[str, float]]


@dataclass
class _Member:
    name: str
    model: nn.Module  # possibly DDP-wrapped
    core: VLAEBase  # the unwrapped model
    optimizer: torch.optim.Optimizer
    scheduler: Any
    denoising: bool

    @property
    def prefix(self) -> str:
        """Of its metrics' names: none for the scoring model."""
        return "" if self.name == "model" else f"{self.name}_"


@dataclass(frozen=True)
class _Shard:
    """This rank's share of every epoch: ``size`` images in ``steps`` batches of ``batch``."""

    size: int
    batch: int
    steps: int


def _scheduler(opt: torch.optim.Optimizer, kind: LRSchedule, epochs: int) -> Any:
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "min", factor=0.5, patience=2)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    return None


def _allreduce_mean(values: Tensor, ctx: LoopContext) -> Tensor:
    if ctx.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
        values = values / ctx.world_size
    return values


def random_crops(x: Tensor, size: int) -> Tensor:
    """A random ``size`` x ``size`` crop of each image (torch's generator); ``x`` itself when
    ``size`` is 0 or not smaller than the images."""
    h, w = x.shape[-2:]
    if size <= 0 or (size >= h and size >= w):
        return x
    size_h, size_w = min(size, h), min(size, w)
    tops = torch.randint(0, h - size_h + 1, (len(x),)).tolist()
    lefts = torch.randint(0, w - size_w + 1, (len(x),)).tolist()
    return torch.stack([im[:, t : t + size_h, left : left + size_w]
                        for im, t, left in zip(x, tops, lefts, strict=True)])  # fmt: skip


def _loss_terms(
    m: _Member, x: Tensor, c: Tensor | None, cfg: TrainConfig, train: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-item (recon, kl, head) of a batch: the model's ``elbo_terms``, of a noisy input
    for a denoising member; ``head``, the defect head's loss on the corruption's mask (0
    without a head). Training samples z and runs the wrapped model; validation does not."""
    forward = m.model if train else None
    if m.denoising and cfg.noise == "structured":
        inp, mask = corrupt(x, cfg.corrupt_fraction, cfg.corrupt_on_part, cfg.corrupt_lines)
        if m.core.has_head:
            return m.core.repair_terms(inp, x, mask, c=c, sample=train, forward=forward)
    elif m.denoising:
        inp = add_noise(x, cfg.noise_factor)
    else:
        inp = x
    recon, kl = m.core.elbo_terms(inp, target=x, c=c, sample=train, forward=forward)
    return recon, kl, torch.zeros_like(recon)


def _objective(recon: Tensor, kl: Tensor, head: Tensor, cfg: TrainConfig) -> Tensor:
    """Per item, the loss minimised: recon + beta * kl, plus the defect head's loss (its
    input is detached, so it trains the head alone)."""
    return recon + cfg.beta * kl + head


def fit(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    data: TrainArrays,
    ctx: LoopContext | None = None,
) -> FitResult:
    """Fit the scoring model (and the denoiser) on normal images; return weights and history."""
    ctx = ctx or LoopContext()
    device = ctx.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed + ctx.rank)
    members = _members(model_cfg, cfg, device)
    start_epoch, history = _restore(members, ctx, cfg.epochs)
    for m in members:
        m.model = ctx.wrap(m.core)
    shard = _shard(data.n_train, cfg.batch_size, ctx)
    t_start = time.monotonic()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.monotonic()
        train_means = _train_epoch(members, data, cfg, ctx, shard, epoch, device)
        val = _allreduce_mean(_validate(members, data, cfg, device), ctx)
        metrics = _epoch_metrics(members, epoch, train_means, val)
        metrics["epoch_s"] = time.monotonic() - t0
        done = epoch + 1 - start_epoch
        metrics["eta_s"] = (time.monotonic() - t_start) / done * (cfg.epochs - epoch - 1)
        history.append(metrics)
        if ctx.rank == 0 and ctx.progress is not None:
            ctx.progress(metrics, cfg.epochs)
        if ctx.report is not None:
            ctx.report(metrics, functools.partial(_state, members, epoch, history))
    return FitResult(
        state_dicts={m.name: _cpu_state(m.core) for m in members},
        history=history,
    )


def _members(model_cfg: ModelConfig, cfg: TrainConfig, device: torch.device) -> list[_Member]:
    """The scoring model and, when asked, the companion denoiser, each with its optimiser."""
    members: list[_Member] = []
    specs = [("model", cfg.denoising)] + ([("denoiser", True)] if cfg.denoiser else [])
    for name, denoising in specs:
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        core = build_model(model_cfg).to(device)
        if core.has_head and not (denoising and cfg.noise == "structured"):
            raise ValueError("a model with a defect head learns from structured corruptions: "
                             "train it with denoising and noise='structured'")  # fmt: skip
        opt = torch.optim.Adam(core.parameters(), lr=cfg.lr)
        members.append(
            _Member(name, core, core, opt, _scheduler(opt, cfg.lr_schedule, cfg.epochs), denoising)
        )
    return members


def _restore(
    members: list[_Member], ctx: LoopContext, epochs: int
) -> tuple[int, list[dict[str, float]]]:
    """Load a resumed run's loop state (``_state``) into the members; return the epoch to
    start at and the history so far (0 and none for a new run)."""
    if ctx.restore is None:
        return 0, []
    for m in members:
        m.core.load_state_dict(ctx.restore["models"][m.name])
        m.optimizer.load_state_dict(ctx.restore["optimizers"][m.name])
        if m.scheduler is not None:
            m.scheduler.load_state_dict(ctx.restore["schedulers"][m.name])
    start_epoch = int(ctx.restore["epoch"]) + 1
    ctx.log(f"resuming at epoch {start_epoch + 1}/{epochs}")
    return start_epoch, list(ctx.restore["history"])


def _shard(n: int, batch_size: int, ctx: LoopContext) -> _Shard:
    """Equal shard sizes on every rank: data-parallel ranks must take the same number of
    steps. ``batch_size`` is the global batch: N workers take the steps one process would."""
    per_rank = n // ctx.world_size
    if per_rank < 1:
        raise ValueError(f"{n} training images cannot be split over {ctx.world_size} workers")
    local_batch = max(1, batch_size // ctx.world_size)
    return _Shard(per_rank, local_batch, math.ceil(per_rank / local_batch))


def _train_epoch(
    members: list[_Member],
    data: TrainArrays,
    cfg: TrainConfig,
    ctx: LoopContext,
    shard: _Shard,
    epoch: int,
    device: torch.device,
) -> Tensor:
    """One epoch of this rank's batches; per member, the mean (loss, recon, kl) over ranks."""
    # Sampling noise seeded per epoch and rank: a resumed run on arrays repeats the same steps
    # (a stream's file order is Ray Data's, new in each execution).
    torch.manual_seed(int(np.random.default_rng([cfg.seed, epoch, ctx.rank]).integers(2**62)))
    sums = torch.zeros(3 * len(members), device=device)
    for m in members:
        m.model.train()
    steps = 0
    for x, c in _batches(data, cfg, ctx, shard, epoch):
        x = random_crops(x, cfg.crop).to(device, non_blocking=True)
        c = None if c is None else c.to(device)
        for j, m in enumerate(members):
            sums[3 * j : 3 * j + 3] += _train_step(m, x, c, cfg)
        steps += 1
    if steps != shard.steps:  # a short stream: fail here rather than hang the other ranks
        raise RuntimeError(f"rank {ctx.rank} got {steps} batches of {shard.steps} this epoch")
    return _allreduce_mean(sums / steps, ctx)


def _batches(
    data: TrainArrays, cfg: TrainConfig, ctx: LoopContext, shard: _Shard, epoch: int
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """This rank's batches of an epoch: a seeded permutation of the arrays, or the stream's
    batches, ``shard.steps`` of them either way (data-parallel ranks step together)."""
    if data.train_x is None:
        assert data.stream is not None
        stream = data.stream.batches(epoch, shard.batch, ctx.rank)
        yield from itertools.islice(stream, shard.steps)
        return
    perm = np.random.default_rng([cfg.seed, epoch]).permutation(len(data.train_x))
    mine = torch.from_numpy(perm[ctx.rank :: ctx.world_size][: shard.size])
    for step in range(shard.steps):
        idx = mine[step * shard.batch : (step + 1) * shard.batch]
        yield data.train_x[idx], None if data.train_c is None else data.train_c[idx]


def _train_step(m: _Member, x: Tensor, c: Tensor | None, cfg: TrainConfig) -> Tensor:
    """One optimiser step of a member; its batch's mean (loss, recon, kl), detached."""
    recon, kl, head = _loss_terms(m, x, c, cfg, train=True)
    loss = _objective(recon, kl, head, cfg).mean()
    m.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    m.optimizer.step()
    return torch.stack([loss.detach(), recon.mean().detach(), kl.mean().detach()])


def _epoch_metrics(
    members: list[_Member], epoch: int, train_means: Tensor, val: Tensor
) -> dict[str, float]:
    """The epoch's metrics per member, after stepping its learning-rate schedule."""
    metrics: dict[str, float] = {"epoch": float(epoch + 1)}
    for j, m in enumerate(members):
        loss, recon, kl = (float(v) for v in train_means[3 * j : 3 * j + 3])
        p = m.prefix
        metrics |= {f"{p}loss": loss, f"{p}recon": recon, f"{p}kl": kl}
        metrics[f"{p}val_loss"] = float(val[j])
        if isinstance(m.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            m.scheduler.step(float(val[j]))
        elif m.scheduler is not None:
            m.scheduler.step()
    metrics["lr"] = float(members[0].optimizer.param_groups[0]["lr"])
    return metrics


@torch.no_grad()
def _validate(
    members: list[_Member], data: TrainArrays, cfg: TrainConfig, device: torch.device
) -> Tensor:
    """Mean validation loss per member (the objective it trains, with a fixed noise draw)."""
    out = torch.zeros(len(members), device=device)
    n = len(data.val_x)
    if n == 0:
        return out
    gen_state = torch.get_rng_state()
    for j, m in enumerate(members):
        m.core.eval()
        torch.manual_seed(cfg.seed)  # same noise every epoch: comparable numbers
        total = torch.zeros((), device=device)
        for i in range(0, n, 512):
            x = data.val_x[i : i + 512].to(device)
            c = None if data.val_c is None else data.val_c[i : i + 512].to(device)
            total += _objective(*_loss_terms(m, x, c, cfg, train=False), cfg).sum()
        out[j] = total / n
    torch.set_rng_state(gen_state)
    return out


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _state(members: list[_Member], epoch: int, history: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "history": list(history),
        "models": {m.name: _cpu_state(m.core) for m in members},
        # Deep copies: an optimizer's state dict holds its live moment tensors.
        "optimizers": {m.name: copy.deepcopy(m.optimizer.state_dict()) for m in members},
        "schedulers": {
            m.name: m.scheduler.state_dict() for m in members if m.scheduler is not None
        },
    }

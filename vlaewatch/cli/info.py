"""``vlaewatch info``: versions, settings (redacted), devices and the models in the store."""

from __future__ import annotations

import argparse
from typing import Any

from vlaewatch.settings import Settings


def add_parser(sub: Any) -> None:
    """The ``info`` command (no flags)."""
    i = sub.add_parser("info", help="versions, settings, devices and the models in the store")
    i.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """``vlaewatch info``."""
    import platform

    import torch

    from vlae.checkpoint import list_versions
    from vlaewatch import __version__

    return {
        "vlaewatch": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "settings": settings.redacted(),
        "model_store": str(settings.store_path),
        "models": [
            {
                k: c.get(k)
                for k in ("model_version", "variant", "normal_classes", "created_at", "path")
            }
            for c in list_versions(settings.store_path)
        ],
    }

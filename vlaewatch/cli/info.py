"""``vlaewatch info``: versions, settings (redacted), devices and the models in the store."""

from __future__ import annotations

import argparse
from typing import Any

from contract.settings import Settings


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
                "model_version": v.card.model_version,
                "variant": v.card.variant,
                "normal_classes": v.card.normal_classes,
                "created_at": v.card.created_at,
                "path": str(v.path),
            }
            for v in list_versions(settings.store_path)
        ],
    }

"""The argument vocabulary the commands share: value types, usage errors, where defaults come
from, and the network addresses of the embedded defaults."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any
from urllib.parse import urlsplit

from contract.settings import Settings


class UsageError(ValueError):
    """Arguments that do not fit together."""


def config_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of a pydantic model or a dataclass: a flag that sets a
    config field defaults to the config's own value, stated there only."""
    model_fields = getattr(cls, "model_fields", None)
    if model_fields is not None:
        return model_fields[name].get_default(call_default_factory=True)
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.default


def given(**values: Any) -> dict[str, Any]:
    """The values that were set: a config takes its own default for the others."""
    return {k: v for k, v in values.items() if v is not None}


def _scorer_address() -> tuple[str, int]:
    """Where the scorer listens by default: where the API looks for it (Settings.scorer_url)."""
    url = urlsplit(config_default(Settings, "scorer_url"))
    if url.hostname is None or url.port is None:
        raise ValueError(f"the default scorer URL {url.geturl()!r} names no host and port")
    return url.hostname, url.port


HOST, SCORER_PORT = _scorer_address()
API_PORT = 8080  # the API's default port, beside the scorer's


def add_verbose(parser: Any) -> None:
    """``--verbose``: Ray's, Serve's and the workers' logs on the terminal too. Without it
    they stay in Ray's log files, which the command names, and the dashboard."""
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's, Serve's and the workers' logs here")  # fmt: skip


def ray_logs(info: dict[str, Any]) -> str:
    """Where a command's Ray logs are, for its status line."""
    where = info.get("logs_dir") or "the head node's Ray log folder"
    dashboard = f", dashboard {info['dashboard_url']}" if info.get("dashboard_url") else ""
    return f"Ray logs in {where}{dashboard}"


def parse_size(text: str) -> tuple[int, int]:
    """``N`` or ``HxW`` pixels, 8 to 1024 a side."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size {text!r} is not N or HxW") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 8 or max(sizes) > 1024:
        raise argparse.ArgumentTypeError(f"image size {text!r}: give N or HxW, 8 to 1024 pixels")
    return sizes[0], sizes[1]


def classes(text: str) -> list[str]:
    """A comma-separated list, blanks dropped."""
    return [c.strip() for c in text.split(",") if c.strip()]

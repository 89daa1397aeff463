"""The ``vlaewatch`` command: a thin layer that parses arguments and calls the packages."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from contract.settings import Settings
from vlaewatch.cli import api, demo, evaluate, explore, grafana, info, serve, train
from vlaewatch.cli.args import UsageError

__all__ = ["build_parser", "main"]

# In the order ``vlaewatch --help`` lists them; each module adds its subparser, whose
# ``run`` default is the function that runs it.
COMMANDS = (train, evaluate, serve, api, demo, grafana, explore, info)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = argparse.ArgumentParser(prog="vlaewatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vlaewatch`` console script: the command's result as JSON on
    stdout (when it has one); an error on stderr with exit status 2."""
    from grafana_client.client import GrafanaException

    from contract.auth import KeyConfigError
    from contract.redis_server import RedisStartError
    from scorer.service import DeployError
    from trainer.data import DataError
    from vlae.checkpoint import CheckpointError
    from vlaewatch.cli.demo_api import DemoError

    args = build_parser().parse_args(argv)
    settings = Settings()
    try:
        result = args.run(args, settings)
    except (
        UsageError, DataError, CheckpointError, RedisStartError, KeyConfigError, DeployError,
        DemoError, GrafanaException, OSError, ValidationError,
    ) as exc:  # fmt: skip
        print(f"vlaewatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if result is not None:  # the demo's summary is in its file
        print(json.dumps(result, indent=2))
    return 0

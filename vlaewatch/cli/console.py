"""What the commands write on stderr while they work: a line a step (progress bars are
tqdm's). The JSON result goes to stdout (``vlaewatch.cli.main``)."""

from __future__ import annotations

import sys


def err(line: str) -> None:
    """One line on stderr, flushed."""
    print(line, file=sys.stderr, flush=True)

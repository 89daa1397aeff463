"""What the commands write on stderr while they work: lines, and a progress bar. The JSON
result goes to stdout (``vlaewatch.cli.main``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def err(line: str) -> None:
    """One line on stderr, flushed."""
    print(line, file=sys.stderr, flush=True)


def progress_printer(label: str) -> Callable[..., None]:
    """A one-line progress display on stderr, redrawn in place."""
    last = [0.0]

    def show(done: int, total: int, extra: str = "") -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.5:
            return
        last[0] = now
        filled = round(20 * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(f"\r[{'#' * filled}{'.' * (20 - filled)}] {label} {done}/{total} {extra}",
              end=end, file=sys.stderr, flush=True)  # fmt: skip

    return show

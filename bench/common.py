"""What the benchmarks share: where results go and how a run's command is recorded."""

from __future__ import annotations

import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that ran, with the data directory named by its role, not its path."""
    out, skip = [f"python -m {module}"], False
    for a in sys.argv[1:] if argv is None else argv:
        if skip:
            out.append("$DATA_DIR")
            skip = False
        elif a == "--data-dir":
            out.append(a)
            skip = True
        elif a.startswith("--data-dir="):
            out.append("--data-dir=$DATA_DIR")
        else:
            out.append(a)
    return " ".join(out)

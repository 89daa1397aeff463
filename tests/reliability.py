"""The test files the Reliability table of docs/reliability.md cites: ``make test-reliability``
runs exactly these (``python -m tests.reliability`` prints them), so the table and the command
cannot drift apart."""

from __future__ import annotations

import re
from itertools import takewhile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reliability.md"
HEADER = "| fault or input |"


def cited(page: Path = PAGE) -> list[str]:
    """Each ``tests/...py`` a row of the page's fault table names, in order, once."""
    lines = page.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(HEADER))
    rows = takewhile(lambda ln: ln.startswith("|"), lines[start:])
    return list(dict.fromkeys(re.findall(r"tests/[\w/]+\.py", "\n".join(rows))))


if __name__ == "__main__":
    print(" ".join(cited()))

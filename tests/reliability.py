"""The test files the README's Reliability table cites: ``make test-reliability`` runs exactly
these (``python -m tests.reliability`` prints them), so the table and the command cannot
drift apart."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def cited(readme: Path = README) -> list[str]:
    """Each ``tests/...py`` a row of the "## Reliability" table names, in order, once."""
    text = readme.read_text()
    start = text.index("\n## Reliability")
    end = text.find("\n## ", start + 1)
    rows = [ln for ln in text[start:end].splitlines() if ln.startswith("|")]
    return list(dict.fromkeys(re.findall(r"tests/[\w/]+\.py", "\n".join(rows))))


if __name__ == "__main__":
    print(" ".join(cited()))

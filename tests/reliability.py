"""The test files the README's Reliability table cites: ``make test-reliability`` runs exactly
these (``python -m tests.reliability`` prints them), so the table and the command cannot
drift apart."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def cited(readme: Path = README) -> list[str]:
    """Each ``tests/...py`` the "## Reliability" section names, in order, once."""
    text = readme.read_text()
    start = text.index("\n## Reliability")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return list(dict.fromkeys(re.findall(r"tests/[\w/]+\.py", section)))


if __name__ == "__main__":
    print(" ".join(cited()))

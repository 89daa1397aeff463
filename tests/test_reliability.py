"""The Reliability table (docs/reliability.md) cites tests that exist, and `make
test-reliability` runs those (before, it ran the 7 files marked `reliability` while the table
cited others, one of them missing)."""

from __future__ import annotations

import re

from tests.reliability import ROOT, cited


def test_the_reliability_table_cites_tests_that_exist_and_make_runs_them() -> None:
    files = cited()
    assert len(files) >= 15, files
    missing = [f for f in files if not (ROOT / f).is_file()]
    assert not missing, missing
    for f in files:  # each holds tests, not only helpers
        assert re.search(r"^def test_", (ROOT / f).read_text(), re.M), f
    recipe = (ROOT / "Makefile").read_text().split("\ntest-reliability:", 1)[1].split("\n\n")[0]
    assert "tests.reliability" in recipe, recipe

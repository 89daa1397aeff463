"""The Redis key layout has one owner (``StreamKeys``), and no id can make one family's key
equal another's (issue "Trust": ``X:events`` once named X's event list)."""

from __future__ import annotations

import inspect
import itertools
import re
from pathlib import Path

from contract.keys import StreamKeys

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("api", "scorer", "trainer", "vlaewatch", "deploy")
# Ids and lines as callers may send them: every separator the patterns allow.
IDS = ["X", "X:events", "X:1", "events", "a:b:c", "line:cam1", "by_time", "1", "live"]
LINES = ["cam1", "X", "events", "line", "lines"]


def _families(keys: StreamKeys) -> dict[str, list[str]]:
    """Every key of every family, for the ids and lines above."""
    out: dict[str, list[str]] = {}
    for name, member in inspect.getmembers(StreamKeys):
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            out[name] = [getattr(keys, name)]
            continue
        if not inspect.isfunction(member):
            continue
        params = list(inspect.signature(member).parameters)[1:]
        if params == ["item_id"] or params == ["version"] or params == ["digest"]:
            out[name] = [member(keys, i) for i in IDS]
        elif params == ["line"]:
            out[name] = [member(keys, ln) for ln in LINES]
        elif params == ["item_id", "scale"]:
            out[name] = [member(keys, i, s) for i in IDS for s in (1, 4)]
        elif params == ["current", "line"]:
            out[name] = [member(keys, c, ln) for c in (keys.thresholds, keys.pixel_thresholds)
                         for ln in LINES]  # fmt: skip
        else:
            raise AssertionError(f"StreamKeys.{name}{params}: add its ids to this test")
    return out


def test_no_two_families_share_a_key_whatever_the_id() -> None:
    families = _families(StreamKeys("vlaewatch"))
    assert len(families) >= 20, sorted(families)
    for (a, keys_a), (b, keys_b) in itertools.combinations(families.items(), 2):
        assert not set(keys_a) & set(keys_b), (a, b, set(keys_a) & set(keys_b))
    for name, keys in families.items():  # and within a family, one key per id
        assert len(set(keys)) == len(keys), name


def test_only_stream_keys_builds_keys_from_the_prefix() -> None:
    # Before, api/ built a dozen keys with f-strings of its own.
    builds = re.compile(r"f\"\{[\w.]*prefix\}:")
    found = [f"{path.relative_to(ROOT)}:{n}"
             for package in PRODUCT for path in sorted((ROOT / package).rglob("*.py"))
             if path != ROOT / "scorer" / "schemas.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if builds.search(line)]  # fmt: skip
    assert not found, found

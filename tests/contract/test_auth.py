"""The key ring compares in constant time (docs/reliability.md, "compared in constant time"):
the property behind it, not a timing, which a shared 2-core machine could not measure."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from contract import auth
from contract.auth import KeyRing, Principal

KEYS = {f"key-{i:02d}-0123456789abcdef": Principal(f"holder-{i}", "viewer") for i in range(7)}


def test_every_lookup_compares_every_held_digest_with_compare_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever the position of the match, or none: one ``hmac.compare_digest`` per held
    digest, in full (32 bytes against 32 bytes), and no early exit. A ``==``, a dict lookup or
    a ``return`` on the first match would each change the count or skip the function."""
    ring = KeyRing.of(KEYS)
    held = [hashlib.sha256(k.encode()).digest() for k in KEYS]
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keys = list(KEYS)
    # The first, a middle and the last key; a stranger; one a character off a held key; empty.
    lookups = [keys[0], keys[3], keys[-1], "stranger-0123456789", keys[0][:-1] + "x", ""]
    for key in lookups:
        calls.clear()
        found = ring.find(key)
        assert found == KEYS.get(key), key
        assert len(calls) == len(KEYS), (key, len(calls))
        presented = hashlib.sha256(key.encode()).digest()
        assert {a for a, _ in calls} == set(held), key  # each held digest, none twice
        assert all(b == presented for _, b in calls), key
        assert all(len(a) == len(b) == 32 for a, b in calls), key

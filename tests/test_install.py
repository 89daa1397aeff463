"""`make install` as the README promises it: idempotent, and at once when nothing changed."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = ROOT / ".venv" / ".installed-stamp"
UP_TO_DATE = "make: Nothing to be done for 'install'."


def _make(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``make ARGS`` in the repository as a user types it: not as a sub-make of `make test`
    (whose flags would add "Entering directory" lines), messages in English."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    start = time.monotonic()
    done = subprocess.run(
        ["make", *args],
        cwd=ROOT,
        env={**env, "LC_ALL": "C"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - start


def test_make_install_is_idempotent_and_returns_at_once() -> None:
    # The dry run first: were the stamp stale, the real run below would reinstall.
    dry, _ = _make("-n", "install")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == UP_TO_DATE, (
        f"`make install` would run commands (pyproject.toml newer than the stamp?):\n{dry.stdout}"
    )
    before = STAMP.stat().st_mtime_ns
    done, took = _make("install")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == UP_TO_DATE and "pip" not in done.stdout + done.stderr
    assert took < 10, f"make install took {took:.1f} s"
    assert STAMP.stat().st_mtime_ns == before

"""`vlaewatch demo` as `make demo` runs it, every default kept, started once per test session.

Its two models (fabric on cam1, the pill on cam2: the default parts, trained by Ray Train for
the demo's epochs) are the longest fits of the session. The demo's own test holds the running
demo to its summary, console and clean stop (tests/e2e/test_demo.py); the scorer's inspection
tests serve the same two checkpoints (tests/scorer/test_inspection.py), so that each fit is
paid for once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent / "vlaewatch"
# pytest-timeout counts a fixture's setup in the test that first asks for it: the tests that
# ask for ``demo_run`` take this mark, long enough for the demo's two fits (about 11 minutes
# on a quiet 2-core VM, more on a busy one) and what they do with it.
DEMO_TIMEOUT = pytest.mark.timeout(2400)


def free_port() -> int:
    """A free port below the ephemeral range (and above Ray's worker ports): the demo binds it
    minutes later, after training, and an ephemeral port may have gone to a Ray process by
    then (seen: "Failed to bind to address")."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 30_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-30000")


def demo_env(tmp_path: Path) -> tuple[dict[str, str], str, Path]:
    """The environment of a newcomer's shell: no Redis, no Ray, no keys configured; Ray's
    files under a short folder of their own (its socket paths), the home under ``tmp_path``."""
    ray_tmp = tempfile.mkdtemp(prefix="vwdemo", dir="/tmp")
    home = tmp_path / "home"
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "VLAEWATCH_HOME": str(home), "RAY_ADDRESS": ""}
    for name in ("REDIS_URL", "VLAEWATCH_API_KEYS"):
        env.pop(name, None)
    return env, ray_tmp, home


@dataclass
class DemoRun:
    """The default demo, running: its summary, where it keeps its files, and its stop."""

    proc: subprocess.Popen[str]
    home: Path
    ray_tmp: str
    api_port: int
    err_file: Path
    summary: dict[str, Any] = field(default_factory=dict)
    stderr: str | None = None

    def checkpoint(self, line: str) -> Path:
        """The model the demo trained for ``line``, in its model store."""
        return self.home / "models" / self.summary["model_versions"][line]

    def stop(self) -> str:
        """Ctrl-C, as a user stops it; its stderr as written (a progress bar's \\r kept)."""
        if self.stderr is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.stderr = self.err_file.read_bytes().decode()
        return self.stderr


def _summary_in_time(run: DemoRun, out: Path, timeout_s: float = 2100) -> dict[str, Any]:
    # Two lines' models of 150 epochs each: 400 s ran out for 100 epochs each on a shared
    # 2-core VM where a fit took 2.2 times as long as where the demo was first timed.
    deadline = time.monotonic() + timeout_s
    while not out.exists():
        assert run.proc.poll() is None, run.err_file.read_text()[-3000:]
        assert time.monotonic() < deadline, "no summary in time"
        time.sleep(0.5)
    while True:  # written whole, then renamed? Read until it parses.
        try:
            return dict(json.loads(out.read_text()))
        except json.JSONDecodeError:
            assert time.monotonic() < deadline, "the summary never parsed"
            time.sleep(0.2)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """`vlaewatch demo --summary-json OUT` on free ports, with every other default; yielded
    once the summary is written, while it keeps serving the console. Stopped at the end of the
    session unless a test stopped it first."""
    tmp_path = tmp_path_factory.mktemp("demo")
    env, ray_tmp, home = demo_env(tmp_path)
    out, err_file, api_port = tmp_path / "out.json", tmp_path / "demo.err", free_port()
    # stderr to a file, not a pipe: training prints more than a pipe holds unread.
    with err_file.open("w") as stderr:
        proc = subprocess.Popen(
            [
                str(BIN),
                "demo",
                "--summary-json",
                str(out),
                "--scorer-port",
                str(free_port()),
                "--api-port",
                str(api_port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    run = DemoRun(proc, home, ray_tmp, api_port, err_file)
    try:
        run.summary = _summary_in_time(run, out)
        yield run
    finally:
        run.stop()

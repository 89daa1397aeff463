"""`vlaewatch serve` as a user runs it, and the curl example of docs/http.md against it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from contract.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "vlaewatch"
INGEST = "ingest-key-of-line-1-0123"
# What --verbose adds to the terminal: Ray's INFO lines, Serve's (the command's and its
# controller's), and the replicas' (their access log), forwarded by Ray.
NOISE = (
    "Started a local Ray instance",
    "Started Serve in namespace",
    "(ServeController",
    "(ServeReplica",
    "POST /v1/score",
)


class Served:
    """`vlaewatch serve` on a cluster of its own, its stderr in a file."""

    def __init__(self, checkpoint: Path, home: Path, *flags: str) -> None:
        self.home, self.err, self.port = home, home.with_suffix(".err"), free_port()
        self.ray_tmp = tempfile.mkdtemp(prefix="vwray", dir="/tmp")
        # With a key ring, as a deployment has one: the line's client sends its ingest key.
        self.env = {
            **os.environ,
            "RAY_TMPDIR": self.ray_tmp,
            "VLAEWATCH_HOME": str(home),
            "RAY_ADDRESS": "",
            "VLAEWATCH_API_KEYS": f"{INGEST}:ingest:line-1",
            "INGEST_KEY": INGEST,
        }
        self.env.pop("REDIS_URL", None)
        # stderr to a file, not a pipe: --verbose writes more than a pipe holds unread.
        with self.err.open("w") as stderr:
            self.proc = subprocess.Popen(
                [
                    str(BIN),
                    "serve",
                    "--checkpoint",
                    str(checkpoint),
                    "--port",
                    str(self.port),
                    "--num-cpus",
                    "0.5",
                    *flags,
                ],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 180
        while True:
            assert self.proc.poll() is None, self.err.read_text()[-3000:]
            try:
                url = f"http://127.0.0.1:{self.port}/v1/health"
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "scorer did not come up"
            time.sleep(0.5)

    def interrupt(self) -> None:
        """Ctrl-C, once (a second one aborts the stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def stopped(self) -> str:
        """After ``interrupt``: a clean exit that leaves no process behind; its stderr."""
        self.proc.wait(timeout=120)
        text = self.err.read_text()
        assert self.proc.returncode == 0, text[-3000:]
        assert "stopping" in text
        for pattern in (self.ray_tmp, str(self.home / "redis")):
            left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
            assert left.stdout.strip() == "", f"processes left behind: {pattern}"
        return text


def test_serve_answers_the_documented_curl_and_stops_cleanly(
    checkpoint: Path, digits: Any, tmp_path: Path
) -> None:
    # Beside the default (quiet) scorer, one with --verbose: started together, their start-ups
    # overlap (a second one after it would add its whole start-up to the suite).
    quiet = Served(checkpoint, tmp_path / "home")
    verbose = Served(checkpoint, tmp_path / "verbose", "--verbose")
    try:
        quiet.wait_ready()
        verbose.wait_ready()
        Image.fromarray(digits.test.images[0, 0]).save(tmp_path / "digit.png")
        (tmp_path / "other.png").write_bytes(b"not a png")
        doc = (ROOT / "docs" / "http.md").read_text()
        command = re.search(r"^curl .*/v1/score$", doc, re.M)
        assert command, "docs/http.md lacks the curl example"
        for served in (quiet, verbose):
            line = command.group(0).replace("8000", str(served.port))
            out = subprocess.run(
                line,
                shell=True,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
                env=served.env,
            )
            body = json.loads(out.stdout)
            assert body["n_scored"] == 1 and body["n_failed"] == 1
            assert body["results"][0]["line"] == "cam1"
        # Without the key, nothing is scored.
        r = httpx.post(f"http://127.0.0.1:{quiet.port}/v1/score", files=[("files", b"x")])
        assert r.status_code == 401
        # The replica's access line reaches the verbose terminal through Ray's log monitor, a
        # moment later; the quiet one, scored first, has had longer to show its own.
        deadline = time.monotonic() + 30
        while "POST /v1/score" not in verbose.err.read_text():
            assert time.monotonic() < deadline, verbose.err.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        quiet.interrupt()
        verbose.interrupt()  # both stop at once
        quiet_err, verbose_err = quiet.stopped(), verbose.stopped()
    assert (quiet.home / "redis" / "appendonly.aof").exists()
    # Ray's, Serve's and the replicas' logs: in Ray's log folder by default, on the terminal
    # too with --verbose.
    for noise in NOISE:
        assert noise not in quiet_err, noise
        assert noise in verbose_err, noise
    assert "INFO " not in quiet_err
    assert "Ray logs in /" in quiet_err

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


def test_serve_answers_the_documented_curl_and_stops_cleanly(
    checkpoint: Path, digits: Any, tmp_path: Path
) -> None:
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="vwray", dir="/tmp")
    home = tmp_path / "home"
    # With a key ring, as a deployment has one: the line's client sends its ingest key.
    ingest = "ingest-key-of-line-1-0123"
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "VLAEWATCH_HOME": str(home), "RAY_ADDRESS": "",
           "VLAEWATCH_API_KEYS": f"{ingest}:ingest:line-1", "INGEST_KEY": ingest}  # fmt: skip
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [str(BIN), "serve", "--checkpoint", str(checkpoint), "--port", str(port),
         "--num-cpus", "0.5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "scorer did not come up"
            time.sleep(0.5)

        Image.fromarray(digits.test.images[0, 0]).save(tmp_path / "digit.png")
        (tmp_path / "other.png").write_bytes(b"not a png")
        doc = (ROOT / "docs" / "http.md").read_text()
        command = re.search(r"^curl .*/v1/score$", doc, re.M)
        assert command, "docs/http.md lacks the curl example"
        line = command.group(0).replace("8000", str(port))
        out = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, text=True,
                             check=True, timeout=60, env=env)  # fmt: skip
        body = json.loads(out.stdout)
        assert body["n_scored"] == 1 and body["n_failed"] == 1
        assert body["results"][0]["line"] == "cam1"
        # Without the key, nothing is scored.
        r = httpx.post(f"http://127.0.0.1:{port}/v1/score", files=[("files", b"x")])
        assert r.status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "stopping" in err
    assert (home / "redis" / "appendonly.aof").exists()
    for pattern in (ray_tmp, str(home / "redis")):
        left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        assert left.stdout.strip() == "", f"processes left behind: {pattern}"

"""A Ray cluster of two nodes on one machine (head + worker, `ray start` on loopback, as
docs/operations.md does across machines): `vlaewatch serve --address` joins it, Serve
replicas run on both nodes, and scoring works through the head."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from contract.redis_server import free_port

BIN = Path(sys.executable).parent


def _run(args: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_serve_replicas_on_two_nodes_score_through_the_head(
    checkpoint: Path, redis_server: Any, digits: Any, tmp_path: Path
) -> None:
    ray_tmp = tempfile.mkdtemp(prefix="vw2n", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "VLAEWATCH_HOME": str(tmp_path / "home")}
    # Multi-node needs Ray's normal networking; --node-ip-address keeps it on loopback.
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    env.pop("RAY_ADDRESS", None)
    env["RAY_AUTH_MODE"] = "token"  # every process of the cluster reads the same token file
    gcs, dashboard, serve_port = free_port(), free_port(), free_port()
    address = f"127.0.0.1:{gcs}"
    serve = None
    try:
        _run([str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=1",
              "--node-ip-address=127.0.0.1", f"--temp-dir={ray_tmp}",
              "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
              "--disable-usage-stats"], env)  # fmt: skip
        _run([str(BIN / "ray"), "start", f"--address={address}", "--num-cpus=1",
              "--node-ip-address=127.0.0.1", "--disable-usage-stats"], env)  # fmt: skip
        nodes = _run([str(BIN / "ray"), "list", "nodes", "--format", "json",
                      "--address", f"http://127.0.0.1:{dashboard}"], env)  # fmt: skip
        assert len(json.loads(nodes)) == 2, nodes
        # Two replicas of 0.75 CPU cannot share a 1-CPU node: one lands on each.
        serve = subprocess.Popen(
            [str(BIN / "vlaewatch"), "serve", "--checkpoint", str(checkpoint), "--address", address,
             "--redis-url", redis_server.url, "--replicas", "2", "--num-cpus", "0.75",
             "--port", str(serve_port), "--no-frames"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{serve_port}"
        deadline = time.monotonic() + 180
        while True:
            assert serve.poll() is None, serve.communicate()[1][-3000:]
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "scorer did not come up on the cluster"
            time.sleep(0.5)

        listed = _run([str(BIN / "ray"), "list", "actors", "--format", "json", "--detail",
                       "--address", f"http://127.0.0.1:{dashboard}", "--filter",
                       "class_name=ServeReplica:scorer:Scorer", "--filter", "state=ALIVE"],
                      env)  # fmt: skip
        nodes = {a["node_id"] for a in json.loads(listed)}
        assert len(nodes) == 2, listed[-2000:]

        buf = io.BytesIO()
        np.save(buf, digits.test.images[:64, 0])
        for _ in range(4):  # requests spread over both replicas
            r = httpx.post(f"{url}/v1/score", content=buf.getvalue(),
                           headers={"content-type": "application/x-npy"}, timeout=60)  # fmt: skip
            assert r.status_code == 200 and r.json()["n_scored"] == 64
    finally:
        if serve is not None:
            serve.send_signal(signal.SIGINT)
            serve.communicate(timeout=120)
        # Stop only this cluster's processes (`ray stop` would stop every Ray on the machine).
        for sig, pause in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.5)):
            subprocess.run(["pkill", f"-{sig.name[3:]}", "-f", ray_tmp])
            time.sleep(pause)
    assert serve.returncode == 0

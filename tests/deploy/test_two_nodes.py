"""A Ray cluster of two nodes on one machine (head + worker, `ray start` on loopback, as
docs/operations.md does across machines): `vlaewatch serve --address` joins it, Serve
replicas run on both nodes, and scoring works through the head."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.scale_out import loopback_cluster
from contract.redis_server import free_port

BIN = Path(sys.executable).parent


def _run(args: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_serve_replicas_on_two_nodes_score_through_the_head(
    checkpoint: Path, redis_server: Any, digits: Any, tmp_path: Path
) -> None:
    serve_port = free_port()
    serve = None
    # Head and worker, one CPU each, stopped at the end (bench/scale_out.py measures the same).
    with loopback_cluster() as cluster:
        env = {**cluster.env, "VLAEWATCH_HOME": str(tmp_path / "home")}
        try:
            nodes = _run([str(BIN / "ray"), "list", "nodes", "--format", "json",
                          "--address", cluster.dashboard], env)  # fmt: skip
            assert len(json.loads(nodes)) == 2, nodes
            # Two replicas of 0.75 CPU cannot share a 1-CPU node: one lands on each.
            serve = subprocess.Popen(
                [str(BIN / "vlaewatch"), "serve", "--checkpoint", str(checkpoint), "--address",
                 cluster.address, "--redis-url", redis_server.url, "--replicas", "2",
                 "--num-cpus", "0.75", "--port", str(serve_port), "--no-frames"],
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
                           "--address", cluster.dashboard, "--filter",
                           "class_name=ServeReplica:scorer:Scorer", "--filter", "state=ALIVE"],
                          env)  # fmt: skip
            nodes = {a["node_id"] for a in json.loads(listed)}
            assert len(nodes) == 2, listed[-2000:]

            buf = io.BytesIO()
            np.save(buf, digits.test.images[:64, 0])
            for _ in range(4):  # requests spread over both replicas
                r = httpx.post(f"{url}/v1/score", content=buf.getvalue(),
                               headers={"content-type": "application/x-npy"},
                               timeout=60)  # fmt: skip
                assert r.status_code == 200 and r.json()["n_scored"] == 64
        finally:
            if serve is not None:
                serve.send_signal(signal.SIGINT)
                serve.communicate(timeout=120)
    assert serve.returncode == 0

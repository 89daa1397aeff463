"""Scale-out on two Ray nodes: the scorer with 1 replica against 2, Ray Train with 1 worker
against 2.

The cluster is two nodes on loopback (``ray start --head``, then ``ray start --address``, as
docs/operations.md joins machines), each given one of this machine's CPUs, so that a replica or
a Train worker fills a node and a second one must go to the other node. Then:

- the scorer (``vlaewatch serve --address``, the digits default, 0.75 CPU a replica) with 1
  and then 2 replicas, loaded through the head's proxy with ``POST /v1/score`` at batch 1 from
  16 clients (per-request work: the proxy and the replica's Python) and at batch 512 from 4
  (the model's work). While each load runs, the CPU every process of the run used is summed
  by role (replicas, proxy, Redis, Ray's own daemons, the load's clients): the role that runs
  out of its share is the bottleneck;
- ``vlaewatch train --address`` on the bundled digits with 1 worker and then 2 (one a node,
  data parallel over gloo), the same epochs: wall time and the median epoch.

On one 2-core machine both nodes share the same two cores with the clients and Redis, so a
second node gives at most what the first node left idle; across machines each node brings its
own cores. ``bench.throughput`` (``make bench-speed``) runs this too, for speed.md.

    python -m bench.scale_out [--seconds 10] [--epochs 10]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, command_line, write_report

BIN = Path(sys.executable).parent
LOADS = ((1, 16), (512, 4))  # (batch, clients): per-request work, then the model's


def _run(args: list[str], env: dict[str, str], timeout: float = 600) -> str:
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {out.stderr[-2000:]}")
    return out.stdout


@dataclass(frozen=True)
class LoopbackCluster:
    """A running two-node cluster: its GCS address, its dashboard's URL, and the environment
    its commands need."""

    address: str
    dashboard: str
    env: dict[str, str]


@contextmanager
def loopback_cluster(cpus_per_node: int = 1) -> Iterator[LoopbackCluster]:
    """A head and a worker node on 127.0.0.1. Only this cluster's processes are stopped at the
    end (``ray stop`` would stop every Ray on the machine)."""
    from contract.redis_server import free_port

    ray_tmp = tempfile.mkdtemp(prefix="vwso", dir="/tmp")
    # Every process of the cluster reads the same token file.
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # multi-node needs Ray's networking
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = free_port(), free_port()
    address = f"127.0.0.1:{gcs}"
    try:
        _run([str(BIN / "ray"), "start", "--head", f"--port={gcs}", f"--num-cpus={cpus_per_node}",
              "--node-ip-address=127.0.0.1", f"--temp-dir={ray_tmp}",
              "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
              "--disable-usage-stats"], env)  # fmt: skip
        _run([str(BIN / "ray"), "start", f"--address={address}", f"--num-cpus={cpus_per_node}",
              "--node-ip-address=127.0.0.1", "--disable-usage-stats"], env)  # fmt: skip
        yield LoopbackCluster(address, f"http://127.0.0.1:{dashboard}", env)
    finally:
        for sig, pause in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.5)):
            subprocess.run(["pkill", f"-{sig.name[3:]}", "-f", ray_tmp])
            time.sleep(pause)


def _role(cmdline: str, name: str) -> str | None:
    if "ServeReplica" in cmdline:
        return "replicas"
    if "ProxyActor" in cmdline:
        return "proxy"
    if name == "redis-server":
        return "redis"
    if any(k in cmdline for k in ("raylet", "gcs_server", "ServeController", "ray::", "ray/")):
        return "ray"
    return None


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every process with a role, this one's as the clients'."""
    import psutil

    out: dict[int, tuple[str, float]] = {}
    for p in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
        info = p.info
        if info["cpu_times"] is None:
            continue
        role = "clients" if info["pid"] == os.getpid() else _role(
            " ".join(info["cmdline"] or []), info["name"] or "")  # fmt: skip
        if role:
            out[info["pid"]] = (role, info["cpu_times"].user + info["cpu_times"].system)
    return out


def cores_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                  seconds: float) -> dict[str, float]:  # fmt: skip
    """Mean cores each role used between two ``_cpu_seconds`` readings ``seconds`` apart."""
    cores: dict[str, float] = {}
    for pid, (role, t) in after.items():
        cores[role] = cores.get(role, 0.0) + (t - before.get(pid, (role, t))[1]) / seconds
    return {k: round(v, 2) for k, v in sorted(cores.items())}


def _serve(address: str, env: dict[str, str], checkpoint: Path, redis_url: str, replicas: int,
           port: int) -> subprocess.Popen[str]:  # fmt: skip
    import httpx

    proc = subprocess.Popen(
        [str(BIN / "vlaewatch"), "serve", "--checkpoint", str(checkpoint), "--address", address,
         "--redis-url", redis_url, "--replicas", str(replicas), "--num-cpus", "0.75",
         "--port", str(port), "--no-frames"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"vlaewatch serve exited: {proc.communicate()[1][-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the scorer did not come up on the two-node cluster")
        time.sleep(0.5)


def scorer_rows(address: str, env: dict[str, str], checkpoint: Path, images: np.ndarray,
                redis_url: str, seconds: float) -> list[dict[str, Any]]:  # fmt: skip
    """Images/s of 1 and 2 replicas at each of ``LOADS``, with the cores each role used."""
    from bench.throughput import post_load
    from contract.redis_server import free_port

    rows = []
    for replicas in (1, 2):
        port = free_port()
        proc = _serve(address, env, checkpoint, redis_url, replicas, port)
        url = f"http://127.0.0.1:{port}"
        try:
            for batch, clients in LOADS:
                buf = io.BytesIO()
                np.save(buf, np.concatenate([images] * (batch // len(images) + 1))[:batch, 0])
                post_load(url, buf.getvalue(), batch, clients, 2.0)  # warm-up: not measured
                before, t0 = _cpu_seconds(), time.perf_counter()
                load = post_load(url, buf.getvalue(), batch, clients, seconds)
                cores = cores_by_role(before, _cpu_seconds(), time.perf_counter() - t0)
                rows.append({"replicas": replicas, "batch": batch, "clients": clients, **load,
                             "cores": cores})  # fmt: skip
                print(
                    f"scale-out: {replicas} replica(s), batch {batch}: "
                    f"{load['images_per_s']:.0f} images/s, cores {cores}",
                    file=sys.stderr,
                )
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
    return rows


def train_rows(address: str, env: dict[str, str], epochs: int, work: Path
               ) -> list[dict[str, Any]]:  # fmt: skip
    """`vlaewatch train` on the cluster with 1 and then 2 workers of one CPU each."""
    rows = []
    for workers in (1, 2):
        out = work / f"train-{workers}"
        t0 = time.perf_counter()
        _run([str(BIN / "vlaewatch"), "train", "--address", address, "--workers", str(workers),
              "--cpus-per-worker", "1", "--epochs", str(epochs), "--out", str(out)], env,
             timeout=3600)  # fmt: skip
        wall = time.perf_counter() - t0
        history = json.loads((out / "model_card.json").read_text())["history"]
        epoch_s = sorted(h["epoch_s"] for h in history)[len(history) // 2]
        rows.append({"workers": workers, "epochs": epochs, "wall_s": wall, "epoch_s": epoch_s})
        print(f"scale-out: train with {workers} worker(s): {wall:.1f} s, "
              f"epoch {epoch_s:.2f} s", file=sys.stderr)  # fmt: skip
    return rows


def scale_out(checkpoint: Path, images: np.ndarray, seconds: float, epochs: int, work: Path
              ) -> dict[str, Any]:  # fmt: skip
    """Both measurements on one two-node cluster, against one bundled Redis."""
    from contract.redis_server import EmbeddedRedis

    with EmbeddedRedis(work / "redis") as redis_server, loopback_cluster() as cluster:
        env = {**cluster.env, "VLAEWATCH_HOME": str(work / "home")}
        scorer = scorer_rows(cluster.address, env, checkpoint, images, redis_server.url, seconds)
        training = train_rows(cluster.address, env, epochs, work) if epochs else []
        return {"nodes": 2, "cpus_per_node": 1, "scorer": scorer, "training": training}


def rows_markdown(report: dict[str, Any]) -> list[str]:
    """The scale-out section of a report: images/s and the gain of the second node."""
    lines = ["| scorer | batch | clients | images/s | p50 ms | p99 ms | gain | cores used "
             "(replicas / proxy / Redis / Ray / clients) | busiest |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    one = {r["batch"]: r["images_per_s"] for r in report["scorer"] if r["replicas"] == 1}
    for r in report["scorer"]:
        c = r["cores"]
        used = " / ".join(f"{c.get(k, 0.0):.2f}" for k in
                          ("replicas", "proxy", "redis", "ray", "clients"))  # fmt: skip
        lines.append(f"| {r['replicas']} replica{'s' if r['replicas'] > 1 else ''} on "
                     f"{r['replicas']} node{'s' if r['replicas'] > 1 else ''} | {r['batch']} | "
                     f"{r['clients']} | {r['images_per_s']:,.0f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['images_per_s'] / one[r['batch']]:.2f}× | "
                     f"{used} | {max(c, key=lambda k: c[k])} |")  # fmt: skip
    if report["training"]:
        lines += ["", "| Ray Train | epochs | wall s | s/epoch (median) | speed-up |",
                  "|---|---|---|---|---|"]  # fmt: skip
        base = report["training"][0]["epoch_s"]
        for r in report["training"]:
            lines.append(f"| {r['workers']} worker{'s' if r['workers'] > 1 else ''} on "
                         f"{r['workers']} node{'s' if r['workers'] > 1 else ''} | {r['epochs']} | "
                         f"{r['wall_s']:.1f} | {r['epoch_s']:.2f} | "
                         f"{base / r['epoch_s']:.2f}× |")  # fmt: skip
    return lines


def markdown(report: dict[str, Any]) -> str:
    return "\n".join(["# Scale-out on two nodes", "",
                      f"Command: `{report['command']}`; wall {report['wall_s']:.0f} s on "
                      f"{report['machine']}.", "", *rows_markdown(report)]) + "\n"  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="per scorer load")
    p.add_argument("--epochs", type=int, default=10, help="per training run; 0: no training")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    import platform

    from bench.common import default_checkpoint
    from trainer.data import load_digits

    t0 = time.monotonic()
    machine = f"{os.cpu_count()} CPUs, {platform.machine()}"
    report: dict[str, Any] = {"command": command_line("bench.scale_out", argv), "machine": machine}
    with tempfile.TemporaryDirectory() as tmp:
        digits = load_digits()
        checkpoint = default_checkpoint(digits, "conv", Path(tmp) / "model")
        report |= scale_out(checkpoint, digits.test.images, args.seconds, args.epochs, Path(tmp))
    report["wall_s"] = time.monotonic() - t0
    write_report(args.out, "scale_out", report, markdown)
    return report


if __name__ == "__main__":
    main()

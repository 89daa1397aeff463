"""Two scorer settings against each other in one session, window by window.

This VM's speed drifts by tens of percent within an hour (bench/README.md, "Speed"), so two
bench runs minutes apart cannot tell a 5 % change from the drift. Here one session (Redis, Ray,
Serve, the API) takes frames at a steady rate while the replica switches between two
``user_config`` settings (``--a``, ``--b``: JSON objects of ``ScorerConfig`` fields) every
``--window`` seconds in ABBA order, through its ``reconfigure``, as a live update of the
deployment does. Each window reports the CPU of every process of the service and of the whole
machine (without the host's steal, which it reports apart), and the XADD → scored latency of
the frames sent in it (read off the score stream).

    python -m bench.ab --b '{"batch_wait_timeout_s": 0.005}' [--rate 2000] [--pairs 4]
    make bench-ab AB_B='{"batch_wait_timeout_s": 0.005}' AB_ARGS='--pairs 2'

Writes bench/results/<stem>.json and .md (stem ``ab`` by default). A setting that is not a
``user_config`` field (code, the deployment's size) needs a run of the speed bench instead.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.common import (
    CLIENT_NICE,
    RESULTS,
    command_line,
    default_checkpoint,
    png_frames,
    send_frames,
    steal_seconds,
    write_report,
)

SETTLE_S = 2.0  # after a switch, before a window's readings start


def abba(pairs: int) -> list[str]:
    """The order of the windows: AB, BA, AB, ... so that a drift in time favours neither."""
    return [w for i in range(pairs) for w in ("AB" if i % 2 == 0 else "BA")]


def window_latency(windows: list[dict[str, Any]], scored: list[tuple[float, float]]) -> None:
    """Add to each window (``from``, ``to``: wall-clock seconds) the count, p50 and p99 in ms of
    the ``scored`` (ingested, scored) pairs whose frame was ingested in it."""
    ingested = np.array([s[0] for s in scored])
    ms = np.array([1000 * (s[1] - s[0]) for s in scored])
    for w in windows:
        sel = ms[(ingested >= w["from"]) & (ingested < w["to"])]
        w["frames"] = len(sel)
        w["p50_ms"] = float(np.percentile(sel, 50)) if len(sel) else None
        w["p99_ms"] = float(np.percentile(sel, 99)) if len(sel) else None


def summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting: mean CPU of the replica and of the machine, median p50, every p99; and in
    how many of the pairs (windows 2k and 2k+1) B used less replica CPU than A."""
    out: dict[str, Any] = {}
    for name in "AB":
        ws = [w for w in windows if w["setting"] == name]
        out[name] = {
            "replica_cores": statistics.mean(w["cpu"]["serve replica"] for w in ws),
            "machine_cores": statistics.mean(w["machine_cores"] for w in ws),
            "steal_cores": statistics.mean(w.get("steal_cores", 0.0) for w in ws),
            "p50_ms": statistics.median(w["p50_ms"] for w in ws if w["p50_ms"] is not None),
            "p99_ms": [w["p99_ms"] for w in ws],
        }
    pairs = [windows[i : i + 2] for i in range(0, len(windows) - 1, 2)]
    by = [{w["setting"]: w["cpu"]["serve replica"] for w in p} for p in pairs]
    out["pairs_b_lower_replica_cpu"] = sum(p["B"] < p["A"] for p in by)
    out["pairs"] = len(by)
    return out


def _read_scores(redis_url: str, stream: str, stop: Any, out: Any) -> None:
    """In a process of its own at the clients' priority: every score entry's (ingested,
    scored) time until ``stop``, then sent back."""
    import redis

    os.nice(CLIENT_NICE)
    client, last = redis.Redis.from_url(redis_url), "$"
    got: list[tuple[float, float]] = []
    while not stop.is_set():
        reply: Any = client.xread({stream: last}, count=5000, block=200)
        for _, entries in reply or []:
            for eid, fields in entries:
                got.append((float(fields[b"ts_ingested"]), float(fields[b"ts_scored"])))
                last = eid
    out.send(got)


def _cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for role, p in procs.items():
        try:
            t = p.cpu_times()
            out[role] = t.user + t.system
        except psutil.Error:
            out[role] = float("nan")
    return out


def _machine_busy() -> float:
    """CPU seconds this VM's processes used: busy time without the hypervisor's steal."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0)


def run_windows(redis_url: str, prefix: str, pngs: list[bytes], procs: dict[str, psutil.Process],
                switch: Any, args: argparse.Namespace) -> list[dict[str, Any]]:  # fmt: skip
    """Frames at ``args.rate`` through the warm-up and every window; ``switch(name)`` before
    each window. Returns the windows with their CPU readings and latencies."""
    import redis

    ctx = mp.get_context("spawn")
    stop, (receive, send) = ctx.Event(), ctx.Pipe(duplex=False)
    reader = ctx.Process(target=_read_scores, args=(redis_url, f"{prefix}:scores", stop, send),
                         daemon=True)  # fmt: skip
    reader.start()
    client = redis.Redis.from_url(redis_url)
    order = abba(args.pairs)
    total = args.warmup + len(order) * args.window + 1
    frames = (client, prefix, pngs, "ab", args.rate, total, "ab", 0.005)
    sender = threading.Thread(target=send_frames, args=frames, daemon=True)
    sender.start()
    time.sleep(args.warmup)
    windows: list[dict[str, Any]] = []
    for name in order:
        switch(name)
        time.sleep(SETTLE_S)
        c0, m0, s0, t0 = _cpu_seconds(procs), _machine_busy(), steal_seconds(), time.time()
        time.sleep(args.window - SETTLE_S)
        c1, m1, s1, t1 = _cpu_seconds(procs), _machine_busy(), steal_seconds(), time.time()
        windows.append({"setting": name, "from": t0, "to": t1,
                        "cpu": {r: (c1[r] - c0[r]) / (t1 - t0) for r in c0},
                        "machine_cores": (m1 - m0) / (t1 - t0),
                        "steal_cores": (s1 - s0) / (t1 - t0)})  # fmt: skip
        print(f"{name}: replica {windows[-1]['cpu']['serve replica']:.3f} cores", file=sys.stderr)
    sender.join()
    time.sleep(2.0)
    stop.set()
    scored = receive.recv() if receive.poll(30) else []
    reader.join(10)
    window_latency(windows, scored)
    return windows


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [
        f"A: `{json.dumps(report['a'])}`; B: `{json.dumps(report['b'])}`; frames at "
        f"{report['rate']:.0f}/s, windows of {report['window_s']:.0f} s (the first "
        f"{SETTLE_S:.0f} s after each switch not read), ABBA order.",
        "",
        "| setting | replica, cores | machine, cores | steal, cores | p50 ms (median) | "
        "p99 ms, each window |",
        "|---|---|---|---|---|---|",
    ]
    for name in "AB":
        r = s[name]
        p99s = ", ".join(f"{v:.0f}" if v is not None else "-" for v in r["p99_ms"])
        lines.append(f"| {name} | {r['replica_cores']:.3f} | {r['machine_cores']:.2f} | "
                     f"{r['steal_cores']:.2f} | {r['p50_ms']:.1f} | {p99s} |")  # fmt: skip
    lines += ["", f"B used less replica CPU than A in {s['pairs_b_lower_replica_cpu']} of "
              f"{s['pairs']} pairs.", "", "| window | setting | frames | p50 ms | p99 ms | "
              + " | ".join(report["roles"]) + " | machine | steal |",
              "|---" * (7 + len(report["roles"])) + "|"]  # fmt: skip
    for i, w in enumerate(report["windows"]):
        cpu = " | ".join(f"{w['cpu'][r]:.3f}" for r in report["roles"])
        lines.append(f"| {i + 1} | {w['setting']} | {w['frames']} | {_ms(w['p50_ms'])} | "
                     f"{_ms(w['p99_ms'])} | {cpu} | {w['machine_cores']:.2f} | "
                     f"{w.get('steal_cores', 0.0):.2f} |")  # fmt: skip
    lines += ["", f"Command: `{report['command']}`; {report['machine']}."]
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--a", default="{}", help="setting A: ScorerConfig fields as JSON")
    p.add_argument("--b", default="{}", help="setting B: ScorerConfig fields as JSON")
    p.add_argument("--checkpoint", type=Path, help="default: a digits model trained here")
    p.add_argument("--rate", type=float, default=2000.0, help="frames/s, 10 %% anomalous")
    p.add_argument("--window", type=float, default=20.0, help="seconds a window")
    p.add_argument("--pairs", type=int, default=4, help="AB pairs (windows: twice this)")
    p.add_argument("--warmup", type=float, default=45.0, help="seconds of frames first")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--stem", default="ab")
    args = p.parse_args(argv)
    if args.window <= SETTLE_S:
        p.error(f"--window must be longer than {SETTLE_S} s")
    given: dict[str, dict[str, Any]] = {}
    for name in ("a", "b"):
        try:
            given[name] = json.loads(getattr(args, name))
        except json.JSONDecodeError as exc:
            p.error(f"--{name} is not JSON: {exc}")
        if not isinstance(given[name], dict):
            p.error(f"--{name} must be a JSON object of ScorerConfig fields")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    import torch
    from ray import serve

    from bench.soak import service_processes
    from bench.throughput import against_api, line_mix
    from contract.redis_server import EmbeddedRedis, free_port
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import APP_NAME, deploy, shutdown
    from trainer.data import load_digits
    from vlaewatch import cluster

    a, b = given["a"], given["b"]
    digits = load_digits()
    is_normal = digits.test.labels.astype(str) == "0"
    pngs = png_frames(line_mix(digits.test.images[is_normal], digits.test.images[~is_normal],
                               0.1), 500)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or default_checkpoint(digits, "conv", Path(tmp) / "model")
        with EmbeddedRedis(Path(tmp) / "redis") as redis_server:
            cluster.connect(num_cpus=os.cpu_count() or 2)
            try:
                prefix = f"ab{time.time_ns()}"
                base = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url,
                                    retention_s=60, scores_maxlen=20_000,
                                    key_prefix=prefix)  # fmt: skip
                settings = {name: ScorerConfig.model_validate(base.model_dump() | fields)
                            for name, fields in (("A", a), ("B", b))}  # fmt: skip
                url = deploy(settings["A"], DeploymentConfig(num_cpus=os.cpu_count() or 2),
                             port=free_port())  # fmt: skip
                handle = serve.get_deployment_handle("Scorer", APP_NAME)

                def switch(name: str) -> None:
                    handle.reconfigure.remote(settings[name].model_dump()).result()

                assert redis_server.process is not None
                redis_pid = redis_server.process.pid

                def work(api_url: str, api_pid: int) -> dict[str, Any]:
                    procs = service_processes({"redis-server": redis_pid, "api": api_pid})
                    return {"windows": run_windows(redis_server.url, prefix, pngs, procs, switch,
                                                   args), "roles": sorted(procs)}  # fmt: skip

                report = against_api(redis_server.url, prefix, url, Path(tmp), work)
            finally:
                shutdown()
                cluster.shutdown()
    report |= {
        "command": command_line("bench.ab", argv),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, torch {torch.__version__}, "
        f"cuda {torch.cuda.is_available()}, frames sender at nice {CLIENT_NICE}",
        "a": a, "b": b, "rate": args.rate, "window_s": args.window,
        "summary": summary(report["windows"]),
    }  # fmt: skip
    write_report(args.out, args.stem, report, markdown)
    return report


if __name__ == "__main__":
    main()

"""Training memory: a folder of N and then 10·N images through Ray Data, beside the in-memory
reader.

The folder is generated: 64 × 64 colour PNGs, every file distinct (a pool of smooth
textures, each file one of them shifted, tinted and lit its own way), flat (one class,
'normal'). Each run is ``vlaewatch train --dataset folder --reader stream|memory`` on its own
local Ray cluster, two Train workers of one CPU each, a small model (the deck's MLP VLAE,
Gaussian likelihood, no denoiser), one epoch unless asked. While it runs, the resident memory
(RSS) of the driver and of every process under it is sampled every 0.25 s, each process by
role: the driver (the ``vlaewatch train`` process), the Train workers, Ray Data's task
workers, Ray's own daemons (the raylet holds the object store's pages). Its time per epoch is
the loop's own (the card's history).

The in-memory reader holds the whole folder twice in the driver (uint8, then float32) and
``ray.put``s the float32 array, which every worker maps: at 10·N = 200,000 images that is 2.5
plus 9.8 GB in the driver and 9.8 GB of object store, more than this machine should be asked
for. It runs at N and 2·N (``--memory-sizes``), which shows its slope.

    python -m bench.training_memory [--n 20000] [--epochs 1] [--memory-sizes 1,2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, Watch, command_line, write_report

BIN = Path(sys.executable).parent
SIDE = 64
POOL = 64  # distinct base textures
GROWTH_GOAL = 1.5  # peak RSS from N to 10·N, driver and each worker


def _pool(seed: int = 0) -> np.ndarray:
    """Smooth colour textures (POOL, SIDE, SIDE, 3) in [0, 1]: low-frequency noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((POOL, 8, 8, 3))
    return np.kron(coarse, np.ones((1, SIDE // 8, SIDE // 8, 1)))  # blocky, then varied below


def _write_range(folder: str, start: int, stop: int) -> int:
    """Files start..stop-1: a pool texture rolled, tinted and lit by the file's own seed."""
    from PIL import Image

    pool, written = _pool(), 0
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        im = np.roll(pool[i % POOL], tuple(rng.integers(0, SIDE, 2)), axis=(0, 1))
        light = 0.7 + 0.3 * (rng.random() * xx + rng.random() * yy)[..., None]
        tint = 0.8 + 0.4 * rng.random(3)
        arr = np.clip(im * light * tint * 255, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        (Path(folder) / f"{i:07d}.png").write_bytes(buf.getvalue())
        written += 1
    return written


def make_folder(folder: Path, n: int, start: int = 0) -> None:
    """Files ``start``..``n-1`` of the generated folder (a folder of N grows to 10·N)."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [(str(folder), a, min(n, a + 5_000)) for a in range(start, n, 5_000)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(_write_range, *zip(*chunks, strict=True)))


ROLES = ("ray", "data_task", "train_worker", "driver")  # a process keeps the latest it had


def _role(cmdline: str) -> str:
    """A Ray process's role from its title: a Train worker, a Ray Data task (a worker running
    a read or map task), or Ray's own (daemons, controllers, idle workers)."""
    if "RayTrainWorker" in cmdline:
        return "train_worker"
    if cmdline.startswith("ray::") and any(k in cmdline for k in ("Read", "MapBatches",
                                                                   "decode_batch")):  # fmt: skip
        return "data_task"
    return "ray"


class PeakRSS(Watch):
    """Peak RSS of a process and everything under it, per process, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        super().__init__(every_s, "peak-rss")
        self.pid = pid
        self.peaks: dict[int, tuple[str, int]] = {}
        self.titles: dict[int, str] = {}  # each process's title (its role's, once it has one)

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:  # the run has ended
            return
        for p in procs:
            try:
                rss = p.memory_info().rss
                title = " ".join(p.cmdline()).strip()
            except psutil.Error:  # gone, or a zombie, since the listing
                continue
            role = "driver" if p.pid == self.pid else _role(title)
            old_role, old = self.peaks.get(p.pid, (role, 0))
            # A worker that once was a Train worker or ran a data task keeps that role.
            keep = max(role, old_role, key=ROLES.index)
            self.peaks[p.pid] = (keep, max(old, rss))
            if role == keep:  # its title in the role it is reported in
                self.titles[p.pid] = title[:60]

    def largest_ray(self) -> tuple[str, float]:
        """The title and peak RSS in MB of Ray's own largest process."""
        pid = max((p for p, (r, _) in self.peaks.items() if r == "ray"),
                  key=lambda p: self.peaks[p][1])  # fmt: skip
        return self.titles.get(pid, "?"), round(self.peaks[pid][1] / 2**20, 1)

    def by_role(self) -> dict[str, list[float]]:
        """Peak RSS in MB of each process of a role, largest first."""
        out: dict[str, list[float]] = {}
        for role, rss in self.peaks.values():
            out.setdefault(role, []).append(round(rss / 2**20, 1))
        return {k: sorted(v, reverse=True) for k, v in sorted(out.items())}


def train_run(folder: Path, reader: str, epochs: int, work: Path) -> dict[str, Any]:
    """One ``vlaewatch train`` on the folder; its peaks, wall time and epoch time."""
    out = work / f"model-{reader}-{time.monotonic_ns()}"
    cmd = [str(BIN / "vlaewatch"), "train", "--dataset", "folder", "--image-folder", str(folder),
           "--image-size", str(SIDE), "--channels", "3", "--reader", reader, "--arch", "mlp",
           "--likelihood", "gaussian", "--score-kind", "elbo", "--no-denoiser",
           "--batch-size", "256", "--epochs", str(epochs), "--workers", "2",
           "--cpus-per-worker", "1", "--out", str(out),
           "--storage-path", str(work / "runs")]  # fmt: skip
    log = (work / f"{out.name}.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    with PeakRSS(proc.pid) as peaks:
        code = proc.wait(timeout=7200)
    wall = time.perf_counter() - t0
    log.close()
    if code != 0:
        tail = (work / f"{out.name}.log").read_text()[-3000:]
        raise RuntimeError(f"train failed ({code}): {tail}")
    card = json.loads((out / "model_card.json").read_text())
    history = card["history"]
    roles = peaks.by_role()
    row = {
        "reader": reader,
        "images": int(sum(1 for _ in folder.iterdir())),
        "n_train": card["dataset"]["n_train"],
        "epochs": len(history),
        "epoch_s": sorted(h["epoch_s"] for h in history)[len(history) // 2],
        "wall_s": wall,
        "driver_mb": roles.get("driver", [0.0])[0],
        "train_workers_mb": roles.get("train_worker", [])[:2],
        "data_task_mb": roles.get("data_task", [0.0])[0] if roles.get("data_task") else None,
        "ray_max_mb": roles.get("ray", [0.0])[0],
        "ray_max_process": peaks.largest_ray()[0],
        "peaks_mb": roles,
    }
    print(f"train-memory: {reader} {row['images']} images: epoch {row['epoch_s']:.1f} s, "
          f"driver {row['driver_mb']:.0f} MB, workers {row['train_workers_mb']} MB",
          file=sys.stderr)  # fmt: skip
    return row


def markdown(report: dict[str, Any]) -> str:
    rows = report["runs"]
    lines = [
        "# Training memory: Ray Data against the in-memory reader", "",
        f"Command: `{report['command']}`; wall {report['wall_s']:.0f} s on {report['machine']}. "
        f"64 × 64 colour PNGs, two Train workers of one CPU each, the MLP VLAE, "
        f"{report['epochs']} epoch(s); peak RSS sampled every 0.25 s.", "",
        "| reader | images | trained on | s / epoch | ms / image | driver MB | Train workers MB | "
        "largest data task MB | Ray's largest other process MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        workers = " / ".join(f"{v:,.0f}" for v in r["train_workers_mb"])
        data = "–" if r["data_task_mb"] is None else f"{r['data_task_mb']:,.0f}"
        lines.append(f"| {r['reader']} | {r['images']:,} | {r['n_train']:,} | "
                     f"{r['epoch_s']:.1f} | {1000 * r['epoch_s'] / r['n_train']:.2f} | "
                     f"{r['driver_mb']:,.0f} | {workers} | {data} | {r['ray_max_mb']:,.0f} "
                     f"(`{r['ray_max_process']}`) |")  # fmt: skip
    g = report["growth"]
    lines += ["", f"From N to 10·N through Ray Data (goal: peak RSS < {GROWTH_GOAL}×, "
              "epoch time about 10×):", "",
              f"- driver {g['driver']:.2f}×, Train workers {g['train_workers']:.2f}× (the "
              f"larger), epoch time {g['epoch']:.1f}× for {g['images']:.0f}× the images: "
              f"{'met' if g['met'] else 'NOT met'}"]  # fmt: skip
    if "memory" in g:
        lines.append(f"- the in-memory reader from N to {g['memory']['images']:.0f}·N: driver "
                     f"{g['memory']['driver']:.2f}×, Train workers "
                     f"{g['memory']['train_workers']:.2f}×")  # fmt: skip
    return "\n".join(lines) + "\n"


def growth(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak RSS and epoch-time ratios, largest folder against smallest, per reader."""

    def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
        a, b = rows[0], rows[-1]
        return {"images": b["images"] / a["images"], "driver": b["driver_mb"] / a["driver_mb"],
                "train_workers": max(b["train_workers_mb"]) / max(a["train_workers_mb"]),
                "epoch": b["epoch_s"] / a["epoch_s"]}  # fmt: skip

    stream = ratios([r for r in runs if r["reader"] == "stream"])
    stream["met"] = stream["driver"] < GROWTH_GOAL and stream["train_workers"] < GROWTH_GOAL
    memory = [r for r in runs if r["reader"] == "memory"]
    return stream | ({"memory": ratios(memory)} if len(memory) > 1 else {})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000, help="N: the smaller folder's images")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--memory-sizes", default="1,2",
                   help="multiples of N the in-memory reader runs at ('' for none)")  # fmt: skip
    p.add_argument("--work", type=Path, help="where the folders go (default: a temporary one)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    t0 = time.monotonic()
    memory_sizes = [int(v) for v in args.memory_sizes.split(",") if v.strip()]
    report: dict[str, Any] = {"command": command_line("bench.training_memory", argv),
                              "machine": f"{os.cpu_count()} CPUs, {platform.machine()}",
                              "n": args.n, "epochs": args.epochs, "runs": []}  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work, folder = Path(tmp), Path(tmp) / "parts"
        made = 0
        for k in sorted({1, *memory_sizes, 10}):
            make_folder(folder, k * args.n, start=made)
            made = k * args.n
            print(f"train-memory: folder of {made} images", file=sys.stderr)
            if k in memory_sizes:
                report["runs"].append(train_run(folder, "memory", args.epochs, work))
            if k in (1, 10):
                report["runs"].append(train_run(folder, "stream", args.epochs, work))
    report["growth"] = growth(report["runs"])
    report["wall_s"] = time.monotonic() - t0
    write_report(args.out, "training_memory", report, markdown)
    return report


if __name__ == "__main__":
    main()

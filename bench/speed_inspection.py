"""Speed at inspection sizes: the default model for generated parts, raw, over HTTP, on the
frames stream, end to end, and what each retained frame costs in Redis and the blob store.

For each ``category:side`` of ``trainer.inspection``, the model ``vlaewatch train`` picks for
those images (a SpatialVLAE scored by the ``local`` anomaly map), trained for a few epochs
(its speed does not depend on how well it is trained), is measured as ``bench.throughput``
measures the digits default:
- the raw model in-process (batched forward + score) at each batch size;
- with the scorer consuming the frames stream (``--image-store auto``, a blob folder):
  Redis's and the blob store's growth per frame over a burst of PNG frames, the frames
  stream's sustained rate, and the alerts' end-to-end latency at half of it, through
  ``vlaewatch api``;
- ``POST /v1/score`` with N×H×W(×C) NPY bodies through the Ray Serve proxy from 1, 4 and 16
  concurrent clients, each sweep bracketed by two raw readings (``vs_raw``).
The digits default (a ConvVLAE scored by ``elbo_per_tv``) is measured raw in the same run,
beside it. ``bench.throughput`` (``make bench-speed``) runs ``measure`` too, for speed.md.

    python -m bench.speed_inspection [--sizes tiles:128,metal:256] [--seconds 5] [--no-frames]

Writes bench/results/speed_inspection.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench.common import (
    RESULTS,
    command_line,
    default_checkpoint,
    png_frames,
    send_frames,
    write_report,
)
from bench.throughput import http_sweep, raw_model

if TYPE_CHECKING:
    from trainer.inspection import InspectionSet

GOALS = {"64": 0.25, "512": 0.5}  # HTTP images/s over raw, as for the digits default
# Larger images are measured at the batch sizes that hold at most as many pixels as 512 of
# 64 x 64: a 128 x 128 colour model scores about 30 images/s on 2 CPUs, so a batch of 512
# from 16 clients would wait minutes per request.
MAX_BATCH_PIXELS = 512 * 64 * 64


@dataclass(frozen=True)
class Knobs:
    """How long and how hard each step of ``measure`` runs."""

    train_epochs: int = 2
    seconds: float = 5.0  # per raw, HTTP or frames point
    batches: tuple[int, ...] = (1, 8, 64, 512)
    concurrency: tuple[int, ...] = (1, 4, 16)
    replica_cpus: float = float(os.cpu_count() or 1)
    frames: bool = True  # also the frames stream, end to end, and storage per item
    frame_climb: int = 4
    storage_items: int = 200
    e2e_seconds: float = 60.0
    e2e_warmup: float = 15.0
    e2e_window: float = 30.0
    # A defective part in three: a model of a few epochs alerts on few of them, and the
    # latency needs alerts to be measured on.
    e2e_anomalies: float = 0.3


def _model(category: str, side: int, epochs: int, out: Path) -> tuple[Path, InspectionSet]:
    """A checkpoint of the default model for ``category`` at ``side``, and a test set."""
    from trainer.data import LabelledImages, Source, split_normal
    from trainer.defaults import choose_model, choose_training
    from trainer.inspection import make_split
    from trainer.pipeline import DatasetInfo, train_model
    from trainer.train import LoopContext, fit

    train, test = make_split(category, n_train=160, n_test_good=64, n_test_per_defect=16,
                             size=side)  # fmt: skip
    src = Source(f"inspection:{category}", LabelledImages(train, np.full(len(train), "good")),
                 LabelledImages(test.images, test.labels))  # fmt: skip
    model_cfg, profile = choose_model(train)
    path = train_model(split_normal(src, ["good"]), model_cfg,
                       choose_training(model_cfg, epochs=epochs), DatasetInfo(src.name),
                       lambda m, c, d: fit(m, c, d, LoopContext(log=lambda _: None)),
                       {"kind": "in-process"}, out=out, data_profile=profile.to_dict())  # fmt: skip
    return path, test


def _tile(images: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([images] * (n // len(images) + 1))[:n]


def _tree_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0


def storage_per_item(redis_url: str, prefix: str, pngs: list[bytes], blob_root: Path,
                     n: int) -> dict[str, Any]:  # fmt: skip
    """What one retained frame costs: the growth of Redis's ``used_memory`` (the item, its
    score entry, the line's indexes) and of the blob store's folder over ``n`` frames sent in
    one burst and scored, divided by ``n``. Run on a Redis holding nothing that could expire
    meanwhile."""
    import redis

    client = redis.Redis.from_url(redis_url)
    frames = f"{prefix}:frames"
    mem0, blob0 = int(client.info("memory")["used_memory"]), _tree_bytes(blob_root)
    sent = send_frames(client, prefix, pngs, f"store-{time.time_ns()}", 10 * n, 0.1, "bench")
    deadline = time.monotonic() + 300
    while client.xlen(frames) and time.monotonic() < deadline:
        time.sleep(0.2)
    client.xtrim(frames, maxlen=0)  # the scored frames' emptied stream nodes: not retained
    time.sleep(1.0)
    mem, blob = int(client.info("memory")["used_memory"]), _tree_bytes(blob_root)
    client.close()
    return {"items": sent, "png_bytes": statistics.mean(len(p) for p in pngs),
            "redis_bytes_per_item": (mem - mem0) / sent,
            "blob_bytes_per_item": (blob - blob0) / sent}  # fmt: skip


def frame_steps(raw: float) -> list[int]:
    """Frames steps from a quarter to three quarters of the raw model's best rate."""
    return sorted({max(1, int(float(f"{raw * f:.2g}"))) for f in (0.25, 0.5, 0.75)})


def _line(redis_url: str, prefix: str, url: str, test: InspectionSet, raw: float, knobs: Knobs,
          home: Path) -> dict[str, Any]:  # fmt: skip
    """The frames stream's sustained rate, then alerts end to end at half of it."""
    from bench.throughput import against_api, end_to_end, frames_path, line_mix, sustained_rate

    good = test.images[test.labels == "good"]
    row: dict[str, Any] = {"frames": frames_path(redis_url, prefix, test.images, frame_steps(raw),
                                                 knobs.seconds, knobs.frame_climb)}  # fmt: skip
    row["frames_sustained_per_s"] = sustained_rate(row["frames"])
    half = (row["frames_sustained_per_s"] or row["frames"][0]["rate"]) / 2
    mix = line_mix(good, test.images[test.labels != "good"], knobs.e2e_anomalies, n=200)
    row |= against_api(redis_url, prefix, url, home, lambda api_url, _pid: {
        "end_to_end": end_to_end(api_url, redis_url, prefix, mix, half, knobs.e2e_seconds,
                                 knobs.e2e_warmup, knobs.e2e_window)})  # fmt: skip
    row["end_to_end"]["anomalous_share"] = knobs.e2e_anomalies
    return row


def measure(spec: str, knobs: Knobs, tmp: Path) -> dict[str, Any]:
    """Of the default model of one ``category:side``: raw and HTTP images/s; with
    ``knobs.frames``, also Redis and blob-store bytes per retained frame, the frames stream's
    sustained rate and the end-to-end alert latency at half of it."""
    from contract.redis_server import EmbeddedRedis, free_port
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import deploy, shutdown
    from vlae.checkpoint import load_checkpoint
    from vlaewatch import cluster

    category, side = spec.split(":")
    work = tmp / spec.replace(":", "-")
    path, test = _model(category, int(side), knobs.train_epochs, work)
    loaded = load_checkpoint(path)
    batches = [b for b in knobs.batches if b * int(side) ** 2 <= MAX_BATCH_PIXELS]
    images = _tile(test.images, max(batches))
    row: dict[str, Any] = {"category": category, "side": int(side),
                           "channels": int(images.shape[1]), "model": loaded.card.variant,
                           "score_kind": loaded.card.score_kind}  # fmt: skip
    row["raw_images_per_s"] = raw_model(loaded, images, batches, knobs.seconds)
    print(f"{spec} raw: {row['raw_images_per_s']}", file=sys.stderr)
    with EmbeddedRedis(work / "redis") as redis_server:
        cluster.connect(num_cpus=os.cpu_count() or 2)
        try:
            # Images kept 10 minutes: none expires while a step measures what is retained.
            cfg = ScorerConfig(checkpoint=str(path), redis_url=redis_server.url,
                               consume_frames=False, retention_s=600, scores_maxlen=20_000,
                               blob_uri=str(work / "blobs"))  # fmt: skip
            port = free_port()
            deployment = DeploymentConfig(num_cpus=knobs.replica_cpus)
            if knobs.frames:
                prefix = f"size{time.time_ns()}"
                frames_cfg = cfg.model_copy(update={"consume_frames": True, "key_prefix": prefix})
                url = deploy(frames_cfg, deployment, port=port)
                pngs = png_frames(test.images, len(test.images))
                row["storage"] = storage_per_item(redis_server.url, prefix, pngs,
                                                  work / "blobs", knobs.storage_items)  # fmt: skip
                row |= _line(redis_server.url, prefix, url, test,
                             max(row["raw_images_per_s"].values()), knobs, work)  # fmt: skip
                shutdown()
            row["http"] = http_sweep(
                lambda: deploy(cfg, deployment, port=port), shutdown, images, batches,
                list(knobs.concurrency), knobs.seconds,
                lambda b: raw_model(loaded, images, [b], knobs.seconds)[str(b)],
            )  # fmt: skip
        finally:
            shutdown()
            cluster.shutdown()
    best: dict[str, float] = {}
    for r in row["http"]:
        best[str(r["batch"])] = max(best.get(str(r["batch"]), 0.0), r["vs_raw"])
    row["best_http_ratio"] = best
    return row


def _kb(value: float) -> str:
    return f"{value / 1000:,.1f} KB" if value >= 1000 else f"{value:,.0f} B"


def size_rows(sizes: list[dict[str, Any]], batches: list[int]) -> list[str]:
    """Markdown of ``measure``'s rows: raw, HTTP, and the frames, end-to-end and storage
    readings where they were taken."""
    lines = ["| model | input | score | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---|---|" + "---|" * len(batches)]  # fmt: skip
    for r in sizes:
        shape = f"{r['channels']}×{r['side']}×{r['side']}"
        raw = r["raw_images_per_s"]
        lines.append(f"| {r['model']} ({r['category']}) | {shape} | {r['score_kind']} | "
                     + " | ".join(f"{raw[str(b)]:,.1f}" if str(b) in raw else "–"
                                  for b in batches) + " |")  # fmt: skip
    lines += ["", "`POST /v1/score` (NPY bodies) through the Serve proxy:", "",
              "| input | batch | clients | images/s | of raw | p50 ms | p99 ms |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sizes:
        for h in r["http"]:
            lines.append(f"| {r['channels']}×{r['side']}×{r['side']} | {h['batch']} | "
                         f"{h['concurrency']} | {h['images_per_s']:,.1f} | {h['vs_raw']:.2f} | "
                         f"{h['p50_ms']:.1f} | {h['p99_ms']:.1f} |")  # fmt: skip
    framed = [r for r in sizes if "storage" in r]
    if framed:
        share = framed[0]["end_to_end"].get("anomalous_share", 0.0)
        lines += ["", "PNG frames on the frames stream (the line's client), then alerts end to "
                  f"end at half the sustained rate ({100 * share:.0f} % defective frames; the "
                  "time from XADD to the alert on the API's live stream), and what each "
                  "retained frame costs (the "
                  "growth of Redis's `used_memory` and of the blob store over a burst of "
                  "frames, the score entry included; `--image-store auto`):", "",
                  "| input | PNG | frames sustained /s | end to end at /s | alerts | p50 ms "
                  "| p99 ms | Redis per item | blob store per item |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in framed:
            e2e, st = r["end_to_end"], r["storage"]
            sustained = r["frames_sustained_per_s"]
            lines.append(
                f"| {r['channels']}×{r['side']}×{r['side']} | {_kb(st['png_bytes'])} | "
                f"{'–' if sustained is None else f'{sustained:,.1f}'} | "
                f"{e2e['rate_per_s']:,.1f} | {e2e['alerts']} | {_ms(e2e['p50_ms'])} | "
                f"{_ms(e2e['p99_ms'])} | "
                f"{_kb(st['redis_bytes_per_item'])} | {_kb(st['blob_bytes_per_item'])} |"
            )
    lines += ["", "Best HTTP/raw ratio against the goals (" + ", ".join(
        f"batch {b}: ≥ {g}" for b, g in GOALS.items()) + "):", ""]  # fmt: skip
    for r in sizes:
        got = ", ".join(f"batch {b}: {v:.2f}" for b, v in r["best_http_ratio"].items())
        met = all(r["best_http_ratio"].get(b, 0.0) >= g for b, g in GOALS.items()
                  if b in r["best_http_ratio"])  # fmt: skip
        lines.append(f"- {r['category']} {r['side']}: {got} ({'met' if met else 'not met'})")
    return lines


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def markdown(report: dict[str, Any]) -> str:
    batches = report["batches"]
    lines = ["# Speed at inspection sizes", "",
             f"Command: `{report['command']}`; wall {report['wall_s']:.0f} s on "
             f"{report['machine']}.", "",
             "Raw model images/s (in-process, batched forward + score) by batch size:", "",
             "| model | input | score | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---|---|" + "---|" * len(batches)]  # fmt: skip
    digits = report["digits_default"]
    lines.append("| ConvVLAE (digits default) | 1×28×28 | elbo_per_tv | "
                 + " | ".join(f"{digits['raw_images_per_s'][str(b)]:,.0f}"
                              for b in batches) + " |")  # fmt: skip
    lines += size_rows(report["sizes"], batches)[2:]
    return "\n".join(lines) + "\n"


def knobs_from(args: argparse.Namespace) -> Knobs:
    return Knobs(train_epochs=args.train_epochs, seconds=args.seconds,
                 batches=tuple(int(b) for b in args.batches.split(",")),
                 concurrency=tuple(int(c) for c in args.concurrency.split(",")),
                 replica_cpus=args.replica_cpus, frames=args.frames,
                 e2e_seconds=args.e2e_seconds)  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiles:128,metal:256", help="category:side, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement point")
    p.add_argument("--batches", default="1,8,64,512")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--replica-cpus", type=float, default=float(os.cpu_count() or 1))
    p.add_argument(
        "--no-frames",
        dest="frames",
        action="store_false",
        help="raw and HTTP only: no frames stream, end to end or storage",
    )
    p.add_argument("--e2e-seconds", type=float, default=60.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    from trainer.data import load_digits
    from vlae.checkpoint import load_checkpoint

    t0 = time.monotonic()
    knobs = knobs_from(args)
    report: dict[str, Any] = {
        "command": command_line("bench.speed_inspection", argv),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, torch {torch.__version__}",
        "batches": list(knobs.batches),
    }
    with tempfile.TemporaryDirectory() as tmp:
        digits = load_digits()
        loaded = load_checkpoint(default_checkpoint(digits, "conv", Path(tmp) / "digits"))
        images = _tile(digits.test.images, max(knobs.batches))
        report["digits_default"] = {"raw_images_per_s": raw_model(loaded, images,
                                                                  list(knobs.batches),
                                                                  args.seconds)}  # fmt: skip
        report["sizes"] = [measure(s, knobs, Path(tmp)) for s in args.sizes.split(",")]
    report["wall_s"] = time.monotonic() - t0
    write_report(args.out, "speed_inspection", report, markdown)
    return report


if __name__ == "__main__":
    main()

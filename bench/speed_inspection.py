"""Speed at inspection sizes: the default model for generated parts, raw and over HTTP.

For each ``category:side`` of ``trainer.inspection``, the model ``vlaewatch train`` picks for
those images (a SpatialVLAE scored by the ``local`` anomaly map), trained for a few epochs
(its speed does not depend on how well it is trained), is measured as ``bench.throughput``
measures the digits default: the raw model in-process (batched forward + score) at each batch
size, then ``POST /v1/score`` with N×H×W(×C) NPY bodies through the Ray Serve proxy from 1, 4
and 16 concurrent clients, each sweep bracketed by two raw readings (``vs_raw``). The digits
default (a ConvVLAE scored by ``elbo_per_tv``) is measured raw in the same run, beside it.

    python -m bench.speed_inspection [--sizes fabric:64,tiles:128] [--seconds 5]

Writes bench/results/speed_inspection.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RESULTS, command_line, default_checkpoint, write_report
from bench.throughput import http_sweep, raw_model

GOALS = {"64": 0.25, "512": 0.5}  # HTTP images/s over raw, as for the digits default
# Larger images are measured at the batch sizes that hold at most as many pixels as 512 of
# 64 x 64: a 128 x 128 colour model scores about 30 images/s on 2 CPUs, so a batch of 512
# from 16 clients would wait minutes per request.
MAX_BATCH_PIXELS = 512 * 64 * 64


def _model(category: str, side: int, epochs: int, out: Path) -> tuple[Path, np.ndarray]:
    """A checkpoint of the default model for ``category`` at ``side``, and test images."""
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
    return path, test.images


def _tile(images: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([images] * (n // len(images) + 1))[:n]


def measure(spec: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Raw and HTTP images/s of the default model of one ``category:side``."""
    from contract.redis_server import EmbeddedRedis, free_port
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import deploy, shutdown
    from vlae.checkpoint import load_checkpoint
    from vlaewatch import cluster

    category, side = spec.split(":")
    path, test = _model(category, int(side), args.train_epochs, tmp / spec.replace(":", "-"))
    loaded = load_checkpoint(path)
    batches = [b for b in (int(b) for b in args.batches.split(","))
               if b * int(side) ** 2 <= MAX_BATCH_PIXELS]  # fmt: skip
    images = _tile(test, max(batches))
    row: dict[str, Any] = {"category": category, "side": int(side),
                           "channels": int(images.shape[1]), "model": loaded.card.variant,
                           "score_kind": loaded.card.score_kind}  # fmt: skip
    row["raw_images_per_s"] = raw_model(loaded, images, batches, args.seconds)
    print(f"{spec} raw: {row['raw_images_per_s']}", file=sys.stderr)
    with EmbeddedRedis(tmp / f"redis-{category}") as redis_server:
        cluster.connect(num_cpus=os.cpu_count() or 2)
        try:
            cfg = ScorerConfig(checkpoint=str(path), redis_url=redis_server.url,
                               consume_frames=False, retention_s=60,
                               scores_maxlen=20_000)  # fmt: skip
            port = free_port()
            row["http"] = http_sweep(
                lambda: deploy(cfg, DeploymentConfig(num_cpus=args.replica_cpus), port=port),
                shutdown, images, batches, [int(c) for c in args.concurrency.split(",")],
                args.seconds, lambda b: raw_model(loaded, images, [b], args.seconds)[str(b)],
            )  # fmt: skip
        finally:
            shutdown()
            cluster.shutdown()
    best: dict[str, float] = {}
    for r in row["http"]:
        best[str(r["batch"])] = max(best.get(str(r["batch"]), 0.0), r["vs_raw"])
    row["best_http_ratio"] = best
    return row


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Speed at inspection sizes", "",
             f"Command: `{report['command']}`; wall {report['wall_s']:.0f} s on "
             f"{report['machine']}.", "",
             "Raw model images/s (in-process, batched forward + score) by batch size:", "",
             "| model | input | score | " + " | ".join(f"batch {b}" for b in report["batches"])
             + " |", "|---|---|---|" + "---|" * len(report["batches"])]  # fmt: skip
    digits = report["digits_default"]
    lines.append("| ConvVLAE (digits default) | 1×28×28 | elbo_per_tv | "
                 + " | ".join(f"{digits['raw_images_per_s'][str(b)]:,.0f}"
                              for b in report["batches"]) + " |")  # fmt: skip
    for r in report["sizes"]:
        shape = f"{r['channels']}×{r['side']}×{r['side']}"
        raw = r["raw_images_per_s"]
        lines.append(f"| {r['model']} ({r['category']}) | {shape} | {r['score_kind']} | "
                     + " | ".join(f"{raw[str(b)]:,.0f}" if str(b) in raw else "–"
                                  for b in report["batches"]) + " |")  # fmt: skip
    lines += ["", "`POST /v1/score` (NPY bodies) through the Serve proxy:", "",
              "| input | batch | clients | images/s | of raw | p50 ms | p99 ms |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["sizes"]:
        for h in r["http"]:
            lines.append(f"| {r['channels']}×{r['side']}×{r['side']} | {h['batch']} | "
                         f"{h['concurrency']} | {h['images_per_s']:,.0f} | {h['vs_raw']:.2f} | "
                         f"{h['p50_ms']:.1f} | {h['p99_ms']:.1f} |")  # fmt: skip
    lines += ["", "Best HTTP/raw ratio against the goals (" + ", ".join(
        f"batch {b}: ≥ {g}" for b, g in GOALS.items()) + "):", ""]  # fmt: skip
    for r in report["sizes"]:
        got = ", ".join(f"batch {b}: {v:.2f}" for b, v in r["best_http_ratio"].items())
        met = all(r["best_http_ratio"].get(b, 0.0) >= g for b, g in GOALS.items()
                  if b in r["best_http_ratio"])  # fmt: skip
        lines.append(f"- {r['category']} {r['side']}: {got} ({'met' if met else 'not met'})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="fabric:64,tiles:128", help="category:side, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement point")
    p.add_argument("--batches", default="1,64,512")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--replica-cpus", type=float, default=float(os.cpu_count() or 1))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    from trainer.data import load_digits
    from vlae.checkpoint import load_checkpoint

    t0 = time.monotonic()
    batches = [int(b) for b in args.batches.split(",")]
    report: dict[str, Any] = {
        "command": command_line("bench.speed_inspection", argv),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, torch {torch.__version__}",
        "batches": batches,
    }
    with tempfile.TemporaryDirectory() as tmp:
        digits = load_digits()
        loaded = load_checkpoint(default_checkpoint(digits, "conv", Path(tmp) / "digits"))
        images = _tile(digits.test.images, max(batches))
        report["digits_default"] = {"raw_images_per_s": raw_model(loaded, images, batches,
                                                                  args.seconds)}  # fmt: skip
        report["sizes"] = [measure(s, args, Path(tmp)) for s in args.sizes.split(",")]
    report["wall_s"] = time.monotonic() - t0
    write_report(args.out, "speed_inspection", report, markdown)
    return report


if __name__ == "__main__":
    main()

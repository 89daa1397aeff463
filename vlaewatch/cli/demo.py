"""``vlaewatch demo``: the whole pipeline on the embedded defaults. Train a model a line,
deploy the scorer and the API, calibrate thresholds, stream held-out images on the lines,
and summarise the alerts against the true labels."""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.settings import Settings
from vlaewatch.cli.args import (
    API_PORT,
    HOST,
    SCORER_PORT,
    UsageError,
    add_verbose,
    classes,
    ray_logs,
)
from vlaewatch.cli.console import err
from vlaewatch.cli.data import DEFAULT_FOLDER_SIZE, DataChoice, add_data_args
from vlaewatch.cli.embedded import ray_cluster, redis_url
from vlaewatch.cli.train import TrainOptions, train

if TYPE_CHECKING:
    from contract.auth import Principal
    from vlaewatch.cli.demo_api import ApiThread
    from vlaewatch.cli.demo_stream import LinePart

DEMO_PARTS = ("fabric", "pill")
# The demo trains once and then judges its alerts. On generated parts it trains for half the
# 300 epochs `train` takes on a texture, a third of a part's 450 (trainer/defaults.py):
# minutes, while the largest region of an alert still lands on the defect (0.9 of them on
# fabric). Tints among the corruptions slow the pill's fit: at 100 epochs its pixel AUROC fell
# under the demo's floor (0.63 against 0.7), at 150 it held (0.80). On a dataset of digits it
# trains longer than `train` would: 30 epochs against 20.
DEMO_EPOCHS = {"inspection": 150, "other": 30}
# Generated parts a line of the demo: good ones to train on, and a stream of held-out good
# parts with 5-10 % defective ones (each defect type of the part, DEMO_PER_DEFECT times),
# written at the size `train` reads a folder at.
DEMO_TRAIN, DEMO_GOOD, DEMO_PER_DEFECT = 400, 300, 5
DEMO_PART_SIZE = DEFAULT_FOLDER_SIZE

Trained = dict[str, dict[str, Any]]  # line -> what ``train`` answered


def add_parser(sub: Any) -> None:
    """The ``demo`` command and its flags."""
    d = sub.add_parser(
        "demo", help="the whole pipeline on the embedded defaults: train, serve, alert, summarise"
    )
    add_data_args(d, "inspection", extra=("inspection",))
    d.add_argument(
        "--parts",
        type=classes,
        default=list(DEMO_PARTS),
        help="inspection: the generated part each line makes, in --lines order (default "
        "fabric, a grey textured surface, and pill, a colour object)",
    )
    d.add_argument("--normal", type=classes, help="normal classes (default 0)")
    d.add_argument("--epochs", type=int, help=f"default {DEMO_EPOCHS['inspection']} for "
                   f"inspection, {DEMO_EPOCHS['other']} else")  # fmt: skip
    d.add_argument("--workers", type=int, help="Ray Train workers")
    d.add_argument("--lines", type=classes, default=["cam1", "cam2"], help="line ids to tag")
    d.add_argument("--rate", type=float, default=100.0, help="images per second streamed")
    d.add_argument("--batch", type=int, default=10, help="images per ingestion request")
    d.add_argument("--fpr", type=float, default=0.01, help="target false-alarm rate")
    d.add_argument(
        "--pixel-fpr",
        type=float,
        help="inspection: target false-region rate of the pixel thresholds (default --fpr)",
    )
    d.add_argument("--host", default=HOST)
    d.add_argument("--scorer-port", type=int, default=SCORER_PORT)
    d.add_argument("--api-port", type=int, default=API_PORT)
    d.add_argument("--address", help="Ray cluster to join (RAY_ADDRESS); default: local cluster")
    d.add_argument("--redis-url", help="REDIS_URL; default: the bundled redis-server")
    d.add_argument("--exit-after", action="store_true", help="stop after the summary")
    d.add_argument("--summary-json", type=Path,
                   help="also write the summary here (as HOME/demo-summary.json)")  # fmt: skip
    add_verbose(d)
    d.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> None:
    """``vlaewatch demo``: the six steps, then serve until SIGINT or SIGTERM (or not, with
    ``--exit-after``). The summary goes to stderr in brief and to a JSON file in full."""
    import signal
    import threading

    from vlaewatch.cli.demo_summary import print_summary

    inspection = args.dataset == "inspection"
    if len(args.lines) < 2:
        raise UsageError("--lines: give two or more line ids")
    if inspection and len(args.parts) != len(args.lines):
        raise UsageError(f"--parts: one generated part per line, {len(args.lines)} in all")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    keys, headers, ingest = _keys(settings)
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        err("[1/6] embedded services: Redis and a local Ray cluster")
        redis = redis_url(stack, args.redis_url, settings)
        info = ray_cluster(stack, args.address, settings, args.verbose, serving=True)
        err(f"      {ray_logs(info)}")
        trained, parts, normal = (_train_inspection if inspection else _train_dataset)(
            args, settings
        )
        scorer_url, api = _deploy(stack, args, settings, trained, redis, keys, info["owned"])
        calibration = _calibrate(args, api.url, headers, trained, inspection)
        result, lines = _stream(stack, args, api.url, scorer_url, headers, ingest, parts,
                                normal, calibration)  # fmt: skip
        result |= {
            "dataset": args.dataset,
            "model_versions": {line: t["model_version"] for line, t in trained.items()},
            "calibration": calibration,
            "lines": lines,
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
        full = settings.home / "demo-summary.json"
        for path in (full, args.summary_json):
            if path is not None:
                path.write_text(json.dumps(result, indent=2))
        print_summary(result, full)
        if not args.exit_after:
            err("serving; Ctrl-C stops everything")
            stop.wait()
        err("stopping")


def _keys(settings: Settings) -> tuple[dict[str, Principal], dict[str, str], dict[str, str]]:
    """The key ring, with an ingest and a service key of the demo's own added when it has
    keys (the demo is its own line client, and its API calls the scorer); the headers of the
    demo's operator calls and of its ingestion."""
    from contract.auth import Principal, load_api_keys

    keys = load_api_keys(settings.api_keys, settings.api_keys_file)
    operator = next((k for k, p in keys.items() if p.role == "operator"), None)
    if keys and operator is None:
        raise UsageError("VLAEWATCH_API_KEYS has no operator key: the demo calibrates")
    headers = {"X-API-Key": operator} if operator else {}
    ingest: dict[str, str] = {}
    if keys:
        for role in ("ingest", "service"):
            if not any(p.role == role for p in keys.values()):
                keys[secrets.token_urlsafe(24)] = Principal(f"demo-{role}", role)
        ingest = {"X-API-Key": next(k for k, p in keys.items() if p.role == "ingest")}
    return keys, headers, ingest


def _train_inspection(
    args: argparse.Namespace, settings: Settings
) -> tuple[Trained, list[LinePart], list[str]]:
    """Per line, generated parts of its kind: the good ones written as PNGs under
    ``VLAEWATCH_HOME/demo-parts`` (a line's archive), a model trained on them, and the held-out
    stream with its defect masks."""
    from trainer.inspection import make_split, write_folder
    from vlaewatch.cli.demo_stream import LinePart, as_sent

    epochs = args.epochs or DEMO_EPOCHS["inspection"]
    trained: Trained = {}
    parts = []
    for line, name in zip(args.lines, args.parts, strict=True):
        split = {"n_train": DEMO_TRAIN, "n_test_good": DEMO_GOOD,
                 "n_test_per_defect": DEMO_PER_DEFECT, "size": DEMO_PART_SIZE,
                 "seed": 0}  # fmt: skip
        try:
            folder = write_folder(name, settings.home / "demo-parts", **split)
        except ValueError as exc:
            raise UsageError(f"--parts: {exc}") from None
        err(f"[2/6] {line}: training on generated {name} parts (Ray Train, {epochs} epochs)")
        opts = TrainOptions(data=DataChoice(dataset="folder", image_folder=folder / "train"),
                            normal=["good"], epochs=epochs, workers=args.workers)  # fmt: skip
        trained[line] = train(opts, settings)
        _, test = make_split(name, **split)
        parts.append(LinePart(line, as_sent(test.images), test.labels, test.masks))
    return trained, parts, ["good"]


def _train_dataset(
    args: argparse.Namespace, settings: Settings
) -> tuple[Trained, list[LinePart], list[str]]:
    """One model for every line, trained on a dataset's normal classes; its held-out test
    images shared out among the lines."""
    from trainer.data import load_source
    from vlaewatch.cli.demo_stream import LinePart, as_sent

    epochs = args.epochs or DEMO_EPOCHS["other"]
    err(f"[2/6] training on {args.dataset}, normal {args.normal or ['0']} (Ray Train)")
    data = DataChoice(dataset=args.dataset, data_dir=args.data_dir, image_folder=args.image_folder)
    opts = TrainOptions(data=data, normal=args.normal or None, epochs=epochs, workers=args.workers)
    model = train(opts, settings)
    source = load_source(args.dataset, data_dir=args.data_dir or settings.data_dir,
                         image_folder=args.image_folder,
                         image_shape=tuple(model["image_shape"]))  # fmt: skip
    test = source.test
    images = as_sent(test.images)
    n = len(args.lines)
    parts = [LinePart(line, images[k::n], test.labels[k::n]) for k, line in enumerate(args.lines)]
    return {line: model for line in args.lines}, parts, [str(c) for c in (args.normal or ["0"])]


def _deploy(
    stack: contextlib.ExitStack, args: argparse.Namespace, settings: Settings, trained: Trained,
    redis: str, keys: dict[str, Principal], own_cluster: bool,
) -> tuple[str, ApiThread]:  # fmt: skip
    """One scorer (the first line's model for every line, and each other line's own) and the
    API in this process, both stopped when the stack closes; once the scorer has announced
    every model. Serve on the demo's own cluster stops with it: Serve's shutdown of its
    controller would print a Ray task failure on a normal stop."""
    from api.config import ApiConfig
    from contract.auth import digests
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import deploy
    from scorer.service import shutdown as serve_shutdown
    from vlaewatch.cli.demo_api import ApiThread, wait_for_models

    first = trained[args.lines[0]]
    line_models = {line: t["checkpoint"] for line, t in trained.items()
                   if t["checkpoint"] != first["checkpoint"]}  # fmt: skip
    err("[3/6] deploying the scorer (Ray Serve) and starting the API")
    scorer_cfg = ScorerConfig(checkpoint=first["checkpoint"], line_models=line_models,
                              redis_url=redis, key_prefix=settings.key_prefix,
                              api_key_digests=digests(keys))  # fmt: skip
    if not own_cluster:
        stack.callback(serve_shutdown)
    scorer_url = deploy(scorer_cfg, DeploymentConfig(num_cpus=0.5), host=args.host,
                        port=args.scorer_port)  # fmt: skip
    api_cfg = ApiConfig(redis_url=redis, key_prefix=settings.key_prefix,
                        scorer_url=scorer_url, api_keys=keys, reclaim_idle_ms=5000,
                        initial_fpr=0, grafana_url=settings.grafana_url,
                        grafana_token=settings.grafana_token)  # fmt: skip
    api = ApiThread(api_cfg, args.host, args.api_port).start()
    stack.callback(api.stop)
    wait_for_models(api.url, {t["model_version"] for t in trained.values()})
    return scorer_url, api


def _calibrate(
    args: argparse.Namespace, api_url: str, headers: dict[str, str], trained: Trained,
    inspection: bool,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Inspection: each line's image and pixel thresholds on its own model's calibration
    images; a dataset: the default line's, which every line falls back to."""
    from vlae.checkpoint import read_card
    from vlaewatch.cli.demo_api import calibrate

    first = trained[args.lines[0]]
    pixel_fpr = args.pixel_fpr or args.fpr
    targets = [(line, "image", args.fpr) for line in trained] if inspection else [
        ("default", "image", args.fpr)]  # fmt: skip
    targets += [(line, "pixel", pixel_fpr) for line in trained] if inspection else []
    err(f"[4/6] calibrating thresholds from normal images: fpr {args.fpr:g}"
        + (f", pixel fpr {pixel_fpr:g}" if inspection else ""))  # fmt: skip
    calibration: dict[str, dict[str, Any]] = {}
    said: set[str] = set()
    for line, target, alpha in targets:
        t = trained.get(line, first)
        n_calibration = read_card(t["checkpoint"]).dataset.n_calibration
        answer = calibrate(api_url, headers, line, target, t["model_version"], alpha,
                           n_calibration)  # fmt: skip
        calibration.setdefault(line, {})[target] = answer
        note = (f"      {n_calibration} calibration scores cannot guarantee alpha {alpha:g}: "
                f"using 1/(n+1) = {answer['alpha']:.4f}")  # fmt: skip
        if answer["alpha"] > alpha and note not in said:
            err(note)
            said.add(note)
        far = answer["false_alarm_rate"]
        err(f"      {line} {target} threshold {answer['threshold']:.2f}, expected "
            f"false-{'alarm' if target == 'image' else 'region'} rate "
            f"{far['expected']:.3f} [{far['low']:.3f}, {far['high']:.3f}]")  # fmt: skip
    return calibration


def _stream(
    stack: contextlib.ExitStack, args: argparse.Namespace, api_url: str, scorer_url: str,
    headers: dict[str, str], ingest: dict[str, str], parts: list[LinePart], normal: list[str],
    calibration: dict[str, dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:  # fmt: skip
    """Stream the held-out images on the lines while listening for alerts; the summary of
    what was alerted, overall and per line."""
    from tqdm import tqdm

    from vlaewatch.cli.demo_api import AlertListener, wait_consumed
    from vlaewatch.cli.demo_stream import stream_lines
    from vlaewatch.cli.demo_summary import summary, where_summary

    listener = AlertListener(api_url, headers).start()
    stack.callback(listener.stop)
    total = sum(len(p.images) for p in parts)
    err(f"[5/6] streaming {total} held-out images on {', '.join(args.lines)} "
        f"at {args.rate:g}/s")  # fmt: skip
    run_id = f"demo{int(time.time())}"
    with tqdm(total=total, desc="      images", unit="image", file=sys.stderr,
              dynamic_ncols=True) as bar:  # fmt: skip

        def progress(done: int, total: int) -> None:
            bar.set_postfix(alerts=len(listener.seen), refresh=False)
            bar.update(done - bar.n)

        streamed = stream_lines(scorer_url, parts, args.rate, args.batch, run_id, progress,
                                maps=args.dataset == "inspection", headers=ingest)  # fmt: skip
    wait_consumed(api_url)
    time.sleep(0.5)  # the last alerts' events are on their way to the listener
    ours = {i: v for i, v in listener.seen.items() if i in set(streamed.item_ids)}
    pixel = {line: c["pixel"] for line, c in calibration.items() if "pixel" in c}
    return summary(streamed, ours, normal), where_summary(streamed, parts, ours, normal, pixel)

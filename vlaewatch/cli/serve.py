"""``vlaewatch serve``: the scorer on Ray Serve; every result streams to Redis."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.settings import Settings
from vlaewatch.cli.args import HOST, SCORER_PORT, add_verbose, config_default, given, ray_logs
from vlaewatch.cli.console import err
from vlaewatch.cli.embedded import ray_cluster, redis_url

if TYPE_CHECKING:
    from scorer.config import DeploymentConfig, ScorerConfig


def add_parser(sub: Any) -> None:
    """The ``serve`` command and its flags; the defaults are ScorerConfig's and
    DeploymentConfig's."""
    from scorer.config import DeploymentConfig, ScorerConfig

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
    s.add_argument("--host", default=HOST)
    s.add_argument("--port", type=int, default=SCORER_PORT)
    s.add_argument("--address", help="Ray cluster to join (RAY_ADDRESS); default: local cluster")
    s.add_argument("--redis-url", help="REDIS_URL; default: start the bundled redis-server")
    s.add_argument("--key-prefix", help="Redis key prefix (VLAEWATCH_KEY_PREFIX)")
    s.add_argument("--replicas", type=int, default=config_default(DeploymentConfig, "num_replicas"))
    s.add_argument("--min-replicas", type=int, help="with --max-replicas: autoscaling bounds")
    s.add_argument("--max-replicas", type=int)
    s.add_argument("--num-cpus", type=float, default=config_default(DeploymentConfig, "num_cpus"),
                   help="CPUs per replica (fractions ok)")  # fmt: skip
    s.add_argument("--num-gpus", type=float, default=config_default(DeploymentConfig, "num_gpus"),
                   help="GPUs per replica")  # fmt: skip
    s.add_argument(
        "--max-batch-size", type=int, default=config_default(ScorerConfig, "max_batch_size")
    )
    s.add_argument(
        "--batch-wait-ms",
        type=float,
        default=config_default(ScorerConfig, "batch_wait_timeout_s") * 1000,
        help="how long a batch waits for more items (0: it takes what is queued)",
    )
    s.add_argument("--retention-s", type=int, default=config_default(ScorerConfig, "retention_s"),
                   help="image retention for previews")  # fmt: skip
    s.add_argument("--image-store", choices=["auto", "redis", "blob"],
                   default=config_default(ScorerConfig, "image_store"),
                   help="where items' images are kept: auto (over --inline-max-bytes to the "
                   "blob store), redis, blob")  # fmt: skip
    s.add_argument("--inline-max-bytes", type=int,
                   default=config_default(ScorerConfig, "inline_max_bytes"),
                   help="with --image-store auto: the largest image kept in Redis")  # fmt: skip
    s.add_argument("--blob-uri", default=None,
                   help="the blob store: a folder, file://, s3://bucket/prefix (default: "
                   "VLAEWATCH_BLOB_URI, else VLAEWATCH_HOME/blobs)")  # fmt: skip
    s.add_argument(
        "--no-frames",
        action="store_true",
        help="do not consume the frames stream (HTTP ingestion only)",
    )
    add_verbose(s)
    s.set_defaults(run=run)


def _line_models(text: str) -> list[tuple[str, str]]:
    """``LINE=CHECKPOINT[,LINE=CHECKPOINT...]`` -> [(line, absolute checkpoint path)]."""
    out = []
    for part in text.split(","):
        line, sep, path = part.partition("=")
        if not sep or not line.strip() or not path.strip():
            raise argparse.ArgumentTypeError(f"{part!r}: use LINE=CHECKPOINT[,...]")
        out.append((line.strip(), str(Path(path.strip()).resolve())))
    return out


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """``vlaewatch serve``: deploy, then serve until SIGINT or SIGTERM."""
    import signal
    import threading

    from contract.auth import load_api_keys
    from scorer.service import deploy
    from scorer.service import shutdown as serve_shutdown
    from vlae.checkpoint import load_checkpoint, resolve_checkpoint

    # Fail here, with a clear message, rather than inside a replica.
    loaded = load_checkpoint(resolve_checkpoint(args.checkpoint or settings.store_path,
                                                args.version))  # fmt: skip
    keys = load_api_keys(settings.api_keys, settings.api_keys_file)
    if keys and not any(p.role == "ingest" for p in keys.values()):
        err("warning: no 'ingest' key in VLAEWATCH_API_KEYS: no line can send images")
    if not keys:
        err("no API keys configured: open access (loopback only)")
    for ref in dict(args.line_model).values():
        load_checkpoint(resolve_checkpoint(ref, None))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        if not (args.redis_url or settings.redis_url) and (args.address or settings.ray_address):
            err(
                "warning: the bundled Redis listens on 127.0.0.1 only; replicas on other "
                "nodes cannot reach it: set REDIS_URL"
            )
        redis = redis_url(stack, args.redis_url, settings)
        info = ray_cluster(stack, args.address, settings, args.verbose, serving=True)
        stack.callback(serve_shutdown)
        cfg, deployment = _configs(args, settings, redis)
        url = deploy(cfg, deployment, host=args.host, port=args.port)
        err(
            f"scoring model {loaded.version} at {url}/v1/score (docs {url}/docs); "
            f"results to {cfg.key_prefix}:scores; {ray_logs(info)}; Ctrl-C stops"
        )
        stop.wait()
        err("stopping")
    return {"stopped": True, "model_version": loaded.version}


def _configs(
    args: argparse.Namespace, settings: Settings, url: str
) -> tuple[ScorerConfig, DeploymentConfig]:
    """What the replicas do, and how many of what size there are."""
    from scorer.config import DeploymentConfig, ScorerConfig

    # The key ring from the settings: digests, and the keys file as a path every node mounts.
    cfg = ScorerConfig.from_settings(
        settings,
        checkpoint=str(Path(args.checkpoint or settings.store_path).resolve()),
        model_version=args.version,
        line_models=dict(args.line_model),
        **_replica_redis(url, args.redis_url, settings),
        **given(key_prefix=args.key_prefix or None),
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1000,
        retention_s=args.retention_s,
        image_store=args.image_store,
        inline_max_bytes=args.inline_max_bytes,
        **given(blob_uri=args.blob_uri),
        consume_frames=not args.no_frames,
    )
    deployment = DeploymentConfig(
        num_replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
    )
    return cfg, deployment


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

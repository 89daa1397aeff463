"""``vlaewatch api``: alerts, thresholds and previews over the score stream."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from contract.settings import Settings
from vlaewatch.cli.args import API_PORT, HOST, UsageError, config_default, given
from vlaewatch.cli.console import err
from vlaewatch.cli.embedded import redis_url

if TYPE_CHECKING:
    from contract.auth import Principal

DAY_S = 86400


def add_parser(sub: Any) -> None:
    """The ``api`` command and its flags; the defaults are ApiConfig's."""
    from api.config import ApiConfig

    def default(name: str) -> Any:
        return config_default(ApiConfig, name)

    a = sub.add_parser("api", help="alerts, thresholds and previews over the score stream")
    a.add_argument("--host", default=HOST)
    a.add_argument("--port", type=int, default=API_PORT)
    a.add_argument("--redis-url", help="REDIS_URL; default: the bundled redis-server")
    a.add_argument("--key-prefix", help="Redis key prefix (VLAEWATCH_KEY_PREFIX)")
    a.add_argument("--scorer-url", help="scorer base URL for previews (VLAEWATCH_SCORER_URL)")
    a.add_argument("--consumer", help="consumer name in the group (default: host and pid)")
    a.add_argument(
        "--reclaim-idle-ms",
        type=int,
        default=default("reclaim_idle_ms"),
        help="take over entries another consumer left pending this long",
    )
    a.add_argument(
        "--initial-fpr",
        type=float,
        default=default("initial_fpr"),
        help="false-alarm rate of the automatic first default threshold (0: none)",
    )
    _add_limits(a, default)
    retention = default("alert_retention_s")
    a.add_argument(
        "--alert-retention-s",
        type=int,
        default=retention,
        help="keep alerts, their events and index entries this long (at least 60; "
        f"{retention // DAY_S} days)",
    )
    a.add_argument("--no-consume", action="store_true", help="serve HTTP only, consume nothing")
    a.add_argument("--log-level", default="info")
    a.set_defaults(run=run)


def _add_limits(a: argparse.ArgumentParser, default: Callable[[str], Any]) -> None:
    """What one key, one address and the whole process may ask of the API."""
    a.add_argument(
        "--rate-limit",
        type=float,
        default=default("rate_limit_per_s"),
        help="requests per second per API key, 429 beyond (0: no limit)",
    )
    a.add_argument(
        "--rate-burst",
        type=int,
        default=default("rate_burst"),
        help="requests a key may send at once",
    )
    a.add_argument(
        "--max-streams-per-key",
        type=int,
        default=default("max_streams_per_key"),
        help="live streams (/v1/stream) one key may hold open at once",
    )
    a.add_argument(
        "--max-streams",
        type=int,
        default=default("max_streams"),
        help="live streams this API process serves at once",
    )
    a.add_argument(
        "--login-failure-burst",
        type=int,
        default=default("login_failure_burst"),
        help="failed authentications a client address may make before it is "
        "limited to --login-failures-per-s",
    )
    a.add_argument(
        "--login-failures-per-s",
        type=float,
        default=default("login_failures_per_s"),
        help="failed authentications per second per address, past the burst",
    )


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """``vlaewatch api``: serve until SIGINT or SIGTERM."""
    from api.app import run as serve
    from api.config import ApiConfig

    if args.alert_retention_s < 60:
        raise UsageError(f"--alert-retention-s must be at least 60, got {args.alert_retention_s}")
    keys = _check_keys(args.host, settings)
    with contextlib.ExitStack() as stack:
        extra: dict[str, Any] = {"consumer": args.consumer} if args.consumer else {}
        cfg = ApiConfig.from_settings(
            settings,
            redis_url=redis_url(stack, args.redis_url, settings),
            api_keys=keys,
            **given(key_prefix=args.key_prefix or None, scorer_url=args.scorer_url or None),
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
        err(f"API at http://{args.host}:{args.port}/v1 (docs /docs); consumer {cfg.consumer}")
        serve(cfg, args.host, args.port, args.log_level)
    return {"stopped": True, "consumer": cfg.consumer}


def _check_keys(host: str, settings: Settings) -> dict[str, Principal]:
    """The key ring; open access only on a loopback address."""
    import ipaddress

    from contract.auth import load_api_keys

    keys = load_api_keys(settings.api_keys, settings.api_keys_file)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not keys and not loopback:
        raise UsageError(
            f"refusing to serve on {host} without API keys: set VLAEWATCH_API_KEYS "
            "(key:role,...) or VLAEWATCH_API_KEYS_FILE"
        )
    if not keys:
        err("no API keys configured: open access (loopback only)")
    elif not any(p.role == "service" for p in keys.values()):
        err("warning: no 'service' key in VLAEWATCH_API_KEYS: a scorer with keys will "
            "refuse this API's previews and views")  # fmt: skip
    return keys

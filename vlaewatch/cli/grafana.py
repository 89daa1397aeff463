"""``vlaewatch grafana``: Grafana as code, provisioned over its HTTP API or exported as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from contract.settings import Settings
from vlaewatch.cli.args import UsageError


def add_parser(sub: Any) -> None:
    """The ``grafana`` command, its ``provision`` and ``export`` subcommands and their flags."""
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
    g.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """``vlaewatch grafana provision`` or ``export``."""
    if args.grafana_command == "export":
        return _export(args.out)
    from deploy.grafana import connect, provision

    url = args.url or settings.grafana_url
    if not url:
        raise UsageError("give --url or set VLAEWATCH_GRAFANA_URL")
    api = connect(url, args.token or settings.grafana_token)
    return provision(api, args.prometheus_url, args.webhook_url).as_dict()


def _export(out: Path) -> dict[str, Any]:
    from deploy.dashboards import DASHBOARDS, RULES

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for board in DASHBOARDS:
        path = out / f"{board.uid}.json"
        path.write_text(json.dumps(board.to_json(), indent=2))
        written.append(str(path))
    rules = out / "alert-rules.json"
    rules.write_text(json.dumps([r.to_json() for r in RULES], indent=2))
    return {"written": [*written, str(rules)]}

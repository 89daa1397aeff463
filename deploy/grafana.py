"""Provision Grafana through its HTTP API (grafana-client): the Prometheus datasource, a folder,
the dashboards, a contact point and the alert rules. Idempotent: what already matches is left
alone, what differs is updated, and the report says which was which."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError

from deploy.dashboards import (
    CONTACT_POINT,
    DASHBOARDS,
    DATASOURCE_UID,
    FOLDER_TITLE,
    FOLDER_UID,
    RULES,
    AlertRule,
    Dashboard,
    contact_point,
)


@dataclass
class Report:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged}


def connect(url: str, token: str | None) -> GrafanaApi:
    """A client for the Grafana at ``url`` (a service account token, or none for tests)."""
    return GrafanaApi.from_url(url=url, credential=token) if token else GrafanaApi.from_url(url)


def _missing(exc: GrafanaClientError) -> bool:
    return exc.status_code == 404


def agrees(wanted: Any, found: Any) -> bool:
    """``found`` agrees with every field we set, at every depth: Grafana adds ids, versions,
    timestamps and defaults (a rule's query models get ``intervalMs`` and ``maxDataPoints``,
    a datasource ``basicAuth``...), and none of those is a change of ours."""
    if isinstance(wanted, dict):
        return isinstance(found, dict) and all(
            k in found and agrees(v, found[k]) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (isinstance(found, list) and len(found) == len(wanted)
                and all(agrees(w, f) for w, f in zip(wanted, found, strict=True)))  # fmt: skip
    return bool(wanted == found)


def provision(
    api: GrafanaApi, prometheus_url: str, webhook_url: str, folder_uid: str = FOLDER_UID
) -> Report:
    """Create or update everything vlaewatch needs in Grafana."""
    report = Report()
    _datasource(api, prometheus_url, report)
    _folder(api, folder_uid, report)
    for board in DASHBOARDS:
        _dashboard(api, board, folder_uid, report)
    _contact_point(api, webhook_url, report)
    for rule in RULES:
        _rule(api, rule, folder_uid, report)
    return report


def _found(get: Callable[[], Any]) -> Any:
    """What ``get`` finds, or None where Grafana answers 404."""
    try:
        return get()
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        return None


def _ensure(
    name: str,
    wanted: Any,
    found: Any,
    create: Callable[[], Any],
    update: Callable[[], Any],
    report: Report,
) -> None:
    """Create ``name`` when it is missing, update it when it differs from ``wanted``."""
    if found is None:
        create()
        report.created.append(name)
    elif agrees(wanted, found):
        report.unchanged.append(name)
    else:
        update()
        report.updated.append(name)


def _datasource(api: GrafanaApi, prometheus_url: str, report: Report) -> None:
    datasource = {"uid": DATASOURCE_UID, "name": "vlaewatch Prometheus", "type": "prometheus",
                  "access": "proxy", "url": prometheus_url, "isDefault": False,
                  "jsonData": {"httpMethod": "POST", "timeInterval": "15s"}}  # fmt: skip
    found = _found(lambda: api.datasource.get_datasource_by_uid(DATASOURCE_UID))
    _ensure(f"datasource {DATASOURCE_UID}", datasource, found,
            lambda: api.datasource.create_datasource(datasource),
            lambda: api.datasource.update_datasource_by_uid(DATASOURCE_UID, datasource),
            report)  # fmt: skip


def _folder(api: GrafanaApi, folder_uid: str, report: Report) -> None:
    found = _found(lambda: api.folder.get_folder(folder_uid))
    _ensure(f"folder {folder_uid}", {}, found,
            lambda: api.folder.create_folder(FOLDER_TITLE, uid=folder_uid), lambda: None,
            report)  # fmt: skip


def _dashboard(api: GrafanaApi, board: Dashboard, folder_uid: str, report: Report) -> None:
    wanted = board.to_json()
    found = _found(lambda: api.dashboard.get_dashboard(board.uid)["dashboard"])
    body = {"dashboard": wanted, "folderUid": folder_uid, "overwrite": True,
            "message": "provisioned by vlaewatch"}  # fmt: skip
    write = lambda: api.dashboard.update_dashboard(body)  # noqa: E731  (creates or updates)
    _ensure(f"dashboard {board.uid}", wanted, found, write, write, report)


def _contact_point(api: GrafanaApi, webhook_url: str, report: Report) -> None:
    point = contact_point(webhook_url)
    points = api.alertingprovisioning.get_contactpoints()
    found = next((c for c in points if c.get("uid") == CONTACT_POINT), None)
    _ensure(f"contact point {CONTACT_POINT}", point, found,
            lambda: api.alertingprovisioning.create_contactpoint(point),
            lambda: api.alertingprovisioning.update_contactpoint(CONTACT_POINT, point),
            report)  # fmt: skip


def _rule(api: GrafanaApi, rule: AlertRule, folder_uid: str, report: Report) -> None:
    wanted = rule.to_json(folder_uid)
    found = _found(lambda: api.alertingprovisioning.get_alertrule(rule.uid))
    _ensure(f"alert rule {rule.uid}", wanted, found,
            lambda: api.alertingprovisioning.create_alertrule(wanted),
            lambda: api.alertingprovisioning.update_alertrule(rule.uid, wanted),
            report)  # fmt: skip

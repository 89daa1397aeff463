"""Provision Grafana through its HTTP API (grafana-client): the Prometheus datasource, a folder,
the dashboards, a contact point and the alert rules. Idempotent: what already matches is left
alone, what differs is updated, and the report says which was which."""

from __future__ import annotations

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


def _datasource(api: GrafanaApi, prometheus_url: str, report: Report) -> None:
    datasource = {"uid": DATASOURCE_UID, "name": "vlaewatch Prometheus", "type": "prometheus",
                  "access": "proxy", "url": prometheus_url, "isDefault": False,
                  "jsonData": {"httpMethod": "POST", "timeInterval": "15s"}}  # fmt: skip
    try:
        found = api.datasource.get_datasource_by_uid(DATASOURCE_UID)
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        api.datasource.create_datasource(datasource)
        report.created.append(f"datasource {DATASOURCE_UID}")
        return
    if agrees(datasource, found):
        report.unchanged.append(f"datasource {DATASOURCE_UID}")
    else:
        api.datasource.update_datasource_by_uid(DATASOURCE_UID, datasource)
        report.updated.append(f"datasource {DATASOURCE_UID}")


def _folder(api: GrafanaApi, folder_uid: str, report: Report) -> None:
    try:
        api.folder.get_folder(folder_uid)
        report.unchanged.append(f"folder {folder_uid}")
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        api.folder.create_folder(FOLDER_TITLE, uid=folder_uid)
        report.created.append(f"folder {folder_uid}")


def _dashboard(api: GrafanaApi, board: Dashboard, folder_uid: str, report: Report) -> None:
    wanted = board.to_json()
    try:
        found = api.dashboard.get_dashboard(board.uid)["dashboard"]
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        found = None
    if found is not None and agrees(wanted, found):
        report.unchanged.append(f"dashboard {board.uid}")
        return
    api.dashboard.update_dashboard(
        {
            "dashboard": wanted,
            "folderUid": folder_uid,
            "overwrite": True,
            "message": "provisioned by vlaewatch",
        }
    )
    (report.updated if found is not None else report.created).append(f"dashboard {board.uid}")


def _contact_point(api: GrafanaApi, webhook_url: str, report: Report) -> None:
    point = contact_point(webhook_url)
    points = api.alertingprovisioning.get_contactpoints()
    existing = [c for c in points if c.get("uid") == CONTACT_POINT]
    if not existing:
        api.alertingprovisioning.create_contactpoint(point)
        report.created.append(f"contact point {CONTACT_POINT}")
    elif agrees(point, existing[0]):
        report.unchanged.append(f"contact point {CONTACT_POINT}")
    else:
        api.alertingprovisioning.update_contactpoint(CONTACT_POINT, point)
        report.updated.append(f"contact point {CONTACT_POINT}")


def _rule(api: GrafanaApi, rule: AlertRule, folder_uid: str, report: Report) -> None:
    wanted = rule.to_json(folder_uid)
    try:
        found = api.alertingprovisioning.get_alertrule(rule.uid)
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        api.alertingprovisioning.create_alertrule(wanted)
        report.created.append(f"alert rule {rule.uid}")
        return
    if agrees(wanted, found):
        report.unchanged.append(f"alert rule {rule.uid}")
    else:
        api.alertingprovisioning.update_alertrule(rule.uid, wanted)
        report.updated.append(f"alert rule {rule.uid}")

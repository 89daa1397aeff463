"""Grafana dashboards and alert rules as code: typed definitions rendered to Grafana's JSON.

Every PromQL expression lives here once; ``tests/deploy`` runs each of them against a real
Prometheus scraping a running API and Ray cluster, so no panel or rule can name a metric the
service does not export.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from grafana_foundation_sdk.builders import alerting, common, expr, prometheus, timeseries
from grafana_foundation_sdk.builders import dashboard as grafana
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.alerting import RelativeTimeRange
from grafana_foundation_sdk.models.common import (
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TimeZoneBrowser,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DATASOURCE_UID = "vlaewatch-prometheus"
FOLDER_UID = "vlaewatch"
FOLDER_TITLE = "vlaewatch"
RULE_GROUP = "vlaewatch"
CONTACT_POINT = "vlaewatch-operators"
RATE = "[5m]"  # the rate window of every panel and rule
SCORER = 'application="scorer"'  # the scorer's Serve application (scorer.service.APP_NAME)


@dataclass(frozen=True)
class Query:
    """A PromQL expression and its legend."""

    expr: str
    legend: str = ""

    def metrics(self) -> set[str]:
        """Metric names the expression reads (identifiers followed by a selector or range)."""
        names = set(re.findall(r"\b([a-z_:][a-z0-9_:]*)\s*[\{\[]", self.expr))
        return {n for n in names if n not in _PROMQL_WORDS}


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def _prometheus() -> DataSourceRef:
    return DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)


def _as_json(model: Any) -> dict[str, Any]:
    """A built SDK model as plain JSON data, the form Grafana's HTTP API takes."""
    data: dict[str, Any] = json.loads(JSONEncoder().encode(model))
    return data


@dataclass(frozen=True)
class Panel:
    """A time series panel: its queries, in the unit of their values."""

    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    description: str = ""

    def build(self, panel_id: int) -> timeseries.Panel:
        """Half a row wide. The legend shown and the tooltip unsorted are Grafana's own
        defaults, set because the SDK's are otherwise (hidden, ascending)."""
        legend = (common.VizLegendOptions().display_mode(LegendDisplayMode.LIST)
                  .placement(LegendPlacement.BOTTOM).show_legend(True))  # fmt: skip
        tooltip = common.VizTooltipOptions().mode(TooltipDisplayMode.SINGLE).sort(SortOrder.NONE)
        panel = (timeseries.Panel().id(panel_id).title(self.title).description(self.description)
                 .datasource(_prometheus()).span(12).height(8).unit(self.unit).legend(legend)
                 .tooltip(tooltip))  # fmt: skip
        for i, q in enumerate(self.queries):
            panel = panel.with_target(
                prometheus.Dataquery().ref_id(chr(ord("A") + i)).expr(q.expr)
                .legend_format(q.legend).datasource(_prometheus())
            )  # fmt: skip
        return panel


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    panels: tuple[Panel, ...]
    tags: tuple[str, ...] = ("vlaewatch",)

    def to_json(self) -> dict[str, Any]:
        """Grafana's dashboard JSON model (schema 39), two panels per row, with the changes
        vlaewatch annotates (threshold changes, model swaps) marked."""
        changes = (
            grafana.AnnotationQuery()
            .name("vlaewatch changes")
            .enable(True)
            .icon_color("orange")
            .datasource(DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .target(grafana.AnnotationTarget().type("tags").tags(["vlaewatch"]).limit(100))
        )
        board = (grafana.Dashboard(self.title).uid(self.uid).tags(list(self.tags))
                 .timezone(TimeZoneBrowser).refresh("30s").time("now-1h", "now")
                 .annotation(changes))  # fmt: skip
        for i, panel in enumerate(self.panels):
            board = board.with_panel(panel.build(i + 1))
        return _as_json(board.build())


@dataclass(frozen=True)
class AlertRule:
    """A Grafana-managed rule: fires when ``query`` (reduced to its last value) crosses
    ``threshold`` for ``for_``."""

    uid: str
    title: str
    query: Query
    condition: Literal["gt", "lt"]
    threshold: float
    for_: str = "5m"
    summary: str = ""
    no_data: Literal["OK", "NoData", "Alerting"] = "OK"
    labels: dict[str, str] = field(default_factory=lambda: {"service": "vlaewatch"})

    def to_json(self, folder_uid: str = FOLDER_UID) -> dict[str, Any]:
        """The provisioning API's alert rule model: query A over the last 10 minutes,
        reduced to its last value (B), against the threshold (C)."""
        now = RelativeTimeRange(from_val=0, to=0)
        query = (
            alerting.Query("A")
            .datasource_uid(DATASOURCE_UID)
            .relative_time_range(RelativeTimeRange(from_val=600, to=0))
            .model(prometheus.Dataquery().ref_id("A").expr(self.query.expr).instant())
        )
        last = (
            alerting.Query("B")
            .datasource_uid("__expr__")
            .relative_time_range(now)
            .model(expr.TypeReduce().ref_id("B").expression("A").reducer("last"))
        )
        evaluator = expr.ExprTypeThresholdConditionsEvaluator().type(self.condition)
        crosses = (
            alerting.Query("C")
            .datasource_uid("__expr__")
            .relative_time_range(now)
            .model(
                expr.TypeThreshold()
                .ref_id("C")
                .expression("B")
                .conditions(
                    [
                        expr.ExprTypeThresholdConditions().evaluator(
                            evaluator.params([self.threshold])
                        )
                    ]
                )
            )
        )
        rule = (
            alerting.Rule(self.title)
            .uid(self.uid)
            .folder_uid(folder_uid)
            .rule_group(RULE_GROUP)
            .org_id(1)
            .condition("C")
            .for_val(self.for_)
            .no_data_state(self.no_data)
            .exec_err_state("Error")
            .labels(dict(self.labels))
            .annotations({"summary": self.summary})
            .queries([query, last, crosses])
        )
        return _as_json(rule.build())


SERVICE = Dashboard(
    uid="vlaewatch-service",
    title="vlaewatch: inspection lines",
    panels=(
        Panel("Items scored per second, by line",
              (Query(f"sum by (line) (rate(vlaewatch_items_scored_total{RATE}))", "{{line}}"),),
              unit="ops"),
        Panel("Alerts per minute, by line",
              (Query(f"60 * sum by (line) (rate(vlaewatch_alerts_total{RATE}))", "{{line}}"),)),
        Panel("Alert rate (alerts / items), by line",
              (Query(f"sum by (line) (rate(vlaewatch_alerts_total{RATE})) / "
                     f"sum by (line) (rate(vlaewatch_items_scored_total{RATE}))", "{{line}}"),),
              unit="percentunit"),
        Panel("Score quantiles against the threshold, by line",
              (Query("histogram_quantile(0.5, sum by (line, le) "
                     f"(rate(vlaewatch_score_bucket{RATE})))", "p50 {{line}}"),
               Query("histogram_quantile(0.99, sum by (line, le) "
                     f"(rate(vlaewatch_score_bucket{RATE})))", "p99 {{line}}"),
               Query("max by (line) (vlaewatch_threshold)", "threshold {{line}}"))),
        Panel("Consumer lag and pending entries",
              (Query("max(vlaewatch_consumer_lag)", "undelivered"),
               Query("max(vlaewatch_consumer_pending)", "pending"))),
        Panel("Items lost (trimmed before every consumer acknowledged them)",
              (Query("max(vlaewatch_items_lost_total)", "lost"),)),
        Panel("Consumer lag (age of the oldest unread score)",
              (Query("max(vlaewatch_consumer_lag_seconds)", "lag"),), unit="s"),
        Panel("API latency p50 / p99, by route",
              (Query("histogram_quantile(0.5, sum by (route, le) "
                     f"(rate(vlaewatch_http_request_duration_seconds_bucket{RATE})))",
                     "p50 {{route}}"),
               Query("histogram_quantile(0.99, sum by (route, le) "
                     f"(rate(vlaewatch_http_request_duration_seconds_bucket{RATE})))",
                     "p99 {{route}}")), unit="s"),
        Panel("Defect area (share of the part above the pixel threshold), by line",
              (Query("histogram_quantile(0.9, sum by (line, le) "
                     f"(rate(vlaewatch_defect_area_bucket{RATE})))", "p90 {{line}}"),
               Query(f"sum by (line) (rate(vlaewatch_defect_area_sum{RATE})) / "
                     f"sum by (line) (rate(vlaewatch_defect_area_count{RATE}))",
                     "mean {{line}}")), unit="percentunit"),
        Panel("Regions per alert, by line",
              (Query(f"sum by (line) (rate(vlaewatch_alert_regions_sum{RATE})) / "
                     f"sum by (line) (rate(vlaewatch_alert_regions_count{RATE}))",
                     "mean {{line}}"),)),
        Panel("Threshold calibrations",
              (Query(f"sum by (method, applied) (increase(vlaewatch_calibrations_total{RATE}))",
                     "{{method}} applied={{applied}}"),)),
    ),
)  # fmt: skip

RAY = Dashboard(
    uid="vlaewatch-ray",
    title="vlaewatch: scorer replicas and training",
    panels=(
        Panel("Scorer replicas healthy",
              (Query(f"sum by (deployment) (ray_serve_deployment_replica_healthy{{{SCORER}}})",
                     "{{deployment}}"),)),
        Panel("Scorer requests per second",
              (Query('sum by (deployment) (rate(ray_serve_deployment_request_counter_total'
                     f'{{application="scorer"}}{RATE}))', "{{deployment}}"),), unit="reqps"),
        Panel("Scorer processing latency p50 / p99",
              (Query("histogram_quantile(0.5, sum by (le) (rate("
                     'ray_serve_deployment_processing_latency_ms_bucket{application="scorer"}'
                     f"{RATE})))", "p50"),
               Query("histogram_quantile(0.99, sum by (le) (rate("
                     'ray_serve_deployment_processing_latency_ms_bucket{application="scorer"}'
                     f"{RATE})))", "p99")), unit="ms"),
        Panel("Training runs: Ray Train workers and CPU in use",
              (Query('sum(ray_actors{State="ALIVE", Name=~"RayTrainWorker.*"}) or vector(0)',
                     "train workers"),
               Query('sum(ray_resources{Name="CPU", State="USED"})', "CPUs used"))),
    ),
)  # fmt: skip

DASHBOARDS = (SERVICE, RAY)


def _mean_area(window: str) -> str:
    """The mean defect area of a line's items over ``window``."""
    return (f"(sum by (line) (rate(vlaewatch_defect_area_sum[{window}])) / "
            f"sum by (line) (rate(vlaewatch_defect_area_count[{window}])))")  # fmt: skip


RULES = (
    AlertRule(
        uid="vlaewatch-alert-rate-spike",
        title="Alert rate spike on a line",
        query=Query(f"sum by (line) (rate(vlaewatch_alerts_total{RATE})) / "
                    f"sum by (line) (rate(vlaewatch_items_scored_total{RATE}))"),
        condition="gt", threshold=0.2, for_="10m",
        summary="More than 20% of a line's items alert: the line, the lighting or the model "
                "changed; check the alert gallery and recalibrate if needed.",
    ),
    AlertRule(
        uid="vlaewatch-defect-area-creeping",
        title="Defect area creeping up on a line",
        query=Query(_mean_area("1h") + " / " + _mean_area("6h")),
        condition="gt", threshold=1.5, for_="30m",
        summary="A line's mean defect area over the last hour is 1.5 times its 6-hour mean: "
                "parts drift towards failing (wear, a tool, contamination) before they fail "
                "outright. Look at the line's recent alert overlays.",
    ),
    AlertRule(
        uid="vlaewatch-consumer-lag",
        title="Score consumer lag growing",
        query=Query("max(deriv(vlaewatch_consumer_lag_seconds[10m]))"),
        condition="gt", threshold=0.5, for_="10m",
        summary="The API falls behind the score stream: add API processes or check Redis.",
    ),
    AlertRule(
        uid="vlaewatch-items-lost",
        title="Scored items lost before any alert decision",
        query=Query(f"max(increase(vlaewatch_items_lost_total{RATE}))"),
        condition="gt", threshold=0, for_="0m",
        summary="The score stream passed its hard bound (scores_hard_maxlen) and entries a "
                "consumer group had not acknowledged were trimmed: their items reached no "
                "alert. An API was down or behind for long; /v1/health says how many.",
    ),
    AlertRule(
        uid="vlaewatch-scorer-down",
        title="Scorer down",
        query=Query('sum(ray_serve_deployment_replica_healthy{application="scorer"}) or vector(0)'),
        condition="lt", threshold=1, for_="2m",
        summary="No healthy scorer replica: images are not being scored.",
    ),
    AlertRule(
        uid="vlaewatch-no-items",
        title="No items scored for 15 minutes",
        query=Query("sum(increase(vlaewatch_items_scored_total[15m])) or vector(0)"),
        condition="lt", threshold=1, for_="5m", no_data="Alerting",
        summary="No inspection results reached the API for 15 minutes.",
    ),
)  # fmt: skip


def all_queries() -> list[Query]:
    """Every expression of every panel and rule."""
    out = [q for d in DASHBOARDS for p in d.panels for q in p.queries]
    return out + [r.query for r in RULES]


def contact_point(webhook_url: str) -> dict[str, Any]:
    """Where the rules notify: a webhook (an operators' chat, a pager bridge)."""
    point = (alerting.ContactPoint().uid(CONTACT_POINT).name(CONTACT_POINT).type("webhook")
             .settings({"url": webhook_url}).disable_resolve_message(False))  # fmt: skip
    return _as_json(point.build())

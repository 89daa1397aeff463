"""The API's request and response models: the HTTP contract, defined once, with examples."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.auth import Role
from contract.keys import DEFAULT_LINE, ID_PATTERN, LINE_PATTERN
from contract.records import DefectArea, PixelThreshold, Regions

AlertState = Literal["open", "acknowledged", "resolved"]
Label = Literal["anomaly", "false_alarm", "normal"]
Verdict = Literal["right", "wrong"]  # an operator's word on one region of an alert
Method = Literal["fpr", "labels", "sigma", "manual", "rollback"]
# What a threshold applies to: an image's score (does the part alert?) or its anomaly map
# (which pixels are defective: a region is where the map is above it).
Target = Literal["image", "pixel"]
Line = Annotated[str, Field(pattern=LINE_PATTERN, examples=["cam1"])]


def _example(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


THRESHOLD_EXAMPLE: dict[str, Any] = {
    "line": "default",
    "target": "image",
    "version": 3,
    "value": 1.824,
    "method": "fpr",
    "params": {"alpha": 0.01, "confidence": 0.95},
    "who": "alice",
    "at": 1795000000.0,
    "why": "weekly recalibration",
    "model_version": "c96dc36985a2a968",
    "false_alarm_rate": {
        "expected": 0.0123,
        "low": 0.004,
        "high": 0.031,
        "confidence": 0.95,
        "n_calibration": 80,
        "n_above": 0,
    },
}
ALERT_EXAMPLE: dict[str, Any] = {
    "item_id": "cam1-000123",
    "line": "cam1",
    "score": 3.297,
    "recon": 301.0,
    "kl": 10.2,
    "complexity": 93.4,
    "threshold": 1.824,
    "threshold_version": 3,
    "p_value": 0.0123,
    "model_version": "c96dc36985a2a968",
    "ts_ingested": 1795000000.1,
    "ts_scored": 1795000000.2,
    "created_at": 1795000000.3,
    "state": "open",
    "label": None,
    "note": "",
    "preview_url": "/v1/items/cam1-000123/preview.png",
    "events": [{"at": 1795000000.3, "who": "system", "action": "created", "note": ""}],
    "regions": [{"x": 12, "y": 30, "w": 9, "h": 5, "area": 31, "peak": 4.2}],
    "defect_area": 0.0076,
    "pixel_threshold": 2.1,
}


# --- thresholds ---------------------------------------------------------------------------


class FalseAlarmRateOut(BaseModel):
    """What a threshold implies on the model's normal calibration scores: the conformal
    estimate of the false-alarm rate and an interval for the realised rate."""

    model_config = _example(
        {"expected": 0.0123, "low": 0.004, "high": 0.031, "confidence": 0.95,
         "n_calibration": 80, "n_above": 0}
    )  # fmt: skip

    expected: float
    low: float
    high: float
    confidence: float
    n_calibration: int
    n_above: int


class Threshold(BaseModel):
    """One version of a line's threshold: an item alerts when its score is above ``value``
    (target ``image``), or its map shows a region where it is above ``value`` (``pixel``; the
    false-alarm rate is then the false-region rate: the share of normal images with any)."""

    model_config = _example(THRESHOLD_EXAMPLE)

    line: str
    target: Target = "image"
    version: int
    value: float
    method: Method
    params: dict[str, Any] = Field(default_factory=dict)
    who: str
    at: float
    why: str = ""
    model_version: str | None = None
    false_alarm_rate: FalseAlarmRateOut | None = None


class ThresholdList(BaseModel):
    """Current thresholds by line; a line without its own uses ``default``."""

    model_config = _example(
        {"default": {**THRESHOLD_EXAMPLE, "line": "default"}, "lines": {"cam1": THRESHOLD_EXAMPLE}}
    )

    default: Threshold | None
    lines: dict[str, Threshold]


class ThresholdHistory(BaseModel):
    model_config = _example({"line": "cam1", "versions": [THRESHOLD_EXAMPLE]})

    line: str
    versions: list[Threshold] = Field(description="newest first")


class FprParams(BaseModel):
    model_config = _example({"method": "fpr", "alpha": 0.01, "confidence": 0.95})

    method: Literal["fpr"] = "fpr"
    alpha: float = Field(gt=0, lt=1, description="target false-alarm rate", examples=[0.01])
    confidence: float = Field(default=0.95, gt=0, lt=1)


class LabelsParams(BaseModel):
    model_config = _example(
        {"method": "labels", "objective": "precision", "target_precision": 0.9, "all_lines": True}
    )

    method: Literal["labels"] = "labels"
    objective: Literal["f1", "precision"] = "f1"
    target_precision: float | None = Field(default=None, gt=0, le=1)
    all_lines: bool = Field(
        default=True, description="use labels of every line (else only this line's)"
    )


class SigmaParams(BaseModel):
    model_config = _example({"method": "sigma", "k": 3.0})

    method: Literal["sigma"] = "sigma"
    k: float = Field(default=3.0, description="mean + k·σ of normal calibration scores")


class ManualParams(BaseModel):
    model_config = _example({"method": "manual", "threshold": 2.5})

    method: Literal["manual"] = "manual"
    threshold: float = Field(allow_inf_nan=False)


CalibrationParams = Annotated[
    FprParams | LabelsParams | SigmaParams | ManualParams, Field(discriminator="method")
]


class CalibrateRequest(BaseModel):
    """Choose a line's threshold from data; ``dry_run`` previews it without applying."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"line": "cam1", "params": {"method": "fpr", "alpha": 0.01}, "dry_run": True,
                 "why": "new lens installed"},
                {"line": "default", "params": {"method": "labels", "objective": "f1"}},
                {"line": "cam2", "params": {"method": "sigma", "k": 3}},
                {"line": "cam3", "params": {"method": "manual", "threshold": 2.5},
                 "why": "supplier spec"},
            ]
        },
    )  # fmt: skip

    line: Line = DEFAULT_LINE
    target: Target = Field(
        default="image",
        description="image: the score an item alerts above; pixel: the anomaly-map value a "
        "region is above, calibrated on the normal calibration images' map maxima",
    )
    params: CalibrationParams
    dry_run: bool = False
    why: str = Field(default="", max_length=500)
    model_version: str | None = Field(
        default=None,
        description="calibrate on this version's scores (default: the version that scores "
        "the line now, as the scorer announced it)",
    )
    window_s: float | None = Field(
        default=None,
        gt=0,
        le=30 * 86400,
        description="what-if window of recent scores, at most 30 days (default configured)",
    )


class LineImpact(BaseModel):
    """Over the what-if window: items of a line and how many alert under a threshold."""

    model_config = _example(
        {
            "line": "cam1",
            "items": 500,
            "alerts_now": 9,
            "alerts_new": 4,
            "rate_now": 0.018,
            "rate_new": 0.008,
        }
    )

    line: str
    items: int
    alerts_now: int
    alerts_new: int
    rate_now: float
    rate_new: float


class LabelQuality(BaseModel):
    model_config = _example(
        {"precision": 0.92, "recall": 0.85, "f1": 0.884, "n_anomaly": 40, "n_normal": 160}
    )

    precision: float
    recall: float
    f1: float
    n_anomaly: int
    n_normal: int


class CalibrationResult(BaseModel):
    """The threshold a method chose and what it implies; ``applied`` is False for dry runs."""

    model_config = _example(
        {"line": "cam1", "threshold": 1.824, "applied": False, "version": None,
         "model_version": "c96dc36985a2a968",
         "false_alarm_rate": {"expected": 0.0123, "low": 0.004, "high": 0.031,
                              "confidence": 0.95, "n_calibration": 80, "n_above": 0},
         "window_s": 3600, "impact": [{"line": "cam1", "items": 500, "alerts_now": 9,
                                       "alerts_new": 4, "rate_now": 0.018, "rate_new": 0.008}],
         "label_quality": None}
    )  # fmt: skip

    line: str
    target: Target = "image"
    threshold: float
    applied: bool
    version: int | None = Field(description="the new threshold version, when applied")
    model_version: str | None
    false_alarm_rate: FalseAlarmRateOut | None
    window_s: float
    impact: list[LineImpact]
    label_quality: LabelQuality | None = None


class RollbackRequest(BaseModel):
    model_config = _example({"to_version": 2, "why": "new threshold flooded the line"})

    to_version: int | None = Field(default=None, ge=1, description="default: the previous one")
    why: str = Field(default="", max_length=500)
    target: Target = "image"


# --- alerts -------------------------------------------------------------------------------


class AlertEvent(BaseModel):
    model_config = _example(
        {
            "at": 1795000100.0,
            "who": "olga",
            "action": "acknowledged",
            "note": "checking the part",
            "label": None,
        }
    )

    at: float
    who: str
    action: Literal["created", "acknowledged", "resolved", "labelled", "region labelled"]
    note: str = ""
    label: Label | None = None
    region: int | None = Field(default=None, description="the region a region label is for")
    verdict: Verdict | None = None


class Alert(BaseModel):
    """An item scored above its line's threshold. One item makes at most one alert."""

    model_config = _example(ALERT_EXAMPLE)

    item_id: str
    line: str
    score: float
    recon: float
    kl: float
    complexity: float | None = Field(
        default=None, description="input complexity (total variation) the score is divided by"
    )
    threshold: float
    threshold_version: int
    p_value: float | None = Field(
        description="conformal p-value of the score against the model's normal calibration "
        "scores: the chance a normal image scores at least this high"
    )
    model_version: str
    ts_ingested: float
    ts_scored: float
    created_at: float
    state: AlertState
    label: Label | None = None
    note: str = ""
    preview_url: str
    events: list[AlertEvent] = Field(default_factory=list)
    regions: Regions = None
    defect_area: DefectArea = None
    pixel_threshold: PixelThreshold = None


class AlertPage(BaseModel):
    """Newest first; pass ``next_cursor`` as ``cursor`` for the next page (null: no more)."""

    model_config = _example(
        {"items": [ALERT_EXAMPLE], "next_cursor": "1795000000.2|cam1-000123", "scanned": 1}
    )

    items: list[Alert]
    next_cursor: str | None
    scanned: int = Field(description="alerts examined for this page")


class AlertAction(BaseModel):
    model_config = _example({"note": "operator checked the part; lens smudge"})

    note: str = Field(default="", max_length=2000)


class RegionLabelRequest(BaseModel):
    """An operator's word on one region of an alert: ``right`` (the defect is there) or
    ``wrong`` (nothing wrong there); region labels feed the pixel threshold's ``labels``."""

    model_config = _example({"verdict": "wrong", "note": "a reflection on the rim"})

    verdict: Verdict
    note: str = Field(default="", max_length=2000)


class RegionLabel(BaseModel):
    """A labelled region: where it was, its peak, and the verdict."""

    model_config = _example(
        {"item_id": "cam1-000123", "region": 0, "line": "cam1", "peak": 4.2,
         "pixel_threshold": 2.1, "model_version": "c96dc36985a2a968", "verdict": "right",
         "who": "olga", "at": 1795000200.0, "note": ""}
    )  # fmt: skip

    item_id: str
    region: int
    line: str
    peak: float
    pixel_threshold: float | None
    model_version: str
    verdict: Verdict
    who: str
    at: float
    note: str = ""


class LabelRequest(BaseModel):
    """Operator's verdict; labels feed the ``labels`` calibration method."""

    model_config = _example({"label": "false_alarm", "note": "reflection, part is fine"})

    label: Label
    note: str = Field(default="", max_length=2000)


class ItemLabel(BaseModel):
    model_config = _example(
        {
            "item_id": "cam1-000124",
            "line": "cam1",
            "score": 1.402,
            "model_version": "c96dc36985a2a968",
            "label": "anomaly",
            "who": "olga",
            "at": 1795000200.0,
            "note": "missed scratch",
        }
    )

    item_id: str = Field(pattern=ID_PATTERN)
    line: str
    score: float
    model_version: str
    label: Label
    who: str
    at: float
    note: str = ""


# --- stats, health ------------------------------------------------------------------------


class StatsRow(BaseModel):
    model_config = _example(
        {
            "line": "cam1",
            "bucket_start": 1795000200.0,
            "items": 1200,
            "alerts": 14,
            "alert_rate": 0.0117,
            "score_p50": 0.982,
            "score_p90": 1.31,
            "score_p99": 1.904,
            "score_max": 402.1,
        }
    )

    line: str
    bucket_start: float
    items: int
    alerts: int
    alert_rate: float
    score_p50: float | None
    score_p90: float | None
    score_p99: float | None
    score_max: float | None


class StatsResponse(BaseModel):
    model_config = _example(
        {"window_s": 3600, "bucket_s": 300, "rows": [
            {"line": "cam1", "bucket_start": 1795000200.0, "items": 1200, "alerts": 14,
             "alert_rate": 0.0117, "score_p50": 0.982, "score_p90": 1.31, "score_p99": 1.904,
             "score_max": 402.1}]}
    )  # fmt: skip

    window_s: float
    bucket_s: float
    rows: list[StatsRow]


class ScoreHistogram(BaseModel):
    """Score distributions on shared bins: the model's normal calibration scores and each
    line's recent scores, with the thresholds in force (the console's calibration chart)."""

    model_config = _example(
        {"model_version": "c96dc36985a2a968", "edges": [50.0, 100.0, 150.0, 200.0],
         "calibration": [12, 60, 8], "lines": {"cam1": [30, 400, 70]}, "window_s": 3600,
         "thresholds": {"default": 1.824}, "overflow": {"cam1": 12}}
    )  # fmt: skip

    model_version: str | None
    edges: list[float]
    calibration: list[int]
    lines: dict[str, list[int]]
    overflow: dict[str, int] = Field(description="recent scores above the last edge, by line")
    window_s: float
    thresholds: dict[str, float]


class Me(BaseModel):
    """Who the key in this request belongs to."""

    model_config = _example({"name": "olga", "role": "operator"})

    name: str
    role: Role


class ApiHealth(BaseModel):
    model_config = _example(
        {
            "status": "ok",
            "redis": True,
            "consumer": "api-host-4242",
            "consuming": True,
            "pending": 0,
            "lag": 0,
            "model_version": "c96dc36985a2a968",
            "reason": None,
            "items_lost": 0,
        }
    )

    status: Literal["ok", "degraded"]
    redis: bool
    consumer: str
    consuming: bool
    pending: int | None
    lag: int | None
    model_version: str | None
    reason: str | None = None
    # line -> version, as the scorer announced them; "*": every line without its own model
    line_models: dict[str, str] = Field(default_factory=dict)
    items_lost: int | None = Field(
        default=None,
        description="score entries trimmed from the stream before every consumer group "
        "acknowledged them (the stream over its hard bound, scores_hard_maxlen): in this "
        "deployment, ever; their items reached no alert",
    )


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: what went wrong, in words."""

    model_config = _example({"detail": "alert cam1-000123 is resolved; it cannot be acknowledged"})

    detail: str
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="for 422 request validation: each failing field"
    )


# --- explorer ------------------------------------------------------------------------------


class ExploreView(BaseModel):
    """The numbers of a latent-space view (the PNG endpoint beside it draws them)."""

    model_config = _example(
        {"kind": "neighbours", "model_version": "c96dc36985a2a968", "width": 200, "height": 29,
         "cached": False, "data": {"item": "cam1-000123", "k": 6,
                                   "latent_distance": [1.92, 2.01, 2.05, 2.1, 2.2, 2.3],
                                   "distance_from_normal": 2.7}}
    )  # fmt: skip

    kind: str
    model_version: str
    width: int = Field(description="of the PNG view")
    height: int
    cached: bool
    data: dict[str, Any]

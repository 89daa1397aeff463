"""``/v1/thresholds``: thresholds, their history, calibration requests and results."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import example
from contract.keys import DEFAULT_LINE, LINE_PATTERN

Method = Literal["fpr", "labels", "sigma", "manual", "rollback"]
# What a threshold applies to: an image's score (does the part alert?) or its anomaly map
# (which pixels are defective: a region is where the map is above it).
Target = Literal["image", "pixel"]
Line = Annotated[str, Field(pattern=LINE_PATTERN, examples=["cam1"])]

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


class FalseAlarmRateOut(BaseModel):
    """What a threshold implies on the model's normal calibration scores: the conformal
    estimate of the false-alarm rate and an interval for the realised rate."""

    model_config = example(
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

    model_config = example(THRESHOLD_EXAMPLE)

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

    model_config = example(
        {"default": {**THRESHOLD_EXAMPLE, "line": "default"}, "lines": {"cam1": THRESHOLD_EXAMPLE}}
    )

    default: Threshold | None
    lines: dict[str, Threshold]


class ThresholdHistory(BaseModel):
    model_config = example({"line": "cam1", "versions": [THRESHOLD_EXAMPLE]})

    line: str
    versions: list[Threshold] = Field(description="newest first")


class FprParams(BaseModel):
    model_config = example({"method": "fpr", "alpha": 0.01, "confidence": 0.95})

    method: Literal["fpr"] = "fpr"
    alpha: float = Field(gt=0, lt=1, description="target false-alarm rate", examples=[0.01])
    confidence: float = Field(default=0.95, gt=0, lt=1)


class LabelsParams(BaseModel):
    model_config = example(
        {"method": "labels", "objective": "precision", "target_precision": 0.9, "all_lines": True}
    )

    method: Literal["labels"] = "labels"
    objective: Literal["f1", "precision"] = "f1"
    target_precision: float | None = Field(default=None, gt=0, le=1)
    all_lines: bool = Field(
        default=True, description="use labels of every line (else only this line's)"
    )


class SigmaParams(BaseModel):
    model_config = example({"method": "sigma", "k": 3.0})

    method: Literal["sigma"] = "sigma"
    k: float = Field(default=3.0, description="mean + k·σ of normal calibration scores")


class ManualParams(BaseModel):
    model_config = example({"method": "manual", "threshold": 2.5})

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

    model_config = example(
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
    model_config = example(
        {"precision": 0.92, "recall": 0.85, "f1": 0.884, "n_anomaly": 40, "n_normal": 160}
    )

    precision: float
    recall: float
    f1: float
    n_anomaly: int
    n_normal: int


class CalibrationResult(BaseModel):
    """The threshold a method chose and what it implies; ``applied`` is False for dry runs."""

    model_config = example(
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
    model_config = example({"to_version": 2, "why": "new threshold flooded the line"})

    to_version: int | None = Field(default=None, ge=1, description="default: the previous one")
    why: str = Field(default="", max_length=500)
    target: Target = "image"

"""``/v1/alerts`` and ``/v1/items``: alerts, their events, and operators' labels."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas import example
from contract.keys import ID_PATTERN
from contract.records import DefectArea, PixelThreshold, Regions

AlertState = Literal["open", "acknowledged", "resolved"]
Label = Literal["anomaly", "false_alarm", "normal"]
Verdict = Literal["right", "wrong"]  # an operator's word on one region of an alert
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


class AlertEvent(BaseModel):
    model_config = example(
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

    model_config = example(ALERT_EXAMPLE)

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

    model_config = example(
        {"items": [ALERT_EXAMPLE], "next_cursor": "1795000000.2|cam1-000123", "scanned": 1}
    )

    items: list[Alert]
    next_cursor: str | None
    scanned: int = Field(description="alerts examined for this page")


class AlertAction(BaseModel):
    model_config = example({"note": "operator checked the part; lens smudge"})

    note: str = Field(default="", max_length=2000)


class RegionLabelRequest(BaseModel):
    """An operator's word on one region of an alert: ``right`` (the defect is there) or
    ``wrong`` (nothing wrong there); region labels feed the pixel threshold's ``labels``."""

    model_config = example({"verdict": "wrong", "note": "a reflection on the rim"})

    verdict: Verdict
    note: str = Field(default="", max_length=2000)


class RegionLabel(BaseModel):
    """A labelled region: where it was, its peak, and the verdict."""

    model_config = example(
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

    model_config = example({"label": "false_alarm", "note": "reflection, part is fine"})

    label: Label
    note: str = Field(default="", max_length=2000)


class ItemLabel(BaseModel):
    model_config = example(
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

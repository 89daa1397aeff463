"""``/v1/stats``, ``/v1/me``: score statistics by line, and who is calling."""

from __future__ import annotations

from pydantic import BaseModel, Field

from api.schemas import example
from contract.auth import Role


class StatsRow(BaseModel):
    model_config = example(
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
    model_config = example(
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

    model_config = example(
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

    model_config = example({"name": "olga", "role": "operator"})

    name: str
    role: Role

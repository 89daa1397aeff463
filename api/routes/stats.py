"""``/v1/stats``: per line and time bucket, items scored, alerts, alert rate, score quantiles."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.deps import ServicesDep, Viewer
from api.errors import Unprocessable
from api.schemas import ErrorBody
from api.schemas.stats import Me, ScoreHistogram, StatsResponse, StatsRow
from api.stats import summarize
from contract.keys import LINE_PATTERN

router = APIRouter(prefix="/v1", tags=["stats"])


@router.get(
    "/stats",
    response_model=StatsResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with format=csv"},
        **{s: {"model": ErrorBody} for s in (401, 403, 422, 503)},
    },
)
async def stats(
    services: ServicesDep,
    _: Viewer,
    window_s: Annotated[float, Query(gt=0, le=30 * 86400)] = 3600,
    bucket_s: Annotated[float, Query(gt=0)] = 300,
    line: Annotated[str | None, Query(pattern=LINE_PATTERN)] = None,
    format: Literal["json", "csv"] = "json",
) -> StatsResponse | Response:
    """Summaries of the recent score stream (as far back as its retention reaches)."""
    if window_s / bucket_s > 10_000:
        raise Unprocessable(f"{window_s / bucket_s:.0f} buckets; use at most 10000")
    scores = await services.window.read(window_s)
    alert_times = await services.alerts.times_since(time.time() - window_s)
    if line is not None:
        scores = scores[scores["line"] == line]
        alert_times = [a for a in alert_times if a[0] == line]
    table = summarize(scores, alert_times, bucket_s)
    if format == "csv":
        return Response(table.to_csv(index=False), media_type="text/csv")
    records = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    rows = [StatsRow.model_validate(r) for r in records]
    return StatsResponse(window_s=window_s, bucket_s=bucket_s, rows=rows)


@router.get(
    "/scores/histogram",
    response_model=ScoreHistogram,
    responses={s: {"model": ErrorBody} for s in (401, 403, 422, 503)},
)
async def histogram(
    services: ServicesDep,
    _: Viewer,
    window_s: Annotated[float, Query(gt=0, le=30 * 86400)] = 3600,
    bins: Annotated[int, Query(ge=5, le=200)] = 40,
    model_version: str | None = None,
) -> ScoreHistogram:
    """Normal calibration scores beside each line's recent scores, on the same bins. The bins
    span the calibration scores and the bulk of recent ones, at most twice the calibration
    range beyond it; scores above count as overflow, scores below in the first bin."""
    model = await services.models.get(model_version)
    cal = model.calibration if model is not None else np.array([])
    window = await services.window.read(window_s)
    recent = window["score"].to_numpy(dtype=np.float64)
    pool = np.r_[cal, recent]
    if len(pool) == 0:
        edges = np.linspace(0.0, 1.0, bins + 1)
    elif len(cal):
        # The normal calibration scores set the scale; recent scores far outside it would
        # squash the chart, so they are counted as overflow (above) or in the first bin.
        span = max(float(cal.max() - cal.min()), 1e-9)
        lo = max(float(pool.min()), float(cal.min()) - span)
        top = float(np.quantile(recent, 0.99)) if len(recent) else float(cal.max())
        hi = min(max(top, float(cal.max()) * 1.05), float(cal.max()) + 2 * span)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    else:
        lo, hi = float(pool.min()), float(np.quantile(pool, 0.99))
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    lines, overflow = {}, {}
    for line, group in window.groupby("line"):
        scores = group["score"].to_numpy(dtype=np.float64)
        lines[str(line)] = np.histogram(np.maximum(scores, edges[0]), edges)[0].tolist()
        overflow[str(line)] = int(np.sum(scores > edges[-1]))
    thresholds = {ln: t.value for ln, t in (await services.thresholds.current()).items()}
    return ScoreHistogram(
        model_version=model.version if model else None, edges=edges.tolist(),
        calibration=np.histogram(cal, edges)[0].tolist(), lines=lines, overflow=overflow,
        window_s=window_s, thresholds=thresholds,
    )  # fmt: skip


@router.get("/me", response_model=Me, responses={401: {"model": ErrorBody}})
async def me(who: Viewer) -> Me:
    """The name and role of the calling key."""
    return Me(name=who.name, role=who.role)

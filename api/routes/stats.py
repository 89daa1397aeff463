"""``/v1/stats``: per line and time bucket, items scored, alerts, alert rate, score quantiles."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.deps import ServicesDep, Viewer
from api.errors import Unprocessable
from api.schemas import ErrorBody, StatsResponse, StatsRow
from api.stats import recent_scores, summarize
from scorer.schemas import LINE_PATTERN

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
    scores = await recent_scores(
        services.client, services.keys, window_s, services.cfg.max_window_entries
    )
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

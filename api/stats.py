"""Tabular views of recent scores (pandas): the what-if window of calibration and the
per-line, per-bucket summaries of ``/v1/stats``."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import redis.asyncio as aioredis

from scorer.schemas import RecordError, ScoreRecord, StreamKeys

WINDOW_COLUMNS = ["item_id", "line", "score", "ts_scored", "model_version"]


async def recent_scores(
    client: aioredis.Redis, keys: StreamKeys, window_s: float, max_entries: int
) -> pd.DataFrame:
    """Score entries of the last ``window_s`` seconds (the newest ``max_entries`` at most),
    read straight from the score stream: it is the record of what was scored."""
    start = f"{int((time.time() - window_s) * 1000)}-0"
    rows: Any = await client.xrevrange(keys.scores, "+", start, count=max_entries)
    records = []
    for _, fields in rows:
        try:
            records.append(ScoreRecord.from_fields(fields))
        except RecordError:
            continue  # the consumer dead-letters malformed entries
    if not records:
        return pd.DataFrame(columns=WINDOW_COLUMNS)
    return pd.DataFrame([r.model_dump(include=set(WINDOW_COLUMNS)) for r in records])[
        WINDOW_COLUMNS
    ]


def summarize(
    scores: pd.DataFrame, alert_times: list[tuple[str, float]], bucket_s: float
) -> pd.DataFrame:
    """Per line and time bucket: items, alerts, alert rate, score quantiles."""
    columns = ["line", "bucket_start", "items", "alerts", "alert_rate", "score_p50",
               "score_p90", "score_p99", "score_max"]  # fmt: skip
    if scores.empty and not alert_times:
        return pd.DataFrame(columns=columns)
    df = scores.assign(bucket_start=(scores["ts_scored"] // bucket_s) * bucket_s)
    by = df.groupby(["line", "bucket_start"])["score"]
    table = pd.DataFrame(
        {
            "items": by.size(),
            "score_p50": by.quantile(0.5),
            "score_p90": by.quantile(0.9),
            "score_p99": by.quantile(0.99),
            "score_max": by.max(),
        }
    )
    alerts = pd.DataFrame(alert_times, columns=["line", "ts"])
    alerts["bucket_start"] = (alerts["ts"] // bucket_s) * bucket_s
    counts = alerts.groupby(["line", "bucket_start"]).size().rename("alerts")
    table = table.join(counts, how="outer")
    table["items"] = table["items"].fillna(0).astype(int)
    table["alerts"] = table["alerts"].fillna(0).astype(int)
    table["alert_rate"] = (table["alerts"] / table["items"].where(table["items"] > 0)).fillna(0.0)
    return table.reset_index().sort_values(["line", "bucket_start"])[columns]

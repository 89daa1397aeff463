"""Tabular views of recent scores (pandas): the what-if window of calibration and the
per-line, per-bucket summaries of ``/v1/stats``."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import redis.asyncio as aioredis

from contract.keys import StreamKeys

WINDOW_COLUMNS = ["item_id", "line", "score", "ts_scored", "model_version"]
_FIELD_KEYS = {c: c.encode() for c in WINDOW_COLUMNS}


async def recent_scores(
    client: aioredis.Redis, keys: StreamKeys, window_s: float, max_entries: int
) -> pd.DataFrame:
    """Score entries of the last ``window_s`` seconds (the newest ``max_entries`` at most),
    read straight from the score stream: it is the record of what was scored."""
    # A window longer than the epoch reads everything (a negative id is no stream id).
    start = f"{max(0, int((time.time() - window_s) * 1000))}-0"
    rows: Any = await client.xrevrange(keys.scores, "+", start, count=max_entries)
    # Plain field reads, not one pydantic model per entry: windows hold up to 10^5 entries.
    table: dict[str, list[Any]] = {c: [] for c in WINDOW_COLUMNS}
    for _, fields in rows:
        try:
            values = [fields[_FIELD_KEYS[c]] for c in WINDOW_COLUMNS]
            score, ts = float(values[2]), float(values[3])
        except (KeyError, ValueError):
            continue  # the consumer dead-letters malformed entries
        table["item_id"].append(values[0].decode())
        table["line"].append(values[1].decode())
        table["score"].append(score)
        table["ts_scored"].append(ts)
        table["model_version"].append(values[4].decode())
    return pd.DataFrame(table, columns=WINDOW_COLUMNS)


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

"""Tabular views of recent scores (pandas): the what-if window of calibration and the
per-line, per-bucket summaries of ``/v1/stats``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pandas as pd
import redis.asyncio as aioredis

from contract.keys import StreamKeys
from contract.streams import as_text

WINDOW_COLUMNS = ["item_id", "line", "score", "ts_scored", "model_version"]
_FIELD_KEYS = {c: c.encode() for c in WINDOW_COLUMNS}
# Entries per XREVRANGE: Redis serves no other command (the consumer's included) while it
# builds a reply, about 0.1 s per 10,000 entries on a busy machine.
WINDOW_PAGE = 5_000


async def recent_scores(
    client: aioredis.Redis, keys: StreamKeys, window_s: float, max_entries: int
) -> pd.DataFrame:
    """Score entries of the last ``window_s`` seconds (the newest ``max_entries`` at most),
    read straight from the score stream, newest first, in pages of ``WINDOW_PAGE``: it is
    the record of what was scored."""
    # A window longer than the epoch reads everything (a negative id is no stream id).
    start = f"{max(0, int((time.time() - window_s) * 1000))}-0"
    # Plain field reads, not one pydantic model per entry: windows hold up to 10^5 entries.
    table: dict[str, list[Any]] = {c: [] for c in WINDOW_COLUMNS}
    end, left = "+", max_entries
    while left > 0:
        count = min(WINDOW_PAGE, left)
        rows: Any = await client.xrevrange(keys.scores, end, start, count=count)
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
        if len(rows) < count:
            break
        left -= count
        end = f"({as_text(rows[-1][0])}"
    return pd.DataFrame(table, columns=WINDOW_COLUMNS)


class ScoreWindow:
    """The score window as the routes read it: one read at a time per API process, the others
    waiting their turn. A read parses up to ``max_entries`` entries on the request loop;
    several at once hold that loop past other requests' Redis timeouts (answered 503) and
    take the consumer thread's share of the interpreter and of Redis (its backlog grows)."""

    def __init__(self, client: aioredis.Redis, keys: StreamKeys, max_entries: int) -> None:
        self.client = client
        self.keys = keys
        self.max_entries = max_entries
        self._turn = asyncio.Semaphore(1)

    async def read(self, window_s: float) -> pd.DataFrame:
        """``recent_scores`` of the last ``window_s`` seconds, once no other read runs."""
        async with self._turn:
            return await recent_scores(self.client, self.keys, window_s, self.max_entries)


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

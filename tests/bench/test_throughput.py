"""The end-to-end step's readings: windows by send time, and Redis's AOF rewrites seen."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from bench.throughput import RewriteWatch, latency_readings


def test_latency_readings_split_by_send_time_and_fold_a_short_last_window() -> None:
    start = 1000.0
    sent = [start + 1, start + 2, start + 31, start + 32, start + 61]  # 61 s: a short third
    total = [10.0, 20.0, 300.0, 400.0, 50.0]
    readings = latency_readings(sent, total, start, 62.0, 30.0)
    assert [r["from_s"] for r in readings] == [0.0, 30.0]
    assert [r["alerts"] for r in readings] == [2, 3]
    assert readings[0]["p99_ms"] == 20.0
    assert readings[1]["p50_ms"] == 300.0 and readings[1]["p99_ms"] == 400.0


def test_rewrite_watch_records_a_rewrite_of_the_embedded_server(redis_server: Any) -> None:
    client = redis.Redis.from_url(redis_server.url)
    keys = [f"rewrite-watch-{i}" for i in range(20_000)]
    blob = b"x" * 2048  # 40 MB in all: a rewrite that lasts longer than a few polls
    try:
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.set(k, blob, ex=300)
        pipe.execute()
        _rewrites_done(client)  # one Redis may have started on its own: not the one asked for
        with RewriteWatch(redis_server.url, every_s=0.002) as watch:
            time.sleep(0.05)
            before = time.time()
            client.bgrewriteaof()
            _rewrites_done(client)
            time.sleep(0.05)
        ours = [(a, b) for a, b in watch.spans if a >= before]
        assert len(ours) == 1, watch.spans
        began, ended = ours[0]
        assert began <= ended
        assert watch.during((began + ended) / 2) and not watch.during(before - 1)
    finally:
        client.delete(*keys)
        client.close()


def _rewrites_done(client: redis.Redis, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info: Any = client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        time.sleep(0.01)
    pytest.fail(f"Redis was still rewriting its AOF after {timeout_s} s")

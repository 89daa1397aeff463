"""The frames step's sustained rate, the end-to-end step's readings (windows by send time),
and Redis's AOF rewrites seen."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.throughput import RewriteWatch, kept_up, latency_readings, sustained_rate
from contract.redis_server import EmbeddedRedis


def _step(rate: int, scored: float, backlog: int, before: int = 0) -> dict[str, Any]:
    return {"rate": rate, "offered_per_s": float(rate), "scored_per_s": scored,
            "backlog": backlog, "backlog_before": before, "dead_letters": 0}  # fmt: skip


def test_a_step_keeps_up_while_its_backlog_is_frames_in_flight_not_a_queue() -> None:
    # A run's steps (speed run of 361a92e): 40-50 ms of frames in flight at each step's end,
    # until 7,200/s left 1,776 (247 ms): 95 % scored, but a queue that grew.
    steps = [_step(5000, 4953, 233), _step(6000, 5947, 256), _step(7200, 6843, 1776),
             _step(8600, 6468, 10652)]  # fmt: skip
    assert [kept_up(s) for s in steps] == [True, True, False, False]
    assert sustained_rate(steps) == 6000.0
    # A step that began with frames left over is judged by what it added, and a later step
    # that keeps up after one that did not is noise, not capacity.
    assert kept_up(_step(4000, 3900, 900, before=700))
    assert sustained_rate([_step(3000, 2990, 150), _step(4000, 3800, 912),
                           _step(5000, 4990, 250)]) == 3000.0  # fmt: skip


def test_latency_readings_split_by_send_time_and_fold_a_short_last_window() -> None:
    start = 1000.0
    sent = [start + 1, start + 2, start + 31, start + 32, start + 61]  # 61 s: a short third
    total = [10.0, 20.0, 300.0, 400.0, 50.0]
    readings = latency_readings(sent, total, start, 62.0, 30.0)
    assert [r["from_s"] for r in readings] == [0.0, 30.0]
    assert [r["alerts"] for r in readings] == [2, 3]
    assert readings[0]["p99_ms"] == 20.0
    assert readings[1]["p50_ms"] == 300.0 and readings[1]["p99_ms"] == 400.0


def test_rewrite_watch_records_a_rewrite_while_it_runs(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        client.mset({f"k{i}": i for i in range(20)})
        client.config_set("rdb-key-save-delay", 15_000)  # 15 ms a key: a 0.3 s rewrite
        with RewriteWatch(server.url, every_s=0.01) as watch:
            time.sleep(0.05)
            asked = time.time()
            client.bgrewriteaof()
            deadline = time.monotonic() + 10
            while _rewriting(client):
                if time.monotonic() > deadline:
                    pytest.fail("the rewrite did not finish in 10 s")
                time.sleep(0.01)
            done = time.time()
            time.sleep(0.05)
        client.close()
    assert len(watch.spans) == 1, watch.spans
    began, ended = watch.spans[0]
    assert asked <= began < ended <= done + 0.05
    assert ended - began >= 0.2
    assert watch.during((began + ended) / 2) and not watch.during(asked - 0.01)


def _rewriting(client: redis.Redis) -> bool:
    info: Any = client.info("persistence")
    return bool(info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"])

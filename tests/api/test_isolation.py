"""Heavy reads and the consumer (issue "Trust"): /v1/stats parses up to max_window_entries of
the score stream per call. Before, it shared the event loop with the consumer, so operators
hammering dashboards held up the alerts; now the consumer runs on a thread and loop of its
own, and the public routes read the group's backlog at most once a second.

The API under test is its own process on its own key prefix: the history it parses would
otherwise stay in the session's score stream, which other tests read."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.config import SCORES_GROUP, ApiConfig
from contract.keys import StreamKeys
from contract.records import ScoreRecord
from tests.api.test_api import VIEW, _consumed, _set_manual
from tests.conftest import ApiProcess
from tests.scorer.test_service import _wait_for

pytestmark = pytest.mark.reliability

# What docs/reliability.md promises the backlog stays within: one read of the consumer.
BATCH = ApiConfig.model_fields["batch_size"].default


def _backlog(client: redis.Redis, keys: StreamKeys) -> int:
    """Entries of the score stream the group has not read yet (up to 5,000)."""
    info = {g["name"]: g for g in client.xinfo_groups(keys.scores)}
    last = info[SCORES_GROUP.encode()]["last-delivered-id"].decode()
    return len(client.xrange(keys.scores, f"({last}", "+", count=5000))


def test_hammered_dashboards_do_not_hold_up_the_alerts(
    redis_server: Any, scorer_url: str, client: redis.Redis, version: str, tmp_path: Path
) -> None:
    keys = StreamKeys(f"iso{uuid.uuid4().hex[:6]}")
    # The served model's record under this prefix: alerts get their p-values as in service.
    record = client.hgetall(StreamKeys().model(version))
    assert record, "the session scorer announced no model record"
    client.hset(keys.model(version), mapping=record)  # type: ignore[arg-type]
    # No default threshold from data: the history alerts on nothing, every live item alerts.
    api = ApiProcess(redis_server.url, None, tmp_path, key_prefix=keys.prefix, initial_fpr=0)
    history, line = f"hist{uuid.uuid4().hex[:6]}", f"iso{uuid.uuid4().hex[:6]}"
    now = time.time()

    def entries(on: str, n: int, tag: str) -> str:
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            rec = ScoreRecord(item_id=f"{on}-{tag}-{i}", line=on, ts_ingested=now,
                              ts_scored=now, score=1.0, recon=0.5, kl=0.5,
                              model_version=version)  # fmt: skip
            pipe.xadd(keys.scores, rec.to_fields())  # type: ignore[arg-type]
        return str(pipe.execute()[-1].decode())

    stop = threading.Event()
    answered: list[int] = []

    def hammer(path: str) -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                r = http.get(f"{api.url}{path}", headers=VIEW, params={"window_s": 86400}
                             if path == "/v1/stats" else None)  # fmt: skip
                answered.append(r.status_code)

    threads = [threading.Thread(target=hammer, args=(p,), daemon=True)
               for p in ("/v1/stats",) * 6 + ("/metrics",)]  # fmt: skip
    try:
        _set_manual(api.url, line, 0.0)
        # A window worth parsing: 60,000 entries of history (consumed before we start).
        _consumed(client, entries(history, 60_000, "history"), prefix=keys.prefix, timeout=180)
        for t in threads:
            t.start()
        _wait_for(lambda: len(answered) >= len(threads), timeout=60)  # the readers under way
        worst = 0
        for batch in range(20):  # 2,000 items over about 4 s
            last = entries(line, 100, f"live{batch}")
            time.sleep(0.2)
            worst = max(worst, _backlog(client, keys))
        t0 = time.monotonic()
        _consumed(client, last, prefix=keys.prefix, timeout=60)
        drained = time.monotonic() - t0
        alerted = client.zcard(keys.alerts_of_line(line))
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        api.stop()
        with client.pipeline(transaction=False) as pipe:
            for key in client.scan_iter(match=f"{keys.prefix}:*", count=1000):
                pipe.unlink(key)
            pipe.execute()
    assert answered and set(answered) == {200}, set(answered)
    assert alerted == 2000  # the consumer's whole work: every live item is an alert
    # The consumer kept up while the dashboards were read as fast as they answer.
    assert worst <= BATCH and drained < 3.0, (worst, drained, len(answered))

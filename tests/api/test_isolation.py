"""Heavy reads and the consumer (issue "Trust"): /v1/stats parses up to max_window_entries of
the score stream per call. Before, it shared the event loop with the consumer, so operators
hammering dashboards held up the alerts; now the consumer runs on a thread and loop of its
own, and the public routes read the group's backlog at most once a second."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
import redis

from contract.records import ScoreRecord
from tests.api.test_api import VIEW, _consumed

pytestmark = pytest.mark.reliability


def _backlog(client: redis.Redis, group: str = "api") -> int:
    """Entries of the score stream the group has not read yet (up to 5,000)."""
    info = {g["name"]: g for g in client.xinfo_groups("vlaewatch:scores")}
    last = info[group.encode()]["last-delivered-id"].decode()
    return len(client.xrange("vlaewatch:scores", f"({last}", "+", count=5000))


def test_hammered_dashboards_do_not_hold_up_the_alerts(
    api_url: str, client: redis.Redis, version: str
) -> None:
    line = f"iso{uuid.uuid4().hex[:6]}"
    now = time.time()

    def entries(n: int, tag: str) -> str:
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            rec = ScoreRecord(item_id=f"{line}-{tag}-{i}", line=line, ts_ingested=now,
                              ts_scored=now, score=1.0, recon=0.5, kl=0.5,
                              model_version=version)  # fmt: skip
            pipe.xadd("vlaewatch:scores", rec.to_fields())  # type: ignore[arg-type]
        return str(pipe.execute()[-1].decode())

    # A window worth parsing: 20,000 entries more of history (consumed before we start).
    _consumed(client, entries(60_000, "history"), timeout=180)
    stop = threading.Event()
    answered: list[int] = []

    def hammer(path: str) -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                r = http.get(f"{api_url}{path}", headers=VIEW, params={"window_s": 86400}
                             if path == "/v1/stats" else None)  # fmt: skip
                answered.append(r.status_code)

    threads = [threading.Thread(target=hammer, args=(p,), daemon=True)
               for p in ("/v1/stats",) * 6 + ("/metrics",)]  # fmt: skip
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        worst = 0
        for batch in range(20):  # 2,000 items over about 4 s
            last = entries(100, f"live{batch}")
            time.sleep(0.2)
            worst = max(worst, _backlog(client))
        t0 = time.monotonic()
        _consumed(client, last, timeout=60)
        drained = time.monotonic() - t0
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert answered and set(answered) == {200}, set(answered)
    # The consumer kept up while the dashboards were read as fast as they answer.
    assert worst <= 600 and drained < 3.0, (worst, drained, len(answered))

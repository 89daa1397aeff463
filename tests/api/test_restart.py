"""At-least-once consumption with idempotent alerts: a consumer that dies mid-stream loses no
entry and the one that takes over duplicates no alert."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from contract.keys import StreamKeys
from contract.records import ScoreRecord
from contract.redis_server import EmbeddedRedis
from tests.conftest import API_KEYS, ApiProcess

OP = {"X-API-Key": API_KEYS["operator"]}
VIEW = {"X-API-Key": API_KEYS["viewer"]}
THRESHOLD = 99.5


pytestmark = pytest.mark.reliability


def _record(prefix_line: str, i: int) -> dict[str, Any]:
    score = float((i + 100) % 200)  # half above the threshold of 99.5, the first 100 too
    now = time.time()
    return ScoreRecord(item_id=f"{prefix_line}-{i}", line=prefix_line, ts_ingested=now,
                       ts_scored=now, score=score, recon=score, kl=0.0,
                       model_version="unannounced").to_fields()  # fmt: skip


def _expected(line: str, total: int) -> set[str]:
    """The items of ``_record`` 0 to ``total`` above ``THRESHOLD``."""
    return {f"{line}-{i}" for i in range(total) if (i + 100) % 200 > THRESHOLD}


def _set_threshold(api: ApiProcess, line: str) -> None:
    body = {"line": line, "params": {"method": "manual", "threshold": THRESHOLD}}
    r = httpx.post(f"{api.url}/v1/thresholds/calibrate", headers=OP, json=body)
    assert r.status_code == 200, r.text


def _publish(url: str, stream: str, line: str, start: int, total: int) -> None:
    """Items ``start`` to ``total`` in rounds of 50, as a scorer under load writes them."""
    pub = redis.Redis.from_url(url, socket_timeout=None)  # it may wait out a paused Redis
    for first in range(start, total, 50):
        pipe = pub.pipeline()
        for i in range(first, min(first + 50, total)):
            pipe.xadd(stream, _record(line, i))  # type: ignore[arg-type]
        pipe.execute()
        time.sleep(0.02)


def _wait_consumed(client: redis.Redis, stream: str, timeout: float = 60) -> None:
    """Until the group has been handed the newest entry and holds nothing pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = {g["name"].decode(): g for g in client.xinfo_groups(stream)}["api"]
        newest = client.xrevrange(stream, count=1)[0][0]
        if info["pending"] == 0 and info["last-delivered-id"] == newest:
            return
        time.sleep(0.1)
    raise AssertionError(f"not consumed: {info}")


def _alerts(api: ApiProcess, line: str) -> list[str]:
    """The item ids of every alert of ``line``, page by page."""
    alerts, cursor = [], None
    while True:
        params = {"line": line, "limit": 500, **({"cursor": cursor} if cursor else {})}
        body = httpx.get(f"{api.url}/v1/alerts", headers=OP, params=params).json()
        alerts += [a["item_id"] for a in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            return alerts


def _pending_of(client: redis.Redis, stream: str, consumer: str) -> set[bytes]:
    rows = client.xpending_range(stream, "api", "-", "+", 10_000, consumername=consumer)
    return {r["message_id"] for r in rows}


def test_two_apis_side_by_side_one_killed_lose_nothing_duplicate_nothing(
    redis_server: Any, tmp_path: Path
) -> None:
    prefix = f"restart{uuid.uuid4().hex[:6]}"
    stream, line = f"{prefix}:scores", "cam1"
    client = redis.Redis.from_url(redis_server.url)
    # A consumer that read 50 entries and died before acking them.
    client.xgroup_create(stream, "api", id="0", mkstream=True)
    for i in range(50):
        client.xadd(stream, _record(line, i))  # type: ignore[arg-type]
    taken = client.xreadgroup("api", "dead-consumer", {stream: ">"}, count=50)
    assert len(taken[0][1]) == 50

    flags = {"key_prefix": prefix, "reclaim_idle_ms": 300}
    first = ApiProcess(redis_server.url, None, tmp_path, **flags)
    _set_threshold(first, line)

    total = 2000
    victim = httpx.get(f"{first.url}/v1/health").json()["consumer"]
    second = ApiProcess(redis_server.url, None, tmp_path, **flags)  # side by side with first
    publisher = threading.Thread(target=_publish, args=(redis_server.url, stream, line, 50, total))
    publisher.start()
    # Kill it while it holds entries: frozen (SIGSTOP) it cannot ack between the look and
    # the kill; without any, thawed and tried again.
    for _ in range(1000):
        first.proc.send_signal(signal.SIGSTOP)
        holding = _pending_of(client, stream, victim)
        if holding:
            break
        first.proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    assert holding, "the victim never held a pending entry"
    first.stop(signal.SIGKILL)  # no drain, no acks of what it held
    publisher.join()
    # The first 100 items again, as a retrying scorer would send them.
    for i in range(100):
        client.xadd(stream, _record(line, i))  # type: ignore[arg-type]
    try:
        _wait_consumed(client, stream)
        alerts = _alerts(second, line)
        assert len(alerts) == len(set(alerts))  # no item alerted twice
        assert set(alerts) == _expected(line, total)  # none lost, the dead consumer's 50 too
        # Exactly what the victim held was taken over: nothing of it is pending any more,
        # and those of its items above the threshold have their alert.
        assert not _pending_of(client, stream, victim)
        owned = {eid: f for eid, f in client.xrange(stream) if eid in holding}
        assert set(owned) == holding
        above = {f[b"item_id"].decode() for f in owned.values() if float(f[b"score"]) > THRESHOLD}
        assert above <= set(alerts)
    finally:
        second.stop()


class _SlowScorer:
    """The scorer's preview path (``POST /v1/preview``) as a stand-in that answers an item
    only once the test releases it: an API request held in flight for as long as the test
    needs. The real scorer renders in milliseconds; the drain under test is the API's."""

    def __init__(self, items: list[str]) -> None:
        self.asked = {item: threading.Event() for item in items}
        self.released = {item: threading.Event() for item in items}
        scorer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                item = request["item_ids"][0]
                scorer.asked[item].set()
                scorer.released[item].wait(60)
                png = base64.b64encode(scorer.png(item)).decode()
                preview = {"item_id": item, "ok": True, "images": {"panel": png}}
                body = json.dumps({"previews": [preview]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the API gave up on it

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def png(item: str) -> bytes:
        return f"png of {item}".encode()

    def close(self) -> None:
        for released in self.released.values():
            released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own: the test pauses every writer, which no other may see."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


def test_sigterm_drains_ends_streams_and_leaves_what_it_held_to_the_next_api(
    private_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    """SIGTERM while the consumer waits on Redis, a live stream open and two requests in
    flight: the stream ends at once (not cut at the drain's end), a request answered within
    the drain's 5 s gets its answer, one that is not is cut at 5 s, the consumer is cancelled
    in its wait and acks nothing more, and the process exits by SIGTERM. What it held stays
    pending and a second API reclaims it: every alert stored and announced exactly once."""
    prefix = f"term{uuid.uuid4().hex[:6]}"
    keys, line, total = StreamKeys(prefix), "cam1", 2000
    client = redis.Redis.from_url(private_redis.url)
    announced: Counter[str] = Counter()  # alerts on the live channel, as every stream sees them

    def announce(message: dict[str, Any]) -> None:
        announced[json.loads(message["data"])["item_id"]] += 1

    listener = client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(**{keys.alerts_live: announce})
    listening = listener.run_in_thread(sleep_time=0.05, daemon=True)
    scorer = _SlowScorer(["quick-1", "slow-1"])
    consumer = f"victim-{prefix}"
    flags = {"key_prefix": prefix, "reclaim_idle_ms": 300}
    first = ApiProcess(private_redis.url, scorer.url, tmp_path, consumer=consumer, **flags)
    second: ApiProcess | None = None
    paused = False
    try:
        _set_threshold(first, line)
        answers: dict[str, tuple[float, httpx.Response | httpx.HTTPError]] = {}
        stream_ready = threading.Event()
        stream_end: list[tuple[float, httpx.HTTPError | None]] = []

        def ask(item: str) -> None:
            url = f"{first.url}/v1/items/{item}/preview.png"
            answer: httpx.Response | httpx.HTTPError
            try:
                answer = httpx.get(url, headers=VIEW, timeout=120)
            except httpx.HTTPError as exc:
                answer = exc
            answers[item] = (time.monotonic(), answer)

        def watch() -> None:
            try:
                with httpx.stream("GET", f"{first.url}/v1/stream", headers=VIEW, timeout=120) as r:
                    for _ in r.iter_lines():  # the first: the comment "subscribed"
                        stream_ready.set()
                stream_end.append((time.monotonic(), None))
            except httpx.HTTPError as exc:
                stream_end.append((time.monotonic(), exc))

        threads = [threading.Thread(target=watch, daemon=True)]
        threads += [threading.Thread(target=ask, args=(i,), daemon=True) for i in scorer.asked]
        for t in threads:
            t.start()
        assert stream_ready.wait(10), "the live stream never opened"
        assert all(asked.wait(10) for asked in scorer.asked.values()), "no request in flight"
        args = (private_redis.url, keys.scores, line, 0, total)
        publisher = threading.Thread(target=_publish, args=args)
        publisher.start()
        # Catch it frozen (SIGSTOP) holding entries, one of them an alert to store; then
        # pause Redis's writers, so that the consumer, thawed, waits on Redis for its next
        # write (an alert, an ack) and can change nothing of what it holds. A paused
        # client's command is dropped when it disconnects before the pause ends.
        holding: set[bytes] = set()
        alerting: set[str] = set()
        for _ in range(1000):
            first.proc.send_signal(signal.SIGSTOP)
            client.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
            paused = True
            holding = _pending_of(client, keys.scores, consumer)
            pipe = client.pipeline(transaction=False)
            for eid in holding:
                pipe.xrange(keys.scores, eid, eid)
            held = [rows[0][1] for rows in pipe.execute()]
            alerting = {f[b"item_id"].decode() for f in held if float(f[b"score"]) > THRESHOLD}
            if alerting:
                break
            client.execute_command("CLIENT", "UNPAUSE")
            paused = False
            first.proc.send_signal(signal.SIGCONT)
            time.sleep(0.005)
        assert alerting, "the API never held an entry to alert on"
        # Both requests still in flight (the API's preview timeout is 30 s) and the stream open.
        assert not answers and not stream_end, (answers, stream_end)
        first.proc.send_signal(signal.SIGTERM)
        first.proc.send_signal(signal.SIGCONT)
        sigterm = time.monotonic()
        time.sleep(1)
        scorer.released["quick-1"].set()
        rc = first.proc.wait(20)
        exited = time.monotonic() - sigterm
        for t in threads:
            t.join(5)
        # Still pending under its name: cancelled in its wait, it acked nothing more.
        assert _pending_of(client, keys.scores, consumer) == holding
        client.execute_command("CLIENT", "UNPAUSE")
        paused = False

        # uvicorn stops gracefully, then raises the signal it caught again.
        log = Path(first.log.name).read_text()
        assert rc == -signal.SIGTERM, log[-5000:]
        # The request not answered within the drain's 5 s is cancelled then (500)...
        cut, slow = answers["slow-1"]
        assert isinstance(slow, httpx.Response) and slow.status_code == 500, slow
        assert 4.9 <= cut - sigterm < 10, cut - sigterm
        # ... the stream ended cleanly before that, by itself, not cut by the drain's end...
        [(ended, error)] = stream_end
        assert error is None, error
        assert ended < cut and ended - sigterm < 4.5, (ended - sigterm, cut - sigterm)
        # ... the request answered within the drain got its answer...
        at, quick = answers["quick-1"]
        assert isinstance(quick, httpx.Response), quick
        assert quick.status_code == 200 and quick.content == scorer.png("quick-1"), quick.text
        assert sigterm + 1 <= at < cut, (at - sigterm, cut - sigterm)
        # ... and the process exited soon after the cut: the consumer, waiting on Redis, was
        # cancelled (not waited for: that would take the pause's 60 s, or the 10 s that
        # ConsumerThread.stop gives a consumer before leaving it to the exit).
        assert exited - (cut - sigterm) < 5, (exited, cut - sigterm)
        assert "still running" not in log, log[-5000:]

        publisher.join(30)
        second = ApiProcess(private_redis.url, None, tmp_path, **flags)
        _wait_consumed(client, keys.scores)
        assert not _pending_of(client, keys.scores, consumer)  # reclaimed
        alerts = _alerts(second, line)
        expected = _expected(line, total)
        assert len(alerts) == len(set(alerts)) and set(alerts) == expected
        assert alerting <= set(alerts)
        deadline = time.monotonic() + 10
        while set(announced) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(announced) == expected, expected ^ set(announced)
        assert set(announced.values()) == {1}, [i for i, n in announced.items() if n > 1]
    finally:
        if paused:
            client.execute_command("CLIENT", "UNPAUSE")
        first.stop()
        if second is not None:
            second.stop()
        scorer.close()
        listening.stop()
        listening.join(5)


def test_a_lost_cancel_does_not_hold_the_consumer_up_at_stop(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer thread stops within 2 s even when its first cancel is lost in an
    await (a stop once waited out its 30 s and the API was killed): it is cancelled again."""
    from api.annotations import Annotator
    from api.config import ApiConfig
    from api.consumer import ConsumerThread, ScoreConsumer
    from api.metrics import Metrics

    cancels: list[float] = []

    async def swallows_one_cancel(self: ScoreConsumer) -> None:
        import asyncio

        self.running = True
        try:
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    cancels.append(time.monotonic())
                    if len(cancels) > 1:
                        raise
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            self.running = False

    monkeypatch.setattr(ScoreConsumer, "run", swallows_one_cancel)
    cfg = ApiConfig(redis_url=redis_server.url, key_prefix=f"stop{uuid.uuid4().hex[:6]}")
    consumer = ConsumerThread(cfg, Metrics(), Annotator(None, None)).start()
    assert consumer.running
    began = time.monotonic()
    assert consumer.stop(timeout=10)
    assert len(cancels) == 2 and not consumer.running
    assert time.monotonic() - began < 2

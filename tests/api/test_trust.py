"""No alert lost without a trace (issue "Trust"): item ids that look like other keys, an alert
that cannot be stored, an id sent on two lines, an entry that never gets through. Against the
running scorer and API on real Redis; each test failed on the code before its fix."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from contract.keys import FRAMES_GROUP
from tests.api.test_api import OP, VIEW, _alerts, _consumed, _publish, _score, _set_manual
from tests.scorer.test_service import _npy, _png, _wait_for
from tests.streams import entries_since, stream_end

DEAD = "vlaewatch:deadletter"

pytestmark = pytest.mark.reliability


def _line() -> str:
    return f"k{uuid.uuid4().hex[:8]}"


def _letters(client: redis.Redis, item_id: str, start: str) -> list[dict[bytes, bytes]]:
    """The dead letters of ``item_id`` written after ``start`` (the test's first id)."""
    return [f for _, f in entries_since(client, DEAD, start)
            if f.get(b"item_id") == item_id.encode()]  # fmt: skip


def _pending(client: redis.Redis, stream: str, group: str) -> set[str]:
    rows = client.xpending_range(stream, group, min="-", max="+", count=1000)
    return {r["message_id"].decode() for r in rows}


def test_an_item_id_cannot_name_another_alert_s_keys(
    api_url: str, client: redis.Redis, version: str
) -> None:
    # Before: the alert of "X:events" was a hash at "alert:X:events", the key of X's event
    # list; X's alert then failed halfway (WRONGTYPE), its entry was acked anyway, and
    # GET /v1/alerts/X answered 503.
    line = _line()
    _set_manual(api_url, line, 0.0)
    x = f"{line}-x"
    ids, last = _publish(client, line, [5.0, 6.0], version, [f"{x}:events", x])
    _consumed(client, last)
    for item_id in ids:
        r = httpx.get(f"{api_url}/v1/alerts/{item_id}", headers=VIEW)
        assert r.status_code == 200, r.text
        assert r.json()["events"][0]["action"] == "created"
    assert {a["item_id"] for a in _alerts(api_url, line=line)} == set(ids)
    r = httpx.post(f"{api_url}/v1/alerts/{x}/acknowledge", headers=OP, json={"note": "seen"})
    assert r.status_code == 200, r.text
    other = httpx.get(f"{api_url}/v1/alerts/{x}:events", headers=VIEW).json()
    assert other["state"] == "open" and len(other["events"]) == 1


def test_an_alert_that_cannot_be_stored_is_not_acked(
    api_url: str, client: redis.Redis, version: str
) -> None:
    # A key the alert needs holds another type (written by something else): nothing of the
    # alert may be stored, and its entry must stay pending until it can be. Before: the
    # create failed halfway and the entry was acked in the same pipeline: lost.
    freed, stuck = _line(), _line()
    start = stream_end(client, DEAD)
    for line in (freed, stuck):
        _set_manual(api_url, line, 0.0)
        client.set(f"vlaewatch:alerts:line:{line}", "occupied")
    (a,), first = _publish(client, freed, [5.0], version)
    (b,), second = _publish(client, stuck, [5.0], version)

    def delivered(eid: str) -> bool:
        info = {g["name"]: g for g in client.xinfo_groups("vlaewatch:scores")}
        last = info[b"api"]["last-delivered-id"].decode()
        return tuple(map(int, last.split("-"))) >= tuple(map(int, eid.split("-")))

    def refused() -> Any:
        """Health once the consumer has tried to store an alert and failed."""
        health = httpx.get(f"{api_url}/v1/health").json()
        return health if "WRONGTYPE" in (health["reason"] or "") else None

    health = _wait_for(lambda: delivered(second) and refused())
    assert health["status"] == "degraded", health
    assert {first, second} <= _pending(client, "vlaewatch:scores", "api")
    assert not client.exists(f"vlaewatch:alert:{a}", f"vlaewatch:alert_events:{a}")
    assert httpx.get(f"{api_url}/v1/alerts/{a}", headers=VIEW).status_code == 404

    # Once the key is free, the entry is delivered again and the alert stored, whole.
    client.delete(f"vlaewatch:alerts:line:{freed}")
    alert = _wait_for(lambda: httpx.get(f"{api_url}/v1/alerts/{a}", headers=VIEW).json()
                      if client.exists(f"vlaewatch:alert:{a}") else None, timeout=30)  # fmt: skip
    assert alert["line"] == freed and [e["action"] for e in alert["events"]] == ["created"]
    assert [x["item_id"] for x in _alerts(api_url, line=freed)] == [a]
    _wait_for(lambda: first not in _pending(client, "vlaewatch:scores", "api"))

    # The one that never can is dead-lettered with the reason after max_deliveries (5).
    letters = _wait_for(lambda: _letters(client, b, start), timeout=60)
    assert letters[0][b"source"] == b"scores" and letters[0][b"frame_id"] == second.encode()
    assert b"delivered 5 times" in letters[0][b"reason"] and b"WRONGTYPE" in letters[0][b"reason"]
    _wait_for(lambda: second not in _pending(client, "vlaewatch:scores", "api"))
    assert not client.exists(f"vlaewatch:alert:{b}")
    client.delete(f"vlaewatch:alerts:line:{stuck}")


def test_an_item_id_belongs_to_one_line(
    api_url: str, scorer_url: str, client: redis.Redis, digits: Any, version: str
) -> None:
    # Item ids are unique across lines while their image is retained. Before: the second
    # line's item overwrote the first one's image, and its alert was dropped as a duplicate.
    first, second = _line(), _line()
    start = stream_end(client, DEAD)
    for line in (first, second):
        _set_manual(api_url, line, 0.0)
    item = f"shared-{uuid.uuid4().hex[:8]}"
    image = digits.test.images[:1]
    _score(scorer_url, image[:, 0], first, [item])
    r = httpx.post(f"{scorer_url}/v1/score", files=[("files", ("a.png", _png(image[0, 0])))],
                   data={"line": second, "item_id": item}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    assert r.json()["n_failed"] == 1 and not result["ok"] and result["status"] == 409, result
    assert f"held by line {first!r}" in result["error"]
    letter = _wait_for(lambda: _letters(client, item, start))[0]
    assert letter[b"status"] == b"409" and letter[b"line"] == second.encode()
    stored = client.getrange(f"vlaewatch:item:{item}", 0, 100).split(b" ")[2]
    assert stored == first.encode()  # the first line's image is untouched
    # The same id again on its own line is a retry, not a conflict.
    _score(scorer_url, image[:, 0], first, [item])
    # A score entry that reaches the API on another line anyway (its image expired, or
    # another writer) is dead-lettered by the consumer, not dropped.
    _, last = _publish(client, second, [7.0], version, [item])
    _consumed(client, last)
    assert httpx.get(f"{api_url}/v1/alerts/{item}", headers=VIEW).json()["line"] == first
    reasons = [x[b"reason"] for x in _letters(client, item, start) if x[b"source"] == b"scores"]
    assert reasons and b"already alerted on another line" in reasons[0]


def test_a_frame_delivered_too_often_is_dead_lettered(
    scorer_url: str, client: redis.Redis, digits: Any
) -> None:
    # A frame that four consumers read and died holding (as a frame that crashes whatever
    # reads it would be): after max_deliveries (5) it leaves the stream with a reason.
    # Before: it was reclaimed and handed out again, every reclaim_idle_ms, forever.
    line = _line()
    item = f"{line}-x"
    start = stream_end(client, DEAD)
    with client.pipeline(transaction=True) as pipe:  # nothing can read it in between
        pipe.xadd("vlaewatch:frames", {"image": _png(digits.test.images[0, 0]), "line": line,
                                       "item_id": item})  # fmt: skip
        pipe.xreadgroup(FRAMES_GROUP, "ghost", {"vlaewatch:frames": ">"}, count=1)
        eid, read = pipe.execute()
    assert read[0][1][0][0] == eid, "another frame was undelivered"
    for _ in range(4):
        client.xclaim("vlaewatch:frames", FRAMES_GROUP, "ghost", 0, [eid])
    letter = _wait_for(lambda: _letters(client, item, start), timeout=30)[0]
    assert letter[b"source"] == b"frames" and letter[b"frame_id"] == eid
    assert b"delivered 5 times" in letter[b"reason"]
    assert eid.decode() not in _pending(client, "vlaewatch:frames", FRAMES_GROUP)
    assert not client.exists(f"vlaewatch:item:{item}")  # never scored


def test_the_score_stream_keeps_what_a_stopped_api_has_not_read(
    redis_server: Any, scorer_url: str, checkpoint: Path, digits: Any, tmp_path: Path,
    client: redis.Redis,
) -> None:  # fmt: skip
    # Before: every publish trimmed the stream to about scores_maxlen entries, read or not,
    # so an API down for longer than that lost alerts silently. Now trimming stops at what a
    # consumer group has not acknowledged; past the hard bound the loss is counted exactly.
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import deploy
    from tests.conftest import ApiProcess

    port = int(scorer_url.rsplit(":", 1)[1])
    prefix = f"trim{uuid.uuid4().hex[:6]}"
    base = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url,
                        reclaim_idle_ms=2000)  # fmt: skip
    line = _line()
    images = digits.test.images[:100, 0]
    sent = 0

    def configure(**update: Any) -> None:
        deploy(base.model_copy(update={"key_prefix": prefix, "scores_maxlen": 100, **update}),
               DeploymentConfig(num_cpus=0.25), port=port)  # fmt: skip

    def send(batches: int) -> None:
        nonlocal sent
        for _ in range(batches):
            _score(scorer_url, images, line, [f"{line}-{sent + i}" for i in range(100)])
            sent += 100

    def api() -> ApiProcess:  # no default threshold from data; alerts kept 60 s
        return ApiProcess(redis_server.url, scorer_url, tmp_path, key_prefix=prefix,
                          reclaim_idle_ms=1000, initial_fpr=0, alert_retention_s=60)  # fmt: skip

    def alerted() -> int:
        return int(client.zcard(f"{prefix}:alerts:line:{line}"))

    try:
        configure(scores_hard_maxlen=1000)
        first = api()  # registers the group, then stops: nothing read
        _set_manual(first.url, line, 0.0)
        first.stop()
        send(6)  # six times scores_maxlen, none of it read
        assert client.xlen(f"{prefix}:scores") == 600
        second = api()
        _wait_for(lambda: alerted() == 600, timeout=60)
        assert httpx.get(f"{second.url}/v1/health").json()["items_lost"] == 0
        # --initial-fpr 0: the first scores set no default threshold; alerts (their hash and
        # events) expire after --alert-retention-s.
        current = httpx.get(f"{second.url}/v1/thresholds", headers=VIEW).json()
        assert current["default"] is None and line in current["lines"], current
        for key in (f"{prefix}:alert:{line}-0", f"{prefix}:alert_events:{line}-0"):
            assert 50 <= client.ttl(key) <= 60, key
        second.stop()

        # Over the hard bound the oldest unread entries go, and exactly those are counted.
        configure(scores_hard_maxlen=400)
        send(6)
        assert client.hget(f"{prefix}:lost", "scores") == b"200"
        third = api()
        _wait_for(lambda: alerted() == 600 + 400, timeout=60)
        assert httpx.get(f"{third.url}/v1/health").json()["items_lost"] == 200
        metrics = httpx.get(f"{third.url}/metrics", headers=OP).text
        assert "vlaewatch_items_lost_total 200.0" in metrics
        third.stop()
    finally:
        deploy(base, DeploymentConfig(num_cpus=0.25), port=port)
        client.delete(f"{prefix}:scores")


def test_a_nan_timestamp_is_refused_and_live_streams_go_on(
    api_url: str, client: redis.Redis, digits: Any, version: str
) -> None:
    # Before: a frame's ts of NaN was scored, its alert carried null, and every live stream
    # failed on it and closed.
    line = _line()
    start = stream_end(client, DEAD)
    _set_manual(api_url, line, 0.0)
    got: list[dict[str, Any]] = []
    subscribed = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{api_url}/v1/stream", params={"line": line},
                          headers=VIEW, timeout=60) as r:  # fmt: skip
            for text in r.iter_lines():
                if text.startswith(":"):  # the comment sent once the stream has subscribed
                    subscribed.set()
                if text.startswith("data:"):
                    got.append(json.loads(text[5:]))
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert subscribed.wait(10)
    png = _png(digits.test.images[0, 0])
    other = _line()  # ?line= keeps other lines' alerts out of the stream
    _set_manual(api_url, other, 0.0)
    client.xadd("vlaewatch:frames", {"image": png, "line": other, "item_id": f"{other}-x"})
    nan_frame = client.xadd("vlaewatch:frames", {"image": png, "line": line, "ts": "nan",
                                                 "item_id": f"{line}-nan"})  # fmt: skip
    # A score entry with one, from another writer: dead-lettered by the consumer.
    nan_score = client.xadd("vlaewatch:scores", {
        "item_id": f"{line}-nan-score", "line": line, "ts_ingested": "nan", "ts_scored": "1.0",
        "score": "5.0", "recon": "4.0", "kl": "1.0", "model_version": version})  # fmt: skip
    client.xadd("vlaewatch:frames", {"image": png, "line": line, "item_id": f"{line}-good"})
    listener.join(60)
    assert [a["item_id"] for a in got] == [f"{line}-good"]

    def letter(source: bytes, eid: bytes) -> list[dict[bytes, bytes]]:
        return [f for _, f in entries_since(client, DEAD, start)
                if f[b"frame_id"] == eid and f[b"source"] == source]  # fmt: skip

    for source, eid in ((b"frames", nan_frame), (b"scores", nan_score)):
        (found,) = _wait_for(lambda s=source, e=eid: letter(s, e))
        assert b"finite number" in found[b"reason"], found
    assert httpx.get(f"{api_url}/v1/alerts/{line}-nan", headers=VIEW).status_code == 404


def test_new_lines_past_the_cap_are_refused(
    redis_server: Any, scorer_url: str, checkpoint: Path, digits: Any, client: redis.Redis
) -> None:
    # Every line costs metrics series and index entries for good. Before: any number.
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import deploy

    port = int(scorer_url.rsplit(":", 1)[1])
    prefix = f"lines{uuid.uuid4().hex[:6]}"
    base = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url,
                        reclaim_idle_ms=2000)  # fmt: skip
    image = digits.test.images[:1, 0]
    try:
        deploy(base.model_copy(update={"key_prefix": prefix, "max_lines": 2}),
               DeploymentConfig(num_cpus=0.25), port=port)  # fmt: skip
        for line in ("a", "b", "a"):
            _score(scorer_url, image, line, [f"{line}-{uuid.uuid4().hex[:8]}"])
        r = httpx.post(f"{scorer_url}/v1/score", content=_npy(image), params={"line": "c"},
                       headers={"content-type": "application/x-npy"}, timeout=60)  # fmt: skip
        (result,) = r.json()["results"]
        assert not result["ok"] and result["status"] == 409, result
        assert "2 lines are known already (max_lines" in result["error"]
        assert client.smembers(f"{prefix}:lines") == {b"a", b"b"}
        assert client.xlen(f"{prefix}:scores") == 3
    finally:
        deploy(base, DeploymentConfig(num_cpus=0.25), port=port)
        client.delete(f"{prefix}:scores", f"{prefix}:lines")


def test_alert_states_move_forward_only(api_url: str, client: redis.Redis, version: str) -> None:
    line = _line()
    _set_manual(api_url, line, 0.0)
    (a, b), last = _publish(client, line, [5.0, 6.0], version)
    _consumed(client, last)

    def act(item: str, action: str) -> httpx.Response:
        return httpx.post(f"{api_url}/v1/alerts/{item}/{action}", headers=OP, json={"note": ""})

    # open -> acknowledged -> resolved, or open -> resolved; never back, never twice.
    assert act(a, "acknowledge").status_code == 200
    assert act(a, "acknowledge").status_code == 409
    assert act(a, "resolve").status_code == 200
    assert act(b, "resolve").status_code == 200  # a false alarm needs no acknowledging
    for item, action in ((a, "resolve"), (b, "acknowledge"), (b, "resolve")):
        r = act(item, action)
        assert r.status_code == 409 and "is resolved" in r.json()["detail"], r.text

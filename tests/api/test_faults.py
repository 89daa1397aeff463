"""Faults with real processes: Redis killed mid-stream and restarted from its append-only file
while the scorer (Ray Serve) and the API (uvicorn, its own process) keep running."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from tests.api.test_api import _alerts, _consumed, _set_manual
from tests.scorer.test_service import _npy, _png
from tests.streams import entries_since, stream_end

pytestmark = pytest.mark.reliability


def _post(scorer_url: str, images: np.ndarray, line: str, ids: list[str]) -> httpx.Response:
    return httpx.post(f"{scorer_url}/v1/score", content=_npy(images),
                      headers={"content-type": "application/x-npy"},
                      params={"line": line, "item_id": ids}, timeout=60)  # fmt: skip


def _send_frames(url: str, images: np.ndarray, line: str, tag: str) -> list[str]:
    """XADD frames; the ids of those Redis acknowledged."""
    client = redis.Redis.from_url(url)
    ids = [f"{line}-{tag}-{i}" for i in range(len(images))]
    for item_id, im in zip(ids, images, strict=True):
        client.xadd("vlaewatch:frames", {"image": _png(im), "line": line, "item_id": item_id})
    return ids


def _scored(client: redis.Redis, line: str, start: str = "0-0") -> dict[str, float]:
    """Item id -> score of the line's entries in the score stream after ``start`` (recorded
    with ``stream_end`` when the test began; duplicates collapse)."""
    out = {}
    for _, fields in entries_since(client, "vlaewatch:scores", start):
        if fields.get(b"line") == line.encode():
            out[fields[b"item_id"].decode()] = float(fields[b"score"])
    return out


def test_redis_sigkilled_mid_stream_loses_no_acknowledged_item(
    redis_server: Any, scorer_url: str, api_url: str, digits: Any
) -> None:
    line = f"k{uuid.uuid4().hex[:8]}"
    start = stream_end(redis.Redis.from_url(redis_server.url), "vlaewatch:scores")
    images = digits.test.images[:90, 0]
    probe = _post(scorer_url, images[:30], line, [f"{line}-probe-{i}" for i in range(30)])
    assert probe.status_code == 200, probe.text
    scores = [r["score"] for r in probe.json()["results"]]
    threshold = float(np.median(scores))
    _set_manual(api_url, line, threshold)
    acked = {r["item_id"] for r in probe.json()["results"]}

    acked |= set(_send_frames(redis_server.url, images[30:50], line, "frame-before"))
    assert redis_server.process is not None
    redis_server.process.kill()  # SIGKILL: no shutdown, no final AOF rewrite
    redis_server.process.wait()
    try:
        down = _post(scorer_url, images[:2], line, [f"{line}-down-{i}" for i in range(2)])
        assert down.status_code == 503, down.text
        assert "unavailable" in down.json()["detail"]
    finally:
        redis_server.start()  # same port and data directory: the AOF is replayed

    after = _post(scorer_url, images[50:70], line, [f"{line}-http-after-{i}" for i in range(20)])
    assert after.status_code == 200, after.text
    acked |= {r["item_id"] for r in after.json()["results"]}
    acked |= set(_send_frames(redis_server.url, images[70:90], line, "frame-after"))

    client = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 90
    while not acked <= set(_scored(client, line, start)) and time.monotonic() < deadline:
        time.sleep(0.5)
    scored = _scored(client, line, start)
    assert acked <= set(scored), f"lost: {sorted(acked - set(scored))}"
    assert not any("-down-" in i for i in scored)  # refused with 503, never half-published
    last = client.xrevrange("vlaewatch:scores", count=1)[0][0].decode()
    _consumed(client, last, timeout=60)
    # The probe was judged before the line had a threshold of its own; the rest against it.
    alerted = {a["item_id"] for a in _alerts(api_url, line=line) if "-probe-" not in a["item_id"]}
    assert alerted == {i for i, s in scored.items() if s > threshold and "-probe-" not in i}
    assert 0 < len(alerted) < len(scored)

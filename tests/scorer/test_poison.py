"""Poison input against the running scorer: bodies that cost nothing to send must cost nothing
to refuse, and one bad item fails alone, over HTTP and on the frames stream. Each of these
failed on the code before the fix (issue "Trust", reproduced against the demo)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from contract.keys import FRAMES_GROUP
from tests.api.test_faults import _scored
from tests.scorer.test_service import _npy, _png, _wait_for
from tests.streams import entries_since, stream_end

pytestmark = pytest.mark.reliability

NPY = {"content-type": "application/x-npy"}


def test_an_npy_body_without_pixels_is_refused_before_anything_iterates(
    scorer_url: str,
) -> None:
    # Shape (5_000_000, 0, 0): 128 bytes on the wire, nothing for np.load to allocate. Before,
    # the replica split it into five million arrays on its event loop first (seconds here,
    # 5.4 s at 10**7 in the demo, out of memory at 2**40) and then answered 413 for the count;
    # /v1/health waited as long.
    body = _npy(np.zeros((5_000_000, 0, 0), np.uint8))
    assert len(body) == 128
    answer: dict[str, Any] = {}

    def post() -> None:
        t0 = time.monotonic()
        r = httpx.post(f"{scorer_url}/v1/score", content=body, headers=NPY, timeout=60)
        answer.update(status=r.status_code, detail=r.json()["detail"], s=time.monotonic() - t0)

    sender = threading.Thread(target=post)
    sender.start()
    t0 = time.monotonic()
    health = httpx.get(f"{scorer_url}/v1/health", timeout=30)
    health_s = time.monotonic() - t0
    sender.join(60)
    assert health.status_code == 200
    assert answer["status"] == 422 and "empty dimension" in answer["detail"], answer
    assert answer["s"] < 1.0 and health_s < 1.0, (answer, health_s)
    # A batch over the item limit is refused by its count, before it is split.
    many = _npy(np.zeros((5000, 28, 28), np.uint8))
    r = httpx.post(f"{scorer_url}/v1/score", content=many, headers=NPY, timeout=60)
    assert r.status_code == 413 and "at most" in r.json()["detail"]


def _poison() -> bytes:
    """A float NPY file of shape (0, 5): before, a plain ValueError escaped the decoder."""
    return _npy(np.zeros((0, 5), np.float64))


def test_a_poison_file_fails_alone_over_http(scorer_url: str, digits: Any) -> None:
    # Before: 500 for the whole request, the good image unscored.
    tag = uuid.uuid4().hex[:8]
    files = [("files", ("good.png", _png(digits.test.images[0, 0]), "image/png")),
             ("files", ("bad.npy", _poison(), "application/octet-stream"))]  # fmt: skip
    r = httpx.post(f"{scorer_url}/v1/score", files=files, timeout=60,
                   data={"line": "poison", "item_id": f"{tag}-good,{tag}-bad"})  # fmt: skip
    assert r.status_code == 200, r.text
    good, bad = r.json()["results"]
    assert good["ok"] and good["item_id"] == f"{tag}-good"
    assert not bad["ok"] and bad["status"] == 422 and "no pixels" in bad["error"], bad


def test_a_poison_frame_is_dead_lettered_and_its_read_scored(
    redis_server: Any, scorer_url: str, digits: Any
) -> None:
    # Before: the whole read (good frames included) stayed pending, reclaimed every 30 s and
    # failing again, forever.
    client = redis.Redis.from_url(redis_server.url)
    line = f"p{uuid.uuid4().hex[:8]}"
    scores = stream_end(client, "vlaewatch:scores")
    letters = stream_end(client, "vlaewatch:deadletter")
    good = [f"{line}-good-{i}" for i in range(3)]
    with client.pipeline(transaction=True) as pipe:  # one read: the frames arrive together
        for i, item in enumerate(good[:2]):
            pipe.xadd("vlaewatch:frames", {"image": _png(digits.test.images[i, 0]),
                                           "line": line, "item_id": item})  # fmt: skip
        pipe.xadd("vlaewatch:frames", {"image": _poison(), "line": line,
                                       "item_id": f"{line}-bad"})  # fmt: skip
        pipe.xadd("vlaewatch:frames", {"image": _png(digits.test.images[2, 0]), "line": line,
                                       "item_id": good[2]})  # fmt: skip
        pipe.execute()
    _wait_for(lambda: set(good) <= set(_scored(client, line, scores)), timeout=60)

    def dead() -> list[dict[bytes, bytes]]:
        return [f for _, f in entries_since(client, "vlaewatch:deadletter", letters)
                if f.get(b"item_id") == f"{line}-bad".encode()]  # fmt: skip

    found = _wait_for(dead, timeout=30)
    assert found[0][b"source"] == b"frames" and b"no pixels" in found[0][b"reason"]
    _wait_for(lambda: client.xpending("vlaewatch:frames", FRAMES_GROUP)["pending"] == 0)


def test_a_body_over_the_limit_is_refused_while_it_streams(
    scorer_url: str, redis_server: Any, checkpoint: Any, digits: Any
) -> None:
    # A chunked upload declares no length. Before, the scorer checked only Content-Length:
    # a multipart body was read whole (every part up to 8 MB, 1,024 parts), and an NPY body
    # whole before its size was checked.
    from scorer.config import DeploymentConfig, ScorerConfig
    from scorer.service import deploy

    port = int(scorer_url.rsplit(":", 1)[1])
    base = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url,
                        reclaim_idle_ms=2000)  # fmt: skip
    part = _png(digits.test.images[0, 0])

    def chunked(data: bytes) -> Any:
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    boundary = "vlaewatch-test-boundary"
    files = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + part
            + b"\x00" * 200_000
            + b"\r\n"
            for i in range(10)
        )
        + f"--{boundary}--\r\n".encode()
    )
    multipart = {"content-type": f"multipart/form-data; boundary={boundary}"}
    try:
        deploy(base.model_copy(update={"max_request_bytes": 1_000_000}),
               DeploymentConfig(num_cpus=0.25), port=port)  # fmt: skip
        for body, headers in ((files, multipart),
                              (_npy(np.zeros((1500, 28, 28), np.uint8)), NPY)):  # fmt: skip
            assert len(body) > 1_000_000
            r = httpx.post(f"{scorer_url}/v1/score", content=chunked(body), headers=headers,
                           timeout=60)  # fmt: skip
            assert r.status_code == 413, (r.status_code, r.text[:300])
            assert r.json()["detail"] == "request larger than 1000000 bytes"
        # The same body sent whole (with its Content-Length) is refused too.
        r = httpx.post(f"{scorer_url}/v1/score", content=files, headers=multipart, timeout=60)
        assert r.status_code == 413 and "larger than 1000000" in r.json()["detail"]
        # Under the limit, the same way in: scored.
        small = _npy(digits.test.images[:4, 0])
        r = httpx.post(f"{scorer_url}/v1/score", content=chunked(small), headers=NPY,
                       timeout=60)  # fmt: skip
        assert r.status_code == 200 and r.json()["n_scored"] == 4, r.text
    finally:
        deploy(base, DeploymentConfig(num_cpus=0.25), port=port)

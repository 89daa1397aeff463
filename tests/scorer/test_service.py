"""The scorer as deployed: real redis-server, real local Ray cluster, real Serve over HTTP."""

from __future__ import annotations

import base64
import io
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from contract.keys import FRAMES_GROUP
from contract.records import ItemBlob, ScoreRecord
from scorer.config import DeploymentConfig, ScorerConfig
from scorer.service import DeployError, deploy
from tests.streams import entries_since, stream_end
from trainer.evaluate import evaluate
from vlae.checkpoint import load_checkpoint, read_card
from vlae.score import score_images

DEAD = "vlaewatch:deadletter"
SCORE_FIELDS = {"item_id", "line", "ts_ingested", "ts_scored", "score", "recon", "kl",
                "complexity", "model_version"}  # fmt: skip


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _post_npy(url: str, images: np.ndarray, ids: list[str], line: str = "cam1") -> Any:
    resp = httpx.post(f"{url}/v1/score", content=_npy(images), timeout=120,
                      headers={"content-type": "application/x-npy"},
                      params={"line": line, "item_id": ids})  # fmt: skip
    assert resp.status_code == 200, resp.text
    return resp.json()


def _entries(client: redis.Redis, stream: str, ids: set[str], start: str) -> list[dict[str, str]]:
    """The entries of ``ids`` in ``stream`` after ``start`` (recorded with ``stream_end`` when
    the test began), decoded."""
    out = []
    for _, fields in entries_since(client, stream, start):
        f = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
        if f.get("item_id") in ids:
            out.append(f)
    return out


def _wait_for(fn: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_served_scores_equal_evaluate_and_stream_one_entry_each(
    scorer_url: str, client: redis.Redis, digits: Any, checkpoint: Path
) -> None:
    test = digits.test
    tag = uuid.uuid4().hex[:8]
    ids = [f"t{tag}-{i}" for i in range(len(test))]
    start = stream_end(client, "vlaewatch:scores")
    body = _post_npy(scorer_url, test.images[:, 0], ids)
    assert body["n_scored"] == len(test) and body["n_failed"] == 0
    results = body["results"]
    assert [r["item_id"] for r in results] == ids
    served = np.array([r["score"] for r in results])
    # The default score kind: (recon + KL) per unit of input complexity (total variation).
    parts = [(r["recon"] + r["kl"]) / (r["complexity"] + 1) for r in results]
    assert np.allclose(served, parts, rtol=1e-5)
    tv = [np.abs(np.diff(im / 255.0, axis=-1)).sum() + np.abs(np.diff(im / 255.0, axis=-2)).sum()
          for im in test.images]  # fmt: skip
    assert np.allclose([r["complexity"] for r in results], tv, rtol=1e-4)

    # The same numbers `vlaewatch evaluate` computes for these images and this checkpoint.
    loaded = load_checkpoint(checkpoint)
    local = score_images(loaded.model, test.images)
    assert np.allclose(served, local.score, rtol=1e-4, atol=1e-3)
    report = evaluate(loaded, test)
    labels = test.labels.astype(str)
    for cls, means in report["mean_score_by_class"].items():
        assert served[labels == cls].mean() == pytest.approx(means["score"], abs=0.01)

    normal = served[labels == "0"].mean()
    anomalous = served[labels != "0"].mean()
    assert anomalous > normal

    entries = _entries(client, "vlaewatch:scores", set(ids), start)
    assert len(entries) == len(ids)  # exactly one per scored item
    assert all(set(e) == SCORE_FIELDS for e in entries)
    rec = ScoreRecord.from_fields(entries[0])
    assert rec.line == "cam1" and rec.model_version == read_card(checkpoint).model_version
    assert rec.ts_scored >= rec.ts_ingested


def test_maps_on_request_sum_to_the_whole_image_score(scorer_url: str, digits: Any) -> None:
    """``?maps=true`` adds each item's map (base64 NPY); a whole-image score is its sum. Items
    of a request without it carry none, even batched beside one with it."""
    from scorer.publish import decode_map

    images = digits.test.images[:8, 0]
    tag = uuid.uuid4().hex[:8]
    with_maps = httpx.post(
        f"{scorer_url}/v1/score",
        content=_npy(images),
        timeout=120,
        headers={"content-type": "application/x-npy"},
        params={"maps": "true", "item_id": [f"m{tag}-{i}" for i in range(8)]},
    )
    plain = _post_npy(scorer_url, images, [f"p{tag}-{i}" for i in range(8)])
    assert with_maps.status_code == 200, with_maps.text
    maps = [decode_map(r["anomaly_map"]) for r in with_maps.json()["results"]]
    assert all(m.shape == (28, 28) and m.dtype == np.float32 for m in maps)
    scores = [r["score"] for r in with_maps.json()["results"]]
    assert np.allclose([m.sum() for m in maps], scores, rtol=1e-4)
    assert all("anomaly_map" not in r for r in plain["results"])


def test_corrupt_png_fails_alone_and_is_dead_lettered(
    scorer_url: str, client: redis.Redis, digits: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = [f"c{tag}-{i}" for i in range(3)]
    scores, letters = stream_end(client, "vlaewatch:scores"), stream_end(client, DEAD)
    good = _png(digits.test.images[0, 0])
    files = [("files", ("a.png", good, "image/png")),
             ("files", ("b.png", good[: len(good) // 2], "image/png")),
             ("files", ("c.png", good, "image/png"))]  # fmt: skip
    resp = httpx.post(f"{scorer_url}/v1/score", files=files,
                      data={"line": "cam2", "item_id": ",".join(ids)}, timeout=60)  # fmt: skip
    assert resp.status_code == 200
    results = resp.json()["results"]
    assert [r["ok"] for r in results] == [True, False, True]
    assert results[1]["status"] == 422 and "cannot decode" in results[1]["error"]
    assert results[0]["score"] == pytest.approx(results[2]["score"])
    dead = _entries(client, DEAD, {ids[1]}, letters)
    assert len(dead) == 1 and dead[0]["source"] == "http" and "cannot decode" in dead[0]["reason"]
    assert {e["item_id"] for e in _entries(client, "vlaewatch:scores", set(ids), scores)} == {
        ids[0], ids[2]}  # fmt: skip


def test_whole_request_errors_are_4xx_with_reasons(scorer_url: str, digits: Any) -> None:
    url = f"{scorer_url}/v1/score"
    r = httpx.post(url, content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415 and "multipart" in r.json()["detail"]
    r = httpx.post(url, files=[("other", ("a.txt", b"x", "text/plain"))])
    assert r.status_code == 400 and "no images" in r.json()["detail"]
    r = httpx.post(url, content=_npy(np.zeros((1100, 28, 28), np.uint8)),
                   headers={"content-type": "application/x-npy"})  # fmt: skip
    assert r.status_code == 413
    npy = {"content-type": "application/x-npy"}
    r = httpx.post(url, content=_npy(np.zeros((2, 28, 28), np.uint8)), headers=npy,
                   params={"item_id": ["a"]})  # fmt: skip
    assert r.status_code == 400 and "item ids" in r.json()["detail"]
    arr = np.zeros((3, 28, 28), np.float32)
    arr[1, 0, 0] = np.nan
    r = httpx.post(url, content=_npy(arr), headers={"content-type": "application/x-npy"})
    assert [x["ok"] for x in r.json()["results"]] == [True, False, True]
    assert "NaN" in r.json()["results"][1]["error"]
    r = httpx.post(url, content=_npy(np.zeros((2, 20, 20), np.uint8)),
                   headers={"content-type": "application/x-npy"})  # fmt: skip
    assert r.status_code == 200 and all("28x28" in x["error"] for x in r.json()["results"])
    # A batch N x H x W x C (here C = 1, the model's channels) is N images.
    r = httpx.post(url, content=_npy(digits.test.images[:3, 0][..., None]), headers=npy)
    assert r.status_code == 200 and r.json()["n_scored"] == 3, r.text


def test_frames_stream_is_consumed_scored_and_acked(
    scorer_url: str, client: redis.Redis, digits: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    good_id, bad_id = f"f{tag}-ok", f"f{tag}-bad"
    scores, letters = stream_end(client, "vlaewatch:scores"), stream_end(client, DEAD)
    sent = [
        client.xadd("vlaewatch:frames", {"image": _png(digits.test.images[5, 0]), "line": "cam3",
                                         "item_id": good_id, "ts": time.time()}),
        client.xadd("vlaewatch:frames", {"image": b"not an image", "line": "cam3",
                                         "item_id": bad_id}),
    ]  # fmt: skip
    garbage = client.xadd("vlaewatch:frames", {"line": "cam3", "what": "no image field"})
    scored = _wait_for(lambda: _entries(client, "vlaewatch:scores", {good_id}, scores))
    assert scored[0]["line"] == "cam3"
    dead = _wait_for(lambda: _entries(client, DEAD, {bad_id}, letters))
    assert dead[0]["source"] == "frames" and "cannot decode" in dead[0]["reason"]
    garbage_id = garbage.decode()
    dead = _wait_for(lambda: _entries(client, DEAD, {f"frame-{garbage_id}"}, letters))
    assert "image" in dead[0]["reason"] and dead[0]["frame_id"] == garbage_id
    _wait_for(lambda: client.xpending("vlaewatch:frames", FRAMES_GROUP)["pending"] == 0)
    # Handled frames are deleted: the stream holds the backlog, not the history.
    for eid in [*sent, garbage]:
        assert client.xrange("vlaewatch:frames", eid, eid) == []


def test_frames_left_pending_by_a_dead_consumer_are_reclaimed(
    scorer_url: str, client: redis.Redis, digits: Any
) -> None:
    item = f"p{uuid.uuid4().hex[:8]}"
    start = stream_end(client, "vlaewatch:scores")
    client.xadd("vlaewatch:frames", {"image": _png(digits.test.images[7, 0]), "item_id": item})
    # A consumer that reads the frame and dies before acknowledging it.
    client.xreadgroup(FRAMES_GROUP, "dead-consumer", {"vlaewatch:frames": ">"}, count=1000)
    scored = _wait_for(lambda: _entries(client, "vlaewatch:scores", {item}, start), timeout=30)
    assert len(scored) == 1


def test_previews_of_a_scored_item(scorer_url: str, digits: Any) -> None:
    item = f"v{uuid.uuid4().hex[:8]}"
    _post_npy(scorer_url, digits.test.images[:1, 0], [item])
    resp = httpx.post(f"{scorer_url}/v1/preview", json={"item_ids": [item, "gone"], "scale": 2},
                      timeout=60)  # fmt: skip
    assert resp.status_code == 200
    found, missing = resp.json()["previews"]
    assert found["ok"] and set(found["images"]) == {"original", "reconstruction", "denoised",
                                                    "error", "panel", "overlay"}  # fmt: skip
    sizes = {}
    for kind, b64 in found["images"].items():
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert im.format == "PNG"
            sizes[kind] = im.size
    assert sizes["original"] == (56, 56)
    assert sizes["panel"] == ((4 * 28 + 3) * 2, 56)
    assert sizes["overlay"] == ((2 * 28 + 1) * 2, 56)  # the part | gap | the part repaired
    with Image.open(io.BytesIO(base64.b64decode(found["images"]["original"]))) as im:
        original = np.asarray(im.convert("L"))[::2, ::2]
    assert np.array_equal(original, digits.test.images[0, 0])
    assert not missing["ok"] and missing["status"] == 404 and "retention" in missing["error"]


def _original(url: str, item: str) -> np.ndarray:
    resp = httpx.post(f"{url}/v1/preview", json={"item_ids": [item], "scale": 1}, timeout=60)
    found = resp.json()["previews"][0]
    assert found["ok"], found
    with Image.open(io.BytesIO(base64.b64decode(found["images"]["original"]))) as im:
        return np.asarray(im.convert("L"))


def test_stored_images_keep_the_smaller_of_file_and_pixels_and_read_back_exactly(
    scorer_url: str, client: redis.Redis, digits: Any
) -> None:
    """A digit's PNG (a third of its pixels) and a JPEG are kept as sent; noise, whose PNG is
    larger than its pixels, and NPY items keep their pixels. Each previews as the pixels that
    were scored, with the retention TTL; an item stored in the earlier hash layout still
    previews until it expires."""
    digit = digits.test.images[0, 0]
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(digit).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    files = {"digit": _png(digit), "noise": _png(noise), "jpeg": jpeg}
    assert len(files["digit"]) < digit.nbytes < len(files["noise"])
    tag = uuid.uuid4().hex[:8]
    ids = ",".join(f"{k}-{tag}" for k in files)
    resp = httpx.post(f"{scorer_url}/v1/score", data={"item_id": ids}, timeout=60,
                      files=[("files", (f"{k}.png", v)) for k, v in files.items()])  # fmt: skip
    assert resp.status_code == 200 and resp.json()["n_scored"] == 3, resp.text
    _post_npy(scorer_url, digit[None], [f"npy-{tag}"], line="default")
    with Image.open(io.BytesIO(jpeg)) as im:
        jpeg_pixels = np.asarray(im)
    expected = {"digit": ("file", digit), "noise": ("pixels", noise),
                "jpeg": ("file", jpeg_pixels), "npy": ("pixels", digit)}  # fmt: skip
    for name, (kind, pixels) in expected.items():
        key = f"vlaewatch:item:{name}-{tag}"
        blob = ItemBlob.parse(client.get(key))  # type: ignore[arg-type]
        assert (blob.kind, blob.shape, blob.line) == (kind, (1, 28, 28), "default"), name
        assert blob.payload == (files[name] if kind == "file" else pixels.tobytes()), name
        assert 3500 < client.ttl(key) <= 3600
        assert np.array_equal(_original(scorer_url, f"{name}-{tag}"), pixels), name


def test_model_swap_mid_stream_loses_no_request(
    scorer_url: str, redis_server: Any, checkpoint: Path, checkpoint_b: Path, digits: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    v1 = read_card(checkpoint).model_version
    v2 = read_card(checkpoint_b).model_version
    port = int(scorer_url.rsplit(":", 1)[1])
    base = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url,
                        reclaim_idle_ms=2000)  # fmt: skip
    images = digits.test.images[:16, 0]
    seen: list[str] = []
    failures: list[str] = []
    sent, answered = [0, 0, 0], [0, 0, 0]
    stop = threading.Event()

    def traffic(k: int) -> None:
        # Every request counts: an exception (a reset, a timeout) is a failure too, and a
        # thread that died early would leave its counts short.
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                sent[k] += 1
                try:
                    r = http.post(f"{scorer_url}/v1/score", content=_npy(images),
                                  headers={"content-type": "application/x-npy"})  # fmt: skip
                except Exception as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200 or r.json()["n_scored"] != len(images):
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                answered[k] += 1
                seen.extend(x["model_version"] for x in r.json()["results"])

    threads = [threading.Thread(target=traffic, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        # Every client under way before the swap (a failure ends the wait: reported below).
        _wait_for(lambda: failures or all(answered), timeout=60)
        deploy(base.model_copy(update={"checkpoint": str(checkpoint_b)}),
               DeploymentConfig(num_cpus=0.25), port=port)  # fmt: skip
        _wait_for(lambda: seen and seen[-1] == v2, timeout=30)
        mark = list(answered)

        def one_more_each() -> bool:
            """Each client answered again once the new version answers."""
            return bool(failures) or all(a > m for a, m in zip(answered, mark, strict=True))

        _wait_for(one_more_each, timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:5]
    assert all(n > 0 for n in sent) and answered == sent, (sent, answered)
    assert v1 in seen and v2 in seen

    # A corrupted checkpoint is refused; the running version keeps serving.
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    try:
        with pytest.raises(DeployError, match="content hash mismatch"):
            deploy(base.model_copy(update={"checkpoint": str(broken)}),
                   DeploymentConfig(num_cpus=0.25), port=port)  # fmt: skip
        health = httpx.get(f"{scorer_url}/v1/health")
        assert health.status_code == 200, (health.status_code, health.text)
        assert health.json()["model_version"] == v2
        r = httpx.post(f"{scorer_url}/v1/score", content=_npy(images[:2]),
                       headers={"content-type": "application/x-npy"})  # fmt: skip
        assert {x["model_version"] for x in r.json()["results"]} == {v2}
    finally:
        deploy(base, DeploymentConfig(num_cpus=0.25), port=port)
    assert httpx.get(f"{scorer_url}/v1/health").json()["model_version"] == v1

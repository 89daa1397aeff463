"""The blob store for item images: a local folder, and an S3 server over HTTP (moto's server,
a stand-in for S3 that speaks its API, since no S3 can be installed here), behind the real
scorer on Ray Serve."""

from __future__ import annotations

import base64
import io
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.fs as pafs
import pytest
import redis
from PIL import Image

from contract.records import ItemBlob
from contract.redis_server import free_port
from scorer.blobs import BlobRef, BlobStore, bucket_seconds
from scorer.config import DeploymentConfig, ScorerConfig
from scorer.service import deploy


def test_a_batch_is_one_object_read_back_by_range_and_swept_after_retention(
    tmp_path: Path,
) -> None:
    store = BlobStore(str(tmp_path / "blobs"), retention_s=20)
    assert store.bucket_s == bucket_seconds(20) == 2
    now = 1_000_000.0
    refs = store.write([b"first", b"", b"third!"], now)
    assert len({r.path for r in refs}) == 1 and [r.length for r in refs] == [5, 0, 6]
    assert [store.read(BlobRef.parse(str(r))) for r in refs] == [b"first", b"", b"third!"]
    later = store.write([b"later"], now + 10)[0]
    # A bucket goes once its newest possible image was retained: [1e6, 1e6 + 2) + 20 s.
    assert store.sweep(now + 21.9) == 0 and store.read(refs[0]) == b"first"
    assert store.sweep(now + 22) == 1 and store.read(refs[0]) is None
    assert store.read(later) == b"later"
    assert sorted(os.listdir(tmp_path / "blobs")) == [str(int((now + 10) // 2))]


@pytest.mark.parametrize(
    "text", ["../x:0:1", "1/../x:0:1", "a/b:0:1", "1/:0:1", "1/a/b:0:1", "1/x:0", "1/x:a:1"]
)
def test_a_reference_that_is_not_the_stores_own_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        BlobRef.parse(text)


def test_a_blob_uri_with_a_password_is_refused() -> None:
    with pytest.raises(ValueError, match="credentials"):
        ScorerConfig(checkpoint="x", blob_uri="s3://key:secret@bucket/items")


def _objects(uri: str) -> list[str]:
    fs, root = pafs.FileSystem.from_uri(uri)
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(i.path for i in found if i.type == pafs.FileType.File)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _score_file(url: str, data: bytes, item: str, line: str) -> None:
    resp = httpx.post(f"{url}/v1/score", data={"item_id": item, "line": line}, timeout=60,
                      files=[("files", (f"{item}.png", data))])  # fmt: skip
    assert resp.status_code == 200 and resp.json()["n_scored"] == 1, resp.text


def test_a_large_frame_previews_from_s3_and_retention_removes_image_and_reference(
    s3_stand_in: str, scorer_url: str, redis_server: Any, checkpoint: Path,
    client: redis.Redis,
) -> None:  # fmt: skip
    # A 256 x 256 frame, scored resized to the digits model: what is kept is the smaller of
    # the file and the pixels scored (784 bytes here), over the inline limit set here: it goes
    # to the store, Redis keeping the reference. A blank digit's PNG (under 100 bytes) stays.
    port = int(scorer_url.rsplit(":", 1)[1])
    prefix = f"blob{uuid.uuid4().hex[:6]}"
    base = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url,
                        reclaim_idle_ms=2000)  # fmt: skip
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    digit = np.zeros((28, 28), np.uint8)
    assert len(_png(digit)) < 200 < 784
    deploy(base.model_copy(update={"key_prefix": prefix, "resize": True, "retention_s": 3,
                                   "blob_uri": s3_stand_in, "inline_max_bytes": 200}),
           DeploymentConfig(num_cpus=0.25), port=port)  # fmt: skip
    try:
        _score_file(scorer_url, _png(frame), "frame-1", "cam1")
        _score_file(scorer_url, _png(digit), "digit-1", "cam1")
        big = ItemBlob.parse(client.get(f"{prefix}:item:frame-1"))  # type: ignore[arg-type]
        small = ItemBlob.parse(client.get(f"{prefix}:item:digit-1"))  # type: ignore[arg-type]
        assert big.ref is not None and big.payload == b"" and big.kind == "pixels"
        assert big.shape == (1, 28, 28)
        assert small.ref is None and small.payload == _png(digit)
        stored = _objects(s3_stand_in)
        assert len(stored) == 1 and stored[0].endswith(BlobRef.parse(big.ref).path)
        resp = httpx.post(f"{scorer_url}/v1/preview", timeout=60,
                          json={"item_ids": ["frame-1", "digit-1"], "scale": 1})  # fmt: skip
        found = resp.json()["previews"]
        assert all(p["ok"] for p in found), found
        with Image.open(io.BytesIO(base64.b64decode(found[0]["images"]["original"]))) as im:
            shown = np.asarray(im.convert("L"))
        # The frame as it was scored: decoded again from the store, resized to the model.
        assert shown.shape == (28, 28) and 100 < shown.mean() < 155
        # Past retention (3 s, in buckets of 1 s) the key expires, and the replica's sweep,
        # once a bucket's time with no traffic, deletes the frame's bucket within a second.
        deadline = time.monotonic() + 10
        while _objects(s3_stand_in):
            assert time.monotonic() < deadline, _objects(s3_stand_in)
            time.sleep(0.2)
        assert client.get(f"{prefix}:item:frame-1") is None
        resp = httpx.post(f"{scorer_url}/v1/preview", timeout=60,
                          json={"item_ids": ["frame-1"], "scale": 1})  # fmt: skip
        gone = resp.json()["previews"][0]
        assert not gone["ok"] and gone["status"] == 404 and "retention" in gone["error"]
    finally:
        deploy(base, DeploymentConfig(num_cpus=0.25), port=port)


def test_an_unreachable_blob_store_is_a_503_with_its_reason_and_nothing_is_published(
    scorer_url: str, redis_server: Any, checkpoint: Path, client: redis.Redis
) -> None:
    # Nothing listens at the store's address: an item bound for it is refused whole (the
    # caller retries); one kept in Redis is scored as ever.
    port = int(scorer_url.rsplit(":", 1)[1])
    prefix = f"blobdown{uuid.uuid4().hex[:6]}"
    down = f"s3://items/line?endpoint_override=127.0.0.1:{free_port()}&scheme=http&region=us-east-1"
    base = ScorerConfig(checkpoint=str(checkpoint), redis_url=redis_server.url,
                        reclaim_idle_ms=2000)  # fmt: skip
    frame = np.random.default_rng(1).integers(0, 256, (256, 256), dtype=np.uint8)
    deploy(base.model_copy(update={"key_prefix": prefix, "resize": True, "blob_uri": down,
                                   "inline_max_bytes": 200}),
           DeploymentConfig(num_cpus=0.25), port=port)  # fmt: skip
    try:
        resp = httpx.post(f"{scorer_url}/v1/score", timeout=120,
                          data={"item_id": "frame-1", "line": "cam1"},
                          files=[("files", ("frame-1.png", _png(frame)))])  # fmt: skip
        assert resp.status_code == 503 and "unavailable" in resp.json()["detail"], resp.text
        assert client.exists(f"{prefix}:item:frame-1", f"{prefix}:scores") == 0
        _score_file(scorer_url, _png(np.zeros((28, 28), np.uint8)), "digit-1", "cam1")
        assert client.xlen(f"{prefix}:scores") == 1
    finally:
        deploy(base, DeploymentConfig(num_cpus=0.25), port=port)

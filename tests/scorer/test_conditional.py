"""A ConditionalVLAE in service: one model, two product types on two lines, through the real
scorer (Ray Serve over HTTP, Redis)."""

from __future__ import annotations

import base64
import io
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from PIL import Image
from sklearn.metrics import roc_auc_score

from tests.conftest import LINE_CONDITIONS
from tests.streams import entries_since, stream_end
from vlae.checkpoint import read_card

PREFIX = "vlaewatch-cond"


def _score(url: str, images: np.ndarray, line: str) -> dict[str, Any]:
    buf = io.BytesIO()
    np.save(buf, images)
    tag = uuid.uuid4().hex[:8]
    ids = [f"{line}-{tag}-{i}" for i in range(len(images))]
    resp = httpx.post(f"{url}/v1/score", content=buf.getvalue(), timeout=120,
                      headers={"content-type": "application/x-npy"},
                      params={"line": line, "item_id": ids})  # fmt: skip
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_each_line_scores_its_own_product_low_and_the_other_high(
    conditional_scorer_url: str, conditional_checkpoint: Path, digits: Any
) -> None:
    card = read_card(conditional_checkpoint)
    assert card.variant == "ConditionalVLAE" and card.conditions == ["0", "1"]
    assert card.line_conditions == LINE_CONDITIONS
    health = httpx.get(f"{conditional_scorer_url}/v1/health", timeout=30).json()
    assert health["model_version"] == card.model_version
    assert health["line_conditions"] == LINE_CONDITIONS and health["explorer"] is True

    test = digits.test
    labels = test.labels.astype(str)
    zeros, ones = test.images[labels == "0"][:, 0], test.images[labels == "1"][:, 0]
    scores = {}
    for line in LINE_CONDITIONS:
        for digit, images in (("0", zeros), ("1", ones)):
            body = _score(conditional_scorer_url, images, line)
            assert body["n_failed"] == 0 and body["model_version"] == card.model_version
            scores[line, digit] = np.array([r["score"] for r in body["results"]])
    for line, own in LINE_CONDITIONS.items():
        other = "1" if own == "0" else "0"
        normal, foreign = scores[line, own], scores[line, other]
        auroc = roc_auc_score([0] * len(normal) + [1] * len(foreign), [*normal, *foreign])
        assert auroc > 0.9, (line, auroc)
        # Most of the other product scores above the 95th percentile of the line's own.
        assert np.median(foreign) > np.quantile(normal, 0.95), line
    # The same digit scores differently by line: the line, not the image, picks the condition.
    assert scores["line-a", "0"].mean() < scores["line-b", "0"].mean()
    assert scores["line-b", "1"].mean() < scores["line-a", "1"].mean()


def test_an_unmapped_line_is_refused_per_item_and_dead_lettered(
    conditional_scorer_url: str, redis_server: Any, digits: Any
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    start = stream_end(client, f"{PREFIX}:deadletter")
    images = digits.test.images[:2, 0]
    buf = io.BytesIO()
    np.save(buf, images)
    ids = [f"u{uuid.uuid4().hex[:8]}-{i}" for i in range(2)]
    resp = httpx.post(f"{conditional_scorer_url}/v1/score", content=buf.getvalue(), timeout=60,
                      headers={"content-type": "application/x-npy"},
                      params={"line": "line-z", "item_id": ids})  # fmt: skip
    assert resp.status_code == 200
    results = resp.json()["results"]
    assert all(r["ok"] is False and r["status"] == 422 for r in results)
    assert "line 'line-z' has no condition" in results[0]["error"]
    dead = [f for _, f in entries_since(client, f"{PREFIX}:deadletter", start)
            if f[b"item_id"].decode() in ids]  # fmt: skip
    assert len(dead) == 2 and b"has no condition" in dead[0][b"reason"]


def test_previews_and_explorer_views_use_the_line_condition(
    conditional_scorer_url: str, digits: Any
) -> None:
    labels = digits.test.labels.astype(str)
    one = digits.test.images[labels == "1"][:1, 0]
    item_a = _score(conditional_scorer_url, one, "line-a")["results"][0]["item_id"]
    item_b = _score(conditional_scorer_url, one, "line-b")["results"][0]["item_id"]
    resp = httpx.post(f"{conditional_scorer_url}/v1/preview",
                      json={"item_ids": [item_a, item_b], "scale": 1}, timeout=60)  # fmt: skip
    assert resp.status_code == 200
    recon = {}
    for p in resp.json()["previews"]:
        png = base64.b64decode(p["images"]["reconstruction"])
        recon[p["item_id"]] = np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32)
    original = one[0].astype(np.float32)
    # Under its own product's condition a "1" reconstructs better than under the other's.
    err_a = np.abs(recon[item_a] - original).mean()
    err_b = np.abs(recon[item_b] - original).mean()
    assert err_b < err_a

    views = [{"kind": "sample", "n": 4, "scale": 1},
             {"kind": "neighbours", "item_id": item_b, "k": 3, "scale": 1},
             {"kind": "interpolate", "item_a": item_a, "item_b": item_b, "steps": 4, "scale": 1},
             {"kind": "traverse", "item_id": item_b, "n_dims": 2, "steps": 5, "scale": 1},
             {"kind": "latent_map", "items": [{"item_id": item_a}, {"item_id": item_b}],
              "method": "pca", "width": 320, "height": 240}]  # fmt: skip
    sizes = {"sample": (4 * 29 - 1, 2 * 29 - 1), "neighbours": (4 * 29 - 1, 28),
             "interpolate": (6 * 29 - 1, 28), "traverse": (5 * 29 - 1, 2 * 29 - 1),
             "latent_map": (320, 240)}  # fmt: skip
    for body in views:
        resp = httpx.post(f"{conditional_scorer_url}/v1/explore", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        view = resp.json()
        with Image.open(io.BytesIO(base64.b64decode(view["png"]))) as im:
            assert im.format == "PNG" and im.size == sizes[body["kind"]] == (
                view["width"], view["height"])  # fmt: skip
    nearest = httpx.post(f"{conditional_scorer_url}/v1/explore", timeout=60, json=views[1]).json()
    # The nearest normal items of a line-b item are line b's product: calibration ones.
    assert nearest["data"]["condition"] == "1"
    resp = httpx.post(f"{conditional_scorer_url}/v1/explore", timeout=60,
                      json={"kind": "sample", "condition": "7"})  # fmt: skip
    assert resp.status_code == 422 and "not one of" in resp.json()["detail"]

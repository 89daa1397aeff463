"""The explorer through the API (`vlaewatch api` over HTTP, the real scorer renders)."""

from __future__ import annotations

import io
import uuid
from typing import Any

import httpx
import numpy as np
from PIL import Image

from tests.conftest import API_KEYS

VIEW = {"X-API-Key": API_KEYS["viewer"]}
OP = {"X-API-Key": API_KEYS["operator"]}


def _size(resp: httpx.Response) -> tuple[int, int]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(resp.content)) as im:
        assert im.format == "PNG"
        return im.size


def _score(scorer_url: str, images: np.ndarray, line: str) -> list[str]:
    buf = io.BytesIO()
    np.save(buf, images)
    ids = [f"{line}-{i}" for i in range(len(images))]
    resp = httpx.post(f"{scorer_url}/v1/score", content=buf.getvalue(), timeout=120,
                      headers={"content-type": "application/x-npy"},
                      params={"line": line, "item_id": ids})  # fmt: skip
    assert resp.status_code == 200 and resp.json()["n_scored"] == len(ids)
    return ids


def test_explorer_endpoints_render_the_served_model(
    api_url: str, scorer_url: str, digits: Any
) -> None:
    line = f"x{uuid.uuid4().hex[:8]}"
    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", headers=OP,
                   json={"line": line, "params": {"method": "fpr", "alpha": 0.05},
                         "why": "explorer test"})  # fmt: skip
    assert r.status_code == 200, r.text
    labels = digits.test.labels.astype(str)
    normal = digits.test.images[labels == "0"][:20, 0]
    anomalous = digits.test.images[labels != "0"][:20, 0]
    ids = _score(scorer_url, np.concatenate([normal, anomalous]), line)
    a, b = ids[0], ids[25]

    def get(path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{api_url}{path}", headers=VIEW, params=params, timeout=120)

    # Latent map of the line's recent items, flagged ones from its alerts.
    assert _size(get("/v1/explore/latent-map.png", line=line, method="pca", width=500,
                     height=300)) == (500, 300)  # fmt: skip
    m = get("/v1/explore/latent-map", line=line, method="pca")
    assert m.status_code == 200, m.text
    points = {p["item_id"]: p for p in m.json()["data"]["points"]}
    assert set(points) == set(ids)
    flagged = [p for p in points.values() if p["flagged"]]
    assert flagged and all(p["group"] == line for p in points.values())
    alerts = httpx.get(f"{api_url}/v1/alerts", headers=VIEW, params={"line": line, "limit": 100})
    assert {x["item_id"] for x in alerts.json()["items"]} == {p["item_id"] for p in flagged}
    far = np.mean([points[i]["map_distance"] for i in ids[20:]])
    near = np.mean([points[i]["map_distance"] for i in ids[:20]])
    assert far > near

    # Nearest normal items: the item and k calibration images, with their distances.
    assert _size(get(f"/v1/items/{b}/neighbours.png", k=4, scale=2)) == ((5 * 29 - 1) * 2, 56)
    n = get(f"/v1/items/{b}/neighbours", k=4).json()["data"]
    assert len(n["latent_distance"]) == 4 and n["latent_distance"] == sorted(n["latent_distance"])

    assert _size(get("/v1/explore/samples.png", n=5, scale=1)) == (5 * 29 - 1, 28)
    assert _size(get("/v1/explore/interpolate.png", a=a, b=b, steps=4, scale=1)) == (
        6 * 29 - 1, 28)  # fmt: skip
    assert _size(get("/v1/explore/traverse.png", item_id=a, dims="0,1,2", steps=5,
                     scale=1)) == (5 * 29 - 1, 3 * 29 - 1)  # fmt: skip
    assert _size(get("/v1/explore/compress.png", item_id=[a, b], scale=1)) == (57, 57)
    c = get("/v1/explore/compress", item_id=[a, b], dtype="float16").json()["data"]
    assert c["ratio"] == c["input_bytes"] / c["code_bytes"] == 784 / (20 * 2)
    assert len(c["items"]) == 2

    # Cached: the second identical request is answered from Redis.
    first = get("/v1/explore/samples.png", n=3, seed=7)
    again = get("/v1/explore/samples.png", n=3, seed=7)
    assert again.headers["x-cache"] == "hit" and again.content == first.content


def test_explorer_errors_are_json_with_reasons(api_url: str) -> None:
    def get(path: str, headers: dict[str, str] | None = VIEW, **params: Any) -> httpx.Response:
        return httpx.get(f"{api_url}{path}", headers=headers, params=params, timeout=60)

    r = get("/v1/explore/samples.png", headers=None)
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    r = get("/v1/items/never-scored-item/neighbours.png")
    assert r.status_code == 404 and "never scored" in r.json()["detail"]
    r = get("/v1/explore/interpolate.png", a="nope-a", b="nope-b")
    assert r.status_code == 404
    r = get("/v1/explore/traverse.png", dims="99")
    assert r.status_code == 422 and "outside" in r.json()["detail"]
    r = get("/v1/explore/samples.png", condition="1")
    assert r.status_code == 422 and "not conditional" in r.json()["detail"]
    r = get("/v1/explore/samples.png", n=1000)
    assert r.status_code == 422
    r = get("/v1/explore/compress")
    assert r.status_code == 422

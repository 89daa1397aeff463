"""Local defects on generated inspection images, through the real scorer (Ray Serve over HTTP,
Redis): detection floors on served scores and maps, and served numbers equal to ``evaluate``'s.

Three models with the settings ``vlaewatch train`` picks for the data (a SpatialVLAE, Gaussian
likelihood, local score): the default demo's two, a grey texture (fabric) and a colour part in
a fixture (the pill), trained by Ray Train with the demo's epochs on its parts (seed 0; the
session's ``demo_run`` trains them once for the demo's test and these); and a colour part at
128 x 128, trained in-process for a moment. The tests score parts of another seed (1), which
no model saw.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import redis
import redis.asyncio as aioredis
from PIL import Image
from sklearn.metrics import roc_auc_score

from api.calibrate import conformal_threshold, false_alarm_rate
from api.schemas.thresholds import Threshold
from contract.keys import FRAMES_GROUP, StreamKeys
from contract.streams import line_model_version
from scorer.publish import decode_map
from tests.demo_run import DEMO_TIMEOUT, DemoRun
from trainer.data import LabelledImages, Source, split_normal
from trainer.defaults import choose_model, choose_training
from trainer.inspection import good, make_split
from trainer.pipeline import DatasetInfo, train_model
from trainer.train import LoopContext, fit
from vlae.checkpoint import load_checkpoint, read_card
from vlae.score import score_images

# name -> (category, image side, the demo's line whose model it is; None: trained here).
MODELS = {
    "fabric": ("fabric", 64, "cam1"),
    "pill": ("pill", 64, "cam2"),
    "pill128": ("pill", 128, None),
}
N_TRAIN_128, EPOCHS_128 = 64, 1  # a model to route to, not to judge: no floors on it
N_GOOD, N_PER_DEFECT, TEST_SEED = 40, 12, 1
pytestmark = DEMO_TIMEOUT  # the first of these may be the one that waits for the demo's fits


def _test_set(category: str, size: int) -> Any:
    return make_split(
        category,
        n_train=1,
        n_test_good=N_GOOD,
        n_test_per_defect=N_PER_DEFECT,
        size=size,
        seed=TEST_SEED,
    )[1]


def _train_here(category: str, size: int, out: Path) -> Path:
    train = good(category, N_TRAIN_128, size, seed=0)
    src = Source(
        category,
        LabelledImages(train, np.full(len(train), "good", dtype=object)),
        LabelledImages(train[:2], np.full(2, "good", dtype=object)),
    )
    model_cfg, profile = choose_model(src.train.images)
    return Path(
        train_model(
            split_normal(src, ["good"]),
            model_cfg,
            choose_training(model_cfg, epochs=EPOCHS_128),
            DatasetInfo(f"inspection:{category}"),
            lambda m, c, d: fit(m, c, d, LoopContext(log=lambda _: None)),
            {"kind": "in-process"},
            out=out,
            data_profile=profile.to_dict(),
        )
    )


@pytest.fixture(scope="session")
def inspection(
    scorer_url: str,
    redis_server: Any,
    demo_run: DemoRun,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, dict[str, Any]]]:
    """Each model of ``MODELS`` served (route prefix ``/<name>``), with its test set."""
    from ray import serve

    from scorer.app import Scorer
    from scorer.config import DeploymentConfig, ScorerConfig

    out: dict[str, dict[str, Any]] = {}
    for name, (category, size, line) in MODELS.items():
        here = tmp_path_factory.mktemp("inspection") / name
        path = demo_run.checkpoint(line) if line else _train_here(category, size, here)
        cfg = ScorerConfig(checkpoint=str(path), redis_url=redis_server.url,
                           key_prefix=f"vlaewatch-{name}", consume_frames=False)  # fmt: skip
        options = DeploymentConfig(num_cpus=0.25).options()
        app = Scorer.options(user_config=cfg.model_dump(), **options).bind()  # type: ignore[attr-defined]
        serve.run(app, name=name, route_prefix=f"/{name}")
        out[name] = {"url": f"{scorer_url}/{name}", "path": path, "test": _test_set(category, size)}
    yield out
    for name in MODELS:
        serve.delete(name)


def _served(url: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and maps of uint8 (N, C, H, W) images, through ``POST /v1/score?maps=true``."""
    scores, maps = [], []
    for i in range(0, len(images), 64):
        batch = images[i : i + 64].transpose(0, 2, 3, 1)  # N x H x W x C on the wire
        buf = io.BytesIO()
        np.save(buf, batch[..., 0] if batch.shape[-1] == 1 else batch)
        tag = uuid.uuid4().hex[:8]
        params = {
            "line": "insp",
            "maps": "true",
            "item_id": [f"{tag}-{j}" for j in range(len(batch))],
        }
        resp = httpx.post(f"{url}/v1/score", content=buf.getvalue(), timeout=120,
                          headers={"content-type": "application/x-npy"}, params=params)  # fmt: skip
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["n_failed"] == 0
        scores += [r["score"] for r in body["results"]]
        maps += [decode_map(r["anomaly_map"]) for r in body["results"]]
    return np.array(scores), np.stack(maps)


def _aurocs(test: Any, scores: np.ndarray, maps: np.ndarray) -> dict[str, tuple[float, float]]:
    """Per defect type: (image AUROC against the good images, pixel AUROC on those images)."""
    labels = test.labels.astype(str)
    good = labels == "good"
    out = {}
    for d in sorted(set(labels) - {"good"}):
        pick = good | (labels == d)
        image = roc_auc_score(labels[pick] != "good", scores[pick])
        pixel = roc_auc_score(test.masks[pick].ravel(), maps[pick].ravel())
        out[d] = (float(image), float(pixel))
    return out


# Floors, per defect (image AUROC or None, pixel AUROC) and over every defect (image, pixel):
# what the demo's models measured on the test parts of seeds 1, 2 and 3, less a margin for 12
# images a defect. Fabric (150 epochs): all defects 0.965 / 0.995, 0.955 / 0.970, 0.980 /
# 0.991; its lowest rows scratch 0.94 / 1.00 and 0.87 / 0.98, stain 0.93 / 0.99 and 0.95 /
# 0.91. The pill (150 epochs, a third of a part's default): all defects 0.72 / 0.86, 0.83 /
# 0.86, 0.78 / 0.82; contamination 0.91 / 0.99 and 0.93 / 0.99, hole 0.81 / 0.97 and 0.94 /
# 0.99, stain 0.78 / 0.90 and 0.92 / 0.94, misplaced (found through the KL term) 0.65 / 0.79
# and 0.76 / 0.76, scratch 0.74 / 0.72 and 0.47 / 0.71, crack 0.43 / 0.84 and 0.97 / 0.96.
# Where 12 images a defect swing that far from seed to seed (the pill's thin lines), only the
# pixel AUROC (thousands of pixels) has a floor of its own; their image scores count in the
# floor over every defect. Without the defect head the whole-image score was at chance.
FLOORS = {
    "fabric": {"hole": (0.9, 0.95), "contamination": (0.85, 0.9), "scratch": (0.8, 0.9),
               "stain": (0.8, 0.85), "worn": (0.85, 0.9)},
    "pill": {"contamination": (0.8, 0.9), "hole": (0.7, 0.9), "stain": (0.65, 0.8),
             "misplaced": (0.55, 0.65), "scratch": (None, 0.6), "crack": (None, 0.75)},
}  # fmt: skip
ALL_DEFECTS = {"fabric": (0.9, 0.93), "pill": (0.65, 0.75)}


@pytest.mark.parametrize("name", ["fabric", "pill"])
def test_served_scores_and_maps_find_local_defects(
    inspection: dict[str, dict[str, Any]], name: str
) -> None:
    model = inspection[name]
    card = read_card(model["path"])
    assert card.variant == "DenoisingSpatialVLAE" and card.score_kind == "local"
    assert card.data_profile is not None and card.data_profile["aligned"] is (name == "pill")
    scores, maps = _served(model["url"], model["test"].images)
    assert maps.shape == (len(scores), 64, 64) and maps.dtype == np.float32
    # The local score is the map's maximum, in the same units.
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(axis=1), rtol=1e-5)
    got = _aurocs(model["test"], scores, maps)
    assert set(got) == set(FLOORS[name]), got
    for defect, (image_floor, pixel_floor) in FLOORS[name].items():
        image, pixel = got[defect]
        assert image >= (image_floor or 0) and pixel >= pixel_floor, (defect, got)
    bad = model["test"].labels.astype(str) != "good"
    every = (roc_auc_score(bad, scores), roc_auc_score(model["test"].masks.ravel(), maps.ravel()))
    assert every[0] >= ALL_DEFECTS[name][0] and every[1] >= ALL_DEFECTS[name][1], (every, got)


@pytest.mark.parametrize("name", list(MODELS))
def test_served_scores_and_maps_equal_evaluate(
    inspection: dict[str, dict[str, Any]], name: str
) -> None:
    model = inspection[name]
    images = model["test"].images[::5]
    served_scores, served_maps = _served(model["url"], images)
    local = score_images(load_checkpoint(model["path"]).model, images, maps=True)
    np.testing.assert_allclose(served_scores, local.score, rtol=1e-4, atol=1e-4)
    assert local.maps is not None
    np.testing.assert_allclose(served_maps, local.maps, rtol=1e-4, atol=1e-4)
    c, h, w = read_card(Path(model["path"])).image_shape
    assert served_maps.shape[1:] == (h, w) and images.shape[1] == c


# Floors (share of defective items with a region at alpha 0.05; share of those whose largest
# region's box overlaps the defect's mask), measured on the demo's models: fabric 51 of 60
# detected on seeds 1 and 2, 50 and 51 of them located; the pill 30 and 39 of 72 detected, 28
# and 36 located (a misplaced pill's mask is partly where the part should have been).
LOCATED = {"fabric": (0.7, 0.9), "pill": (0.35, 0.85)}


@pytest.mark.parametrize("name", ["fabric", "pill"])
def test_regions_find_where_the_defect_is(
    inspection: dict[str, dict[str, Any]], name: str, redis_server: Any
) -> None:
    # A pixel threshold calibrated as the API does (conformal, alpha 0.05, on the normal
    # calibration images' map maxima), stored where the API stores it, read by the scorer.
    model = inspection[name]
    calibration = pd.read_csv(Path(model["path"]) / "calibration.csv")
    value = conformal_threshold(np.sort(calibration["map_max"].to_numpy()), 0.05)
    line = f"loc{uuid.uuid4().hex[:6]}"
    entry = Threshold(line=line, target="pixel", version=1, value=value, method="fpr",
                      who="test", at=time.time())  # fmt: skip
    client = redis.Redis.from_url(redis_server.url)
    client.hset(StreamKeys(f"vlaewatch-{name}").pixel_thresholds, line, entry.model_dump_json())
    time.sleep(1.1)  # the scorer rereads pixel thresholds at most once a second

    test = model["test"]
    images = test.images.transpose(0, 2, 3, 1)
    buf = io.BytesIO()
    np.save(buf, images[..., 0] if images.shape[-1] == 1 else images)
    resp = httpx.post(f"{model['url']}/v1/score", content=buf.getvalue(), timeout=120,
                      headers={"content-type": "application/x-npy"},
                      params={"line": line})  # fmt: skip
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert all(r["pixel_threshold"] == value for r in results)
    defective = test.labels.astype(str) != "good"
    hits, detected, missed = 0, 0, []
    for r, mask, bad, label in zip(results, test.masks, defective, test.labels, strict=True):
        if not bad or not r["regions"]:
            continue
        detected += 1
        box = r["regions"][0]  # the largest
        hit = bool(mask[box["y"] : box["y"] + box["h"], box["x"] : box["x"] + box["w"]].any())
        hits += hit
        missed += [] if hit else [str(label)]
    floor_detected, floor_hit = LOCATED[name]
    assert detected >= floor_detected * defective.sum(), (detected, defective.sum())
    assert hits >= floor_hit * detected, (hits, detected, missed)


@pytest.mark.parametrize("name", ["fabric", "pill"])
def test_pixel_threshold_bounds_the_false_region_rate_on_unseen_good_parts(
    inspection: dict[str, dict[str, Any]], name: str
) -> None:
    # Calibrated as the API does (conformal at alpha 0.05 on the normal calibration images'
    # map maxima), on good parts of another seed, never trained or calibrated on, scored by
    # the real scorer: the share showing any region falls inside the reported interval.
    model = inspection[name]
    cal = np.sort(pd.read_csv(Path(model["path"]) / "calibration.csv")["map_max"].to_numpy())
    value = conformal_threshold(cal, 0.05)
    far = false_alarm_rate(cal, value)
    category, size, _ = MODELS[name]
    _, maps = _served(model["url"], good(category, 240, size, seed=11))
    realised = float(np.mean(maps.reshape(len(maps), -1).max(axis=1) > value))
    assert far.low <= realised <= far.high, (realised, far)


def test_each_line_is_scored_by_its_own_model(
    inspection: dict[str, dict[str, Any]], redis_server: Any, scorer_url: str
) -> None:
    # One deployment, two models: grey 64 x 64 fabric for every line, colour 128 x 128 pills
    # for line "pills". Each line's items are decoded to, scored by and previewed with its
    # own model, over HTTP and from one frames read that mixes the lines; both models and
    # the line map are announced for the API.
    from ray import serve

    from scorer.app import Scorer
    from scorer.config import DeploymentConfig, ScorerConfig

    fabric, pills = inspection["fabric"], inspection["pill128"]
    prefix = f"vw-lines-{uuid.uuid4().hex[:6]}"
    cfg = ScorerConfig(checkpoint=str(fabric["path"]), line_models={"pills": str(pills["path"])},
                       redis_url=redis_server.url, key_prefix=prefix)  # fmt: skip
    options = DeploymentConfig(num_cpus=0.25).options()
    app = Scorer.options(user_config=cfg.model_dump(), **options).bind()  # type: ignore[attr-defined]
    serve.run(app, name="lines", route_prefix="/lines")
    url = f"{scorer_url}/lines"
    client = redis.Redis.from_url(redis_server.url)
    try:
        fabric_v = read_card(fabric["path"]).model_version
        pills_v = read_card(pills["path"]).model_version
        health = httpx.get(f"{url}/v1/health", timeout=30).json()
        assert health["model_version"] == fabric_v and health["line_models"] == {"pills": pills_v}
        keys = StreamKeys(prefix)
        lines = {k.decode(): v.decode() for k, v in client.hgetall(keys.line_models).items()}
        assert lines == {"*": fabric_v, "pills": pills_v}
        assert {v.decode() for v in client.zrange(keys.models, 0, -1)} == {fabric_v, pills_v}

        async def announced(line: str) -> str | None:
            async with aioredis.Redis.from_url(redis_server.url) as c:
                return await line_model_version(c, keys, line)

        assert asyncio.run(announced("pills")) == pills_v
        assert asyncio.run(announced("cam9")) == fabric_v

        grey, colour = fabric["test"].images[:6], pills["test"].images[:4]
        expected = {
            "cam1": score_images(load_checkpoint(fabric["path"]).model, grey).score,
            "pills": score_images(load_checkpoint(pills["path"]).model, colour).score,
        }
        tag = uuid.uuid4().hex[:6]
        for line, images in (("cam1", grey), ("pills", colour)):
            buf = io.BytesIO()
            batch = images.transpose(0, 2, 3, 1)
            np.save(buf, batch[..., 0] if batch.shape[-1] == 1 else batch)
            names = [f"{tag}-{line}-{j}" for j in range(len(images))]
            resp = httpx.post(f"{url}/v1/score", content=buf.getvalue(), timeout=120,
                              headers={"content-type": "application/x-npy"},
                              params={"line": line, "item_id": names})  # fmt: skip
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["n_failed"] == 0
            assert body["model_version"] == (pills_v if line == "pills" else fabric_v)
            got = [r["score"] for r in body["results"]]
            np.testing.assert_allclose(got, expected[line], rtol=1e-4, atol=1e-4)
        # A grey 64 x 64 image on the colour line does not fit its model: that item's error.
        buf = io.BytesIO()
        np.save(buf, grey[:1, 0])
        resp = httpx.post(f"{url}/v1/score", content=buf.getvalue(), timeout=60,
                          headers={"content-type": "application/x-npy"},
                          params={"line": "pills"})  # fmt: skip
        assert resp.status_code in (400, 422) or resp.json()["n_failed"] == 1, resp.text

        # Frames of both lines in one read: each scored by its line's model, in the stream.
        ids = []
        for j in range(3):
            for line, img in (("cam1", grey[j]), ("pills", colour[j])):
                item = f"{tag}-fr-{line}-{j}"
                png = io.BytesIO()
                pixels = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
                Image.fromarray(np.ascontiguousarray(pixels)).save(png, format="PNG")
                client.xadd(keys.frames, {"image": png.getvalue(), "line": line,
                                          "item_id": item})  # fmt: skip
                ids.append((item, line, j))
        deadline = time.monotonic() + 60
        seen: dict[str, dict[str, str]] = {}
        while not {i for i, _, _ in ids} <= set(seen) and time.monotonic() < deadline:
            for _, fields in client.xrange(keys.scores):
                f = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
                seen[f["item_id"]] = f
            time.sleep(0.2)
        for item, line, j in ids:
            f = seen[item]
            assert f["model_version"] == (pills_v if line == "pills" else fabric_v)
            assert float(f["score"]) == pytest.approx(float(expected[line][j]), abs=1e-3)
        assert client.xpending(keys.frames, FRAMES_GROUP)["pending"] == 0

        # A pills item's preview is rendered by the pills model, at its size.
        resp = httpx.post(f"{url}/v1/preview", json={"item_ids": [f"{tag}-pills-0"],
                                                      "scale": 1}, timeout=60)  # fmt: skip
        preview = resp.json()["previews"][0]
        assert preview["ok"] and preview["model_version"] == pills_v, preview
        original = Image.open(io.BytesIO(base64.b64decode(preview["images"]["original"])))
        assert original.size == (128, 128)
        # And its nearest normal items are the pills model's calibration items.
        resp = httpx.post(f"{url}/v1/explore", timeout=60, json={
            "kind": "neighbours", "item_id": f"{tag}-pills-0", "k": 3, "scale": 1})  # fmt: skip
        assert resp.status_code == 200, resp.text
        assert resp.json()["model_version"] == pills_v
    finally:
        serve.delete("lines")

"""Local defects on generated inspection images, through the real scorer (Ray Serve over HTTP,
Redis): detection floors on served scores and maps, and served numbers equal to ``evaluate``'s.

Three models, trained in-process for a few epochs with the settings ``vlaewatch train`` picks
for the data (a SpatialVLAE, Gaussian likelihood, local score): a grey texture, a grey object
and a colour object at 128 x 128.
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
from trainer.data import LabelledImages, Source, split_normal
from trainer.defaults import choose_model, choose_training
from trainer.inspection import good, make_split
from trainer.pipeline import DatasetInfo, train_model
from trainer.train import LoopContext, fit
from vlae.checkpoint import load_checkpoint, read_card
from vlae.score import score_images

# (category, image side, epochs): small enough for the test session, long enough for floors.
# The washer's corruptions land mostly on the part (``corrupt_on_part``, the default for an
# aligned part), whose fit is slower to find the misplaced washer and its scratches: at 100
# epochs they measured 0.45 and 0.87 (0.88 and 0.99 with uniform corruptions), at 200 0.87
# and 0.92; the default's 450 epochs for an aligned part give 1.00 and 0.97 in the inspection
# benchmark. With the blurred fill's noise put back (``trainer.corrupt.NOISELESS``) these
# short fits came out nearer their floors (fabric at 100 epochs: stain pixel AUROC 0.89; the
# washer at 200: 46 of 72 defects located, misplaced 0.73), so they train longer: 150 and 300.
MODELS = {"fabric": ("fabric", 64, 150), "washer": ("washer", 64, 300), "pill128": ("pill", 128, 2)}
N_TRAIN, N_GOOD, N_PER_DEFECT = 240, 40, 12


def _data(category: str, size: int) -> tuple[Source, Any]:
    train, test = make_split(category, n_train=N_TRAIN, n_test_good=N_GOOD,
                             n_test_per_defect=N_PER_DEFECT, size=size, seed=1)  # fmt: skip
    good = np.full(len(train), "good", dtype=object)
    return Source(
        category, LabelledImages(train, good), LabelledImages(test.images, test.labels)
    ), test


@pytest.fixture(scope="session")
def inspection(
    scorer_url: str, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, dict[str, Any]]]:
    """Each model of ``MODELS`` trained and served (route prefix ``/<name>``), with its test."""
    from ray import serve

    from scorer.app import Scorer
    from scorer.config import DeploymentConfig, ScorerConfig

    out: dict[str, dict[str, Any]] = {}
    for name, (category, size, epochs) in MODELS.items():
        src, test = _data(category, size)
        model_cfg, profile = choose_model(src.train.images)
        path = train_model(
            split_normal(src, ["good"]), model_cfg, choose_training(model_cfg, epochs=epochs),
            DatasetInfo(f"inspection:{category}"),
            lambda m, c, d: fit(m, c, d, LoopContext(log=lambda _: None)),
            {"kind": "in-process"}, out=tmp_path_factory.mktemp("inspection") / name,
            data_profile=profile.to_dict(),
        )  # fmt: skip
        cfg = ScorerConfig(checkpoint=str(path), redis_url=redis_server.url,
                           key_prefix=f"vlaewatch-{name}", consume_frames=False)  # fmt: skip
        options = DeploymentConfig(num_cpus=0.25).options()
        app = Scorer.options(user_config=cfg.model_dump(), **options).bind()  # type: ignore[attr-defined]
        serve.run(app, name=name, route_prefix=f"/{name}")
        out[name] = {"url": f"{scorer_url}/{name}", "path": path, "test": test}
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


# Floors (image AUROC, pixel AUROC; 0: none): what these fits with the defect head measured,
# less a margin for 12 images a defect (on one thread: fabric at 150 epochs: contamination
# 0.93 / 1.00, hole 1.00 / 1.00, scratch 0.91 / 0.98, stain 0.85 / 0.94, worn 0.95 / 1.00;
# the washer at 300: contamination 0.89 / 0.96, crack 1.00 / 1.00, hole 0.98 / 0.99,
# misplaced 0.72, scratch 0.98 / 1.00, stain 1.00 / 1.00). Without the head, fits measured
# washer contamination 0.79 / 0.83 and crack and fabric scratch pixel AUROC 0.88, under these
# floors; the whole-image score was at chance.
FLOORS = {
    "fabric": {"hole": (0.9, 0.95), "contamination": (0.8, 0.9), "scratch": (0.75, 0.9),
               "stain": (0.8, 0.9), "worn": (0.9, 0.9)},
    "washer": {"contamination": (0.8, 0.85), "crack": (0.9, 0.9), "hole": (0.85, 0.9),
               "misplaced": (0.65, 0.0), "scratch": (0.85, 0.9), "stain": (0.9, 0.9)},
}  # fmt: skip
# The misplaced washer is found through the KL term, at half weight beside the head (the
# default since the inspection benchmark chose it); the default's 450 epochs on 400 images
# give 1.00 in the benchmark, this 300-epoch fit on 240 images 0.72 (0.87 before the blurred
# fill kept its noise): the floor is there to catch a fall to chance.


@pytest.mark.parametrize("name", ["fabric", "washer"])
def test_served_scores_and_maps_find_local_defects(
    inspection: dict[str, dict[str, Any]], name: str
) -> None:
    model = inspection[name]
    card = read_card(model["path"])
    assert card.variant == "DenoisingSpatialVLAE" and card.score_kind == "local"
    assert card.data_profile is not None and card.data_profile["aligned"] is (name == "washer")
    scores, maps = _served(model["url"], model["test"].images)
    assert maps.shape == (len(scores), 64, 64) and maps.dtype == np.float32
    # The local score is the map's maximum, in the same units.
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(axis=1), rtol=1e-5)
    got = _aurocs(model["test"], scores, maps)
    for defect, (image_floor, pixel_floor) in FLOORS[name].items():
        image, pixel = got[defect]
        assert image >= image_floor and pixel >= pixel_floor, (defect, got)


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
# region's box overlaps the defect's mask): measured with the defect head, fabric 42 of 60
# detected, 41 of them located; the washer at 100 epochs with uniform corruptions 60 of 72
# and 55 (0.92: four misplaced washers, whose mask is partly where the part should have been,
# and a stain lit up elsewhere), at 200 with the default's 56 of 72 above the threshold.
LOCATED = {"fabric": (0.55, 0.9), "washer": (0.65, 0.85)}


@pytest.mark.parametrize("name", ["fabric", "washer"])
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


@pytest.mark.parametrize("name", ["fabric", "washer"])
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

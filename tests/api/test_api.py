"""The API as deployed: `vlaewatch api` (uvicorn) over HTTP, real Redis, the real scorer."""

from __future__ import annotations

import io
import json
import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import redis
from PIL import Image

from contract.records import Region, ScoreRecord
from scorer.publish import decode_map
from tests.conftest import API_KEYS
from tests.streams import entries_since, stream_end

OP = {"X-API-Key": API_KEYS["operator"]}
VIEW = {"X-API-Key": API_KEYS["viewer"]}


def _line() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def _publish(client: redis.Redis, line: str, scores: list[float], version: str,
             ids: list[str] | None = None) -> tuple[list[str], str]:  # fmt: skip
    """XADD score entries as a scorer would; returns item ids and the last entry id."""
    ids = ids or [f"{line}-{i}" for i in range(len(scores))]
    now = time.time()
    pipe = client.pipeline()
    for item_id, s in zip(ids, scores, strict=True):
        rec = ScoreRecord(item_id=item_id, line=line, ts_ingested=now, ts_scored=now, score=s,
                          recon=s - 1.0, kl=1.0, model_version=version)  # fmt: skip
        pipe.xadd("vlaewatch:scores", rec.to_fields())  # type: ignore[arg-type]
    last = pipe.execute()[-1]
    return ids, last.decode()


def _consumed(client: redis.Redis, last_id: str, group: str = "api", prefix: str = "vlaewatch",
              timeout: float = 30) -> None:  # fmt: skip
    """Wait until the group has read past ``last_id`` and acked everything."""

    def key(eid: str) -> tuple[int, int]:
        a, b = eid.split("-")
        return int(a), int(b)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for g in client.xinfo_groups(f"{prefix}:scores"):
            if g["name"].decode() == group:
                delivered = g["last-delivered-id"].decode()
                if key(delivered) >= key(last_id) and g["pending"] == 0:
                    return
        time.sleep(0.05)
    raise AssertionError(f"group {group} did not consume up to {last_id}")


def _score(scorer_url: str, images: np.ndarray, line: str, ids: list[str]) -> np.ndarray:
    """Score uint8 images through the real scorer; their scores in order."""
    buf = io.BytesIO()
    np.save(buf, images)
    resp = httpx.post(f"{scorer_url}/v1/score", content=buf.getvalue(),
                      headers={"content-type": "application/x-npy"},
                      params={"line": line, "item_id": ids}, timeout=120)  # fmt: skip
    assert resp.status_code == 200 and resp.json()["n_scored"] == len(ids), resp.text
    return np.array([x["score"] for x in resp.json()["results"]])


def _set_manual(api_url: str, line: str, value: float, why: str = "test") -> dict[str, Any]:
    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", headers=OP,
                   json={"line": line, "params": {"method": "manual", "threshold": value},
                         "why": why})  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


def _alerts(api_url: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of a filtered listing."""
    out, cursor = [], None
    while True:
        q = {**params, **({"cursor": cursor} if cursor else {})}
        r = httpx.get(f"{api_url}/v1/alerts", headers=VIEW, params=q)
        assert r.status_code == 200, r.text
        body = r.json()
        out += body["items"]
        cursor = body["next_cursor"]
        if not cursor:
            return out


def test_scores_become_alerts_exactly_above_the_threshold(
    api_url: str, client: redis.Redis, version: str, checkpoint: Path
) -> None:
    line = _line()
    _set_manual(api_url, line, 100.0)
    scores = [50.0, 100.0, 100.0001, 150.0, 99.99, 1e6]
    ids, last = _publish(client, line, scores, version)
    _consumed(client, last)
    alerts = {a["item_id"]: a for a in _alerts(api_url, line=line)}
    assert set(alerts) == {ids[2], ids[3], ids[5]}
    # p-values: the share of the model's normal calibration scores at least as high.
    cal = pd.read_csv(checkpoint / "calibration.csv")["score"].to_numpy()
    for item_id, a in alerts.items():
        s = scores[ids.index(item_id)]
        assert a["p_value"] == pytest.approx((1 + np.sum(cal >= s)) / (len(cal) + 1))
        assert a["threshold"] == 100.0 and a["state"] == "open" and a["model_version"] == version
    # The same items published again (a scorer retry) make no second alert.
    _, last = _publish(client, line, [scores[3], scores[5]], version, [ids[3], ids[5]])
    _consumed(client, last)
    assert len(_alerts(api_url, line=line)) == 3


def test_a_new_threshold_applies_to_the_next_item(
    api_url: str, client: redis.Redis, version: str
) -> None:
    line = _line()
    _set_manual(api_url, line, 100.0)
    _, last = _publish(client, line, [120.0], version, [f"{line}-a"])
    _consumed(client, last)
    _set_manual(api_url, line, 130.0)
    _, last = _publish(client, line, [120.0], version, [f"{line}-b"])
    _consumed(client, last)
    assert [a["item_id"] for a in _alerts(api_url, line=line)] == [f"{line}-a"]


def test_alert_workflow_filters_and_pagination(
    api_url: str, client: redis.Redis, version: str
) -> None:
    line = _line()
    _set_manual(api_url, line, 10.0)
    ids, last = _publish(client, line, [float(20 + i) for i in range(7)], version)
    _consumed(client, last)
    first = _alerts(api_url, line=line, limit=2)
    assert [a["item_id"] for a in first] == ids[::-1]  # newest first, every page, no repeats

    a, b = ids[0], ids[1]
    url = f"{api_url}/v1/alerts"
    r = httpx.post(f"{url}/{a}/acknowledge", headers=OP, json={"note": "looking"})
    assert r.status_code == 200 and r.json()["state"] == "acknowledged"
    r = httpx.post(f"{url}/{a}/acknowledge", headers=OP)
    assert r.status_code == 409 and "acknowledged" in r.json()["detail"]
    r = httpx.post(f"{url}/{a}/resolve", headers=OP, json={"note": "lens cleaned"})
    body = r.json()
    assert body["state"] == "resolved" and body["note"] == "lens cleaned"
    assert [e["action"] for e in body["events"]] == ["created", "acknowledged", "resolved"]
    assert body["events"][1]["who"] == "olga"
    r = httpx.post(f"{url}/{b}/label", headers=OP, json={"label": "false_alarm", "note": "glare"})
    assert r.status_code == 200 and r.json()["label"] == "false_alarm"
    r = httpx.post(f"{url}/{b}/label", headers=OP, json={"label": "maybe"})
    assert r.status_code == 422

    assert [x["item_id"] for x in _alerts(api_url, line=line, state="resolved")] == [a]
    assert [x["item_id"] for x in _alerts(api_url, line=line, label="false_alarm")] == [b]
    assert len(_alerts(api_url, line=line, unlabelled=True)) == 6
    got = _alerts(api_url, line=line, min_score=22, max_score=24)
    assert sorted(x["score"] for x in got) == [22.0, 23.0, 24.0]
    assert _alerts(api_url, line=line, since=time.time() + 60) == []
    r = httpx.get(f"{url}/{a}", headers=VIEW)
    assert r.status_code == 200 and r.json()["item_id"] == a
    r = httpx.get(f"{url}/nope-{line}", headers=VIEW)
    assert r.status_code == 404 and "no alert" in r.json()["detail"]
    r = httpx.get(url, headers=VIEW, params={"cursor": "garbage"})
    assert r.status_code == 422


def test_keys_and_roles(api_url: str) -> None:
    body = {"line": "default", "params": {"method": "manual", "threshold": 1.0}, "dry_run": True}
    url = f"{api_url}/v1/thresholds/calibrate"
    r = httpx.post(url, json=body, headers=VIEW)
    assert r.status_code == 403 and "viewer" in r.json()["detail"]
    r = httpx.post(url, json=body)
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    r = httpx.post(url, json=body, headers={"X-API-Key": "wrong-key-123"})
    assert r.status_code == 401
    assert httpx.get(f"{api_url}/v1/alerts", headers=VIEW).status_code == 200
    auth = {"Authorization": f"Bearer {API_KEYS['viewer']}"}
    assert httpx.get(f"{api_url}/v1/thresholds", headers=auth).status_code == 200
    assert httpx.post(f"{api_url}/v1/alerts/x-1/acknowledge", headers=VIEW).status_code == 403
    # Body limits: a calibration request is small; a huge one is refused before parsing.
    r = httpx.post(url, headers=OP, content=b"{" + b" " * 200_000 + b"}",
                   timeout=30)  # fmt: skip
    assert r.status_code == 413


def test_dry_run_changes_nothing_and_rollback_restores(api_url: str) -> None:
    line = _line()
    _set_manual(api_url, line, 100.0, why="first")
    _set_manual(api_url, line, 200.0, why="second")
    url = f"{api_url}/v1/thresholds"
    before = httpx.get(f"{url}/{line}/history", headers=VIEW).json()
    r = httpx.post(
        f"{url}/calibrate",
        headers=OP,
        json={"line": line, "params": {"method": "manual", "threshold": 5.0}, "dry_run": True},
    )
    assert r.status_code == 200 and r.json()["applied"] is False and r.json()["version"] is None
    assert httpx.get(f"{url}/{line}/history", headers=VIEW).json() == before
    assert httpx.get(f"{url}/{line}", headers=VIEW).json()["value"] == 200.0

    r = httpx.post(f"{url}/{line}/rollback", headers=OP, json={"why": "too few alerts"})
    assert r.status_code == 200, r.text
    assert r.json()["value"] == 100.0 and r.json()["version"] == 3
    assert r.json()["params"]["to_version"] == 1 and r.json()["who"] == "olga"
    assert httpx.get(f"{url}/{line}", headers=VIEW).json()["value"] == 100.0
    history = httpx.get(f"{url}/{line}/history", headers=VIEW).json()["versions"]
    assert [(h["version"], h["method"], h["why"]) for h in history] == [
        (3, "rollback", "too few alerts"),
        (2, "manual", "second"),
        (1, "manual", "first"),
    ]
    r = httpx.post(f"{url}/{line}/rollback", headers=OP, json={"to_version": 9})
    assert r.status_code == 422 and "no version 9" in r.json()["detail"]
    listing = httpx.get(url, headers=VIEW).json()
    assert listing["lines"][line]["value"] == 100.0


def test_fpr_calibration_holds_on_held_out_normal_images(
    api_url: str, scorer_url: str, digits: Any, version: str, client: redis.Redis
) -> None:
    line = _line()
    alpha = 0.1
    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", headers=OP, json={
        "line": line, "params": {"method": "fpr", "alpha": alpha, "confidence": 0.95},
        "model_version": version, "why": "first calibration"})  # fmt: skip
    assert r.status_code == 200, r.text
    result = r.json()
    far = result["false_alarm_rate"]
    assert far["n_calibration"] > 0 and far["low"] <= far["expected"] <= far["high"]
    assert far["expected"] <= alpha + 1 / (far["n_calibration"] + 1)

    # Held-out normal images (class 0 of the test split, never trained or calibrated on),
    # scored by the real scorer on this line: the API alerts on them at the realised rate.
    normal = digits.test.images[digits.test.labels.astype(str) == "0"][:, 0]
    ids = [f"{line}-{i}" for i in range(len(normal))]
    served = _score(scorer_url, normal, line, ids)
    last = client.xrevrange("vlaewatch:scores", count=1)[0][0].decode()
    _consumed(client, last)
    rate = len(_alerts(api_url, line=line)) / len(normal)
    assert far["low"] <= rate <= far["high"], (rate, far)
    assert rate == pytest.approx(np.mean(served > result["threshold"]))


def test_pixel_threshold_bounds_the_false_region_rate_on_held_out_normal_images(
    api_url: str, scorer_url: str, digits: Any, version: str
) -> None:
    # A pixel threshold: a normal image shows a region (any map pixel above it) with
    # probability alpha, calibrated on the normal calibration images' map maxima.
    line = _line()
    alpha = 0.05
    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", headers=OP, json={
        "line": line, "target": "pixel", "params": {"method": "fpr", "alpha": alpha},
        "model_version": version})  # fmt: skip
    assert r.status_code == 200, r.text
    result = r.json()
    far = result["false_alarm_rate"]
    assert result["target"] == "pixel" and result["applied"] and result["impact"] == []
    assert far["n_calibration"] > 0 and far["low"] <= far["expected"] <= far["high"]

    # Normal images never trained or calibrated on, scored by the real scorer with their maps.
    normal = digits.test.images[digits.test.labels.astype(str) == "0"][:, 0]
    buf = io.BytesIO()
    np.save(buf, normal)
    resp = httpx.post(f"{scorer_url}/v1/score", content=buf.getvalue(),
                      headers={"content-type": "application/x-npy"},
                      params={"line": line, "maps": "true"}, timeout=120)  # fmt: skip
    assert resp.status_code == 200, resp.text
    peaks = np.array([decode_map(x["anomaly_map"]).max() for x in resp.json()["results"]])
    rate = float(np.mean(peaks > result["threshold"]))
    assert far["low"] <= rate <= far["high"], (rate, far)

    # It is the line's pixel threshold, apart from its image threshold.
    url = f"{api_url}/v1/thresholds/{line}"
    got = httpx.get(url, headers=VIEW, params={"target": "pixel"}).json()
    assert got["target"] == "pixel" and got["value"] == result["threshold"]
    assert got["version"] == 1 and got["false_alarm_rate"] == far
    own = httpx.get(f"{api_url}/v1/thresholds/{line}/history", headers=VIEW).json()
    assert own["versions"] == []  # no image threshold of its own was set


def test_pixel_thresholds_are_versioned_and_rolled_back_like_image_thresholds(
    api_url: str,
) -> None:
    line = _line()
    url = f"{api_url}/v1/thresholds"
    _set_manual(api_url, line, 7.0)  # an image threshold: untouched by what follows
    for value in (3.0, 4.0):
        r = httpx.post(f"{url}/calibrate", headers=OP, json={
            "line": line, "target": "pixel",
            "params": {"method": "manual", "threshold": value}})  # fmt: skip
        assert r.status_code == 200 and r.json()["version"] is not None, r.text
    r = httpx.post(f"{url}/calibrate", headers=OP, json={
        "line": line, "target": "pixel", "params": {"method": "manual", "threshold": 9.0},
        "dry_run": True})  # fmt: skip
    assert r.status_code == 200 and r.json()["applied"] is False
    pixel = {"target": "pixel"}
    assert httpx.get(f"{url}/{line}", headers=VIEW, params=pixel).json()["value"] == 4.0

    r = httpx.post(f"{url}/{line}/rollback", headers=OP, json={"target": "pixel"})
    assert r.status_code == 200 and r.json()["value"] == 3.0 and r.json()["version"] == 3
    history = httpx.get(f"{url}/{line}/history", headers=VIEW, params=pixel).json()["versions"]
    assert [(h["version"], h["value"], h["target"]) for h in history] == [
        (3, 3.0, "pixel"), (2, 4.0, "pixel"), (1, 3.0, "pixel")]  # fmt: skip
    assert httpx.get(url, headers=VIEW, params=pixel).json()["lines"][line]["value"] == 3.0
    image = httpx.get(f"{url}/{line}", headers=VIEW).json()
    assert image["value"] == 7.0 and image["target"] == "image" and image["version"] == 1

    r = httpx.post(f"{url}/calibrate", headers=OP, json={
        "line": line, "target": "pixel",
        "params": {"method": "labels", "all_lines": False}})  # fmt: skip
    assert r.status_code == 422 and "label" in r.json()["detail"]  # no region marked here
    r = httpx.get(f"{url}/{line}", headers=VIEW, params={"target": "region"})
    assert r.status_code == 422


def test_regions_reach_the_stream_the_alert_and_the_live_stream(
    api_url: str, scorer_url: str, digits: Any, version: str, client: redis.Redis
) -> None:
    # A line with a pixel threshold: every item scored on it carries the regions of its map
    # above it, into the score stream, the alert and the SSE event.
    line = _line()
    start = stream_end(client, "vlaewatch:scores")
    _set_manual(api_url, line, -1e9)  # every item alerts
    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", headers=OP, json={
        "line": line, "target": "pixel", "params": {"method": "fpr", "alpha": 0.05},
        "model_version": version})  # fmt: skip
    pixel = r.json()["threshold"]
    time.sleep(1.1)  # the scorer rereads pixel thresholds at most once a second
    events: list[dict[str, Any]] = []
    ready = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{api_url}/v1/stream", headers=VIEW, params={"line": line},
                          timeout=60) as resp:  # fmt: skip
            for text in resp.iter_lines():
                if text.startswith(":"):
                    ready.set()
                if text.startswith("data:"):
                    events.append(json.loads(text[5:]))
                    if len(events) == 12:
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(10)
    anomalous = digits.test.images[digits.test.labels.astype(str) != "0"][:12, 0]
    ids = [f"{line}-{i}" for i in range(len(anomalous))]
    buf = io.BytesIO()
    np.save(buf, anomalous)
    resp = httpx.post(
        f"{scorer_url}/v1/score",
        content=buf.getvalue(),
        headers={"content-type": "application/x-npy"},
        params={"line": line, "item_id": ids, "maps": "true"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    served = {x["item_id"]: x for x in resp.json()["results"]}
    for x in served.values():  # the regions are those of the map answered with them
        found = decode_map(x["anomaly_map"]) > pixel
        assert x["pixel_threshold"] == pixel and x["defect_area"] == pytest.approx(found.mean())
        assert (len(x["regions"]) > 0) == bool(found.any())
        assert all(rg["peak"] > pixel for rg in x["regions"])
    assert any(x["regions"] for x in served.values())
    entries = {e[b"item_id"].decode(): e
               for _, e in entries_since(client, "vlaewatch:scores", start)
               if e[b"line"].decode() == line}  # fmt: skip
    assert set(entries) == set(ids)
    last = client.xrevrange("vlaewatch:scores", count=1)[0][0].decode()
    _consumed(client, last)
    t.join(30)
    alerts = {a["item_id"]: a for a in _alerts(api_url, line=line)}
    pushed = {e["item_id"]: e for e in events}
    for item_id, x in served.items():
        record = ScoreRecord.from_fields(entries[item_id])
        assert [rg.model_dump() for rg in record.regions or []] == x["regions"]
        for got in (alerts[item_id], pushed[item_id]):
            assert got["regions"] == x["regions"] and got["pixel_threshold"] == pixel
            assert got["defect_area"] == pytest.approx(x["defect_area"])
    # Filtered on area: the alerts whose defect covers at least the median share.
    cut = float(np.median([x["defect_area"] for x in served.values()]))
    large = _alerts(api_url, line=line, min_area=cut)
    assert {a["item_id"] for a in large} == {i for i, x in served.items()
                                              if x["defect_area"] >= cut}  # fmt: skip
    assert len(large) < len(served)


def test_region_labels_tune_the_pixel_threshold(
    api_url: str, client: redis.Redis, version: str
) -> None:
    # Alerts whose one region peaks at 1..6; an operator marks the low three wrong (nothing
    # there) and the high three right. Method labels on target pixel puts the pixel threshold
    # between them.
    line = _line()
    _set_manual(api_url, line, -1e9)
    now = time.time()
    pipe = client.pipeline()
    ids = [f"{line}-{i}" for i in range(6)]
    for i, item_id in enumerate(ids):
        rec = ScoreRecord(item_id=item_id, line=line, ts_ingested=now, ts_scored=now, score=1.0,
                          recon=1.0, kl=0.0, model_version=version, pixel_threshold=0.5,
                          defect_area=0.01, regions=[Region(x=1, y=2, w=3, h=4, area=9,
                                                            peak=i + 1.0)])  # fmt: skip
        pipe.xadd("vlaewatch:scores", rec.to_fields())  # type: ignore[arg-type]
    last = pipe.execute()[-1].decode()
    _consumed(client, last)
    url = f"{api_url}/v1/alerts"
    for i, item_id in enumerate(ids):
        verdict = "right" if i >= 3 else "wrong"
        r = httpx.post(f"{url}/{item_id}/regions/0/label", headers=OP,
                       json={"verdict": verdict, "note": "checked"})  # fmt: skip
        assert r.status_code == 200, r.text
        event = r.json()["events"][-1]
        assert (event["action"], event["region"], event["verdict"], event["who"]) == (
            "region labelled", 0, verdict, "olga")  # fmt: skip
    r = httpx.post(f"{url}/{ids[0]}/regions/1/label", headers=OP, json={"verdict": "right"})
    assert r.status_code == 422 and "no region 1" in r.json()["detail"]
    r = httpx.post(f"{url}/{ids[0]}/regions/0/label", headers=VIEW, json={"verdict": "right"})
    assert r.status_code == 403

    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", headers=OP, json={
        "line": line, "target": "pixel", "dry_run": True,
        "params": {"method": "labels", "objective": "f1", "all_lines": False}})  # fmt: skip
    assert r.status_code == 200, r.text
    got = r.json()
    assert 3.0 <= got["threshold"] < 4.0 and got["label_quality"]["f1"] == 1.0
    assert got["label_quality"]["n_anomaly"] == 3 and got["label_quality"]["n_normal"] == 3


def test_labels_calibration_finds_the_best_f1_threshold(
    api_url: str, scorer_url: str, digits: Any, client: redis.Redis
) -> None:
    line = _line()
    _set_manual(api_url, line, 1e9)  # no alerts: every item is labelled through /v1/items
    test = digits.test
    pick = np.r_[np.flatnonzero(test.labels.astype(str) == "0")[:30],
                 np.flatnonzero(test.labels.astype(str) != "0")[:30]]  # fmt: skip
    images, truth = test.images[pick][:, 0], test.labels[pick].astype(str) != "0"
    ids = [f"{line}-{i}" for i in range(len(pick))]
    scores = _score(scorer_url, images, line, ids)
    for item_id, is_anomaly in zip(ids, truth, strict=True):
        label = "anomaly" if is_anomaly else "normal"
        r = httpx.post(f"{api_url}/v1/items/{item_id}/label", headers=OP, json={"label": label})
        assert r.status_code == 200, r.text
    r = httpx.post(f"{api_url}/v1/items/never-{line}/label", headers=OP, json={"label": "normal"})
    assert r.status_code == 404

    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", headers=OP, json={
        "line": line, "params": {"method": "labels", "objective": "f1", "all_lines": False},
        "dry_run": True})  # fmt: skip
    assert r.status_code == 200, r.text
    got = r.json()
    best = 0.0
    for t in scores:  # brute force over every cut
        pred = scores > t - 1e-9
        tp = np.sum(pred & truth)
        best = max(best, 2 * tp / (pred.sum() + truth.sum()))
    assert got["label_quality"]["f1"] == pytest.approx(best)
    pred = scores > got["threshold"]
    assert 2 * np.sum(pred & truth) / (pred.sum() + truth.sum()) == pytest.approx(best)
    assert got["label_quality"]["n_anomaly"] == 30 and got["label_quality"]["n_normal"] == 30


def test_dry_run_counts_alerts_per_line_over_the_window(
    api_url: str, client: redis.Redis, version: str
) -> None:
    line = _line()
    _set_manual(api_url, line, 100.0)
    _, last = _publish(client, line, [50.0, 90.0, 110.0, 130.0], version)
    _consumed(client, last)
    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", headers=OP, json={
        "line": line, "params": {"method": "manual", "threshold": 80.0}, "dry_run": True,
        "window_s": 600})  # fmt: skip
    impact = r.json()["impact"]
    assert impact == [{"line": line, "items": 4, "alerts_now": 2, "alerts_new": 3,
                       "rate_now": 0.5, "rate_new": 0.75}]  # fmt: skip


def test_previews_are_pngs_rendered_by_the_scorer_and_cached(
    api_url: str, scorer_url: str, digits: Any
) -> None:
    item = f"p{uuid.uuid4().hex[:8]}"
    _score(scorer_url, digits.test.images[:1, 0], "cam9", [item])
    url = f"{api_url}/v1/items/{item}/preview.png"
    pngs = {}
    for kind in ("original", "reconstruction", "denoised", "error", "panel", "overlay"):
        resp = httpx.get(url, headers=VIEW, params={"kind": kind}, timeout=60)
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(resp.content)) as im:
            im.verify()
        with Image.open(io.BytesIO(resp.content)) as im:
            pngs[kind] = np.asarray(im.convert("L"))
        assert resp.headers["x-cache"] == ("miss" if kind == "original" else "hit")
    assert pngs["original"].shape == pngs["reconstruction"].shape == (112, 112)
    assert not np.array_equal(pngs["original"], pngs["reconstruction"])
    assert pngs["panel"].shape[1] > 4 * 112
    missing = httpx.get(f"{api_url}/v1/items/gone-{item}/preview.png", headers=VIEW)
    assert missing.status_code == 404 and "retention" in missing.json()["detail"]
    bad = httpx.get(url, headers=VIEW, params={"kind": "xray"})
    assert bad.status_code == 422


def test_overlay_outlines_the_regions_beside_the_repaired_part(
    api_url: str, scorer_url: str, digits: Any
) -> None:
    # Two lines: one with a pixel threshold (its items' regions are outlined in cyan), one
    # without (the map alone). The overlay is the part with its map, beside the denoised one.
    outlined, plain = _line(), _line()
    r = httpx.post(f"{api_url}/v1/thresholds/calibrate", headers=OP, json={
        "line": outlined, "target": "pixel", "params": {"method": "sigma", "k": 0}})  # fmt: skip
    assert r.status_code == 200, r.text
    time.sleep(1.1)  # the scorer rereads pixel thresholds at most once a second
    image = digits.test.images[digits.test.labels.astype(str) != "0"][:1, 0]
    overlays = {}
    for line in (outlined, plain):
        item = f"{line}-o"
        _score(scorer_url, image, line, [item])
        resp = httpx.get(f"{api_url}/v1/items/{item}/preview.png", headers=VIEW,
                         params={"kind": "overlay", "scale": 1}, timeout=60)  # fmt: skip
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(resp.content)) as im:
            overlays[line] = np.asarray(im.convert("RGB"))
    assert overlays[outlined].shape == (28, 2 * 28 + 1, 3)  # part | gap | repaired part
    cyan = (overlays[outlined] == [0, 255, 255]).all(axis=-1)
    assert cyan[:, :28].any() and not cyan[:, 28:].any()
    assert not (overlays[plain] == [0, 255, 255]).all(axis=-1).any()


def test_stream_pushes_new_alerts(api_url: str, client: redis.Redis, version: str) -> None:
    line = _line()
    _set_manual(api_url, line, 10.0)
    events: list[dict[str, Any]] = []
    ready = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{api_url}/v1/stream", headers=VIEW, params={"line": line},
                          timeout=30) as resp:  # fmt: skip
            assert resp.headers["content-type"].startswith("text/event-stream")
            for text in resp.iter_lines():
                if text.startswith(":"):
                    ready.set()
                if text.startswith("data:"):
                    events.append(json.loads(text[5:]))
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(10)
    ids, _ = _publish(client, line, [50.0], version)
    t.join(20)
    assert [e["item_id"] for e in events] == ids and events[0]["score"] == 50.0


def test_stats_and_metrics(api_url: str, client: redis.Redis, version: str) -> None:
    line = _line()
    _set_manual(api_url, line, 100.0)
    _, last = _publish(client, line, [10.0, 20.0, 30.0, 200.0], version)
    _consumed(client, last)
    r = httpx.get(f"{api_url}/v1/stats", headers=VIEW, params={"line": line, "window_s": 600})
    rows = r.json()["rows"]
    assert len(rows) == 1 and rows[0]["items"] == 4 and rows[0]["alerts"] == 1
    assert rows[0]["alert_rate"] == 0.25 and rows[0]["score_max"] == 200.0
    assert rows[0]["score_p50"] == pytest.approx(25.0)
    csv = httpx.get(f"{api_url}/v1/stats", headers=VIEW,
                    params={"line": line, "window_s": 600, "format": "csv"})  # fmt: skip
    assert csv.headers["content-type"].startswith("text/csv")
    table = pd.read_csv(io.StringIO(csv.text))
    assert table.loc[0, "items"] == 4 and table.loc[0, "line"] == line

    text = httpx.get(f"{api_url}/metrics").text
    assert f'vlaewatch_items_scored_total{{line="{line}"}} 4.0' in text
    assert f'vlaewatch_alerts_total{{line="{line}"}} 1.0' in text
    assert f'vlaewatch_score_count{{line="{line}"}} 4.0' in text
    assert "vlaewatch_consumer_pending 0.0" in text
    assert "vlaewatch_consumer_lag " in text
    assert 'vlaewatch_calibrations_total{applied="true",method="manual"}' in text
    assert 'route="/v1/stats"' in text  # latency by route template
    values = dict(ln.rsplit(" ", 1) for ln in text.splitlines() if ln and ln[0] != "#")
    assert not math.isnan(float(values["vlaewatch_consumer_lag_seconds"]))


def test_malformed_score_entries_are_dead_lettered_and_acked(
    api_url: str, client: redis.Redis
) -> None:
    line = _line()
    start = stream_end(client, "vlaewatch:deadletter")
    eid = client.xadd("vlaewatch:scores", {"item_id": f"{line}-x", "line": line,
                                           "score": "not-a-number"}).decode()  # fmt: skip
    _consumed(client, eid)
    dead = [f for _, f in entries_since(client, "vlaewatch:deadletter", start)
            if f.get(b"frame_id", b"").decode() == eid]  # fmt: skip
    assert len(dead) == 1 and dead[0][b"source"] == b"scores"
    assert b"score" in dead[0][b"reason"]


def test_openapi_documents_every_route_with_models(api_url: str) -> None:
    spec = httpx.get(f"{api_url}/openapi.json").json()
    for path in ("/v1/alerts", "/v1/thresholds/calibrate", "/v1/items/{item_id}/preview.png",
                 "/v1/stats", "/v1/stream", "/metrics"):  # fmt: skip
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    ours = {k: v for k, v in schemas.items() if "ValidationError" not in k}  # FastAPI's own
    assert {k for k, v in ours.items() if "examples" not in v} == set()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("description") or op.get("summary"), (method, path)


def test_histogram_puts_calibration_and_live_scores_on_shared_bins(
    api_url: str, client: redis.Redis, version: str, checkpoint: Path
) -> None:
    line = _line()
    _set_manual(api_url, line, 150.0)
    _, last = _publish(client, line, [120.0, 130.0, 140.0, 1e7], version)
    _consumed(client, last)
    params = {"window_s": 600, "bins": 20, "model_version": version}
    body = httpx.get(f"{api_url}/v1/scores/histogram", headers=VIEW, params=params).json()
    cal = pd.read_csv(checkpoint / "calibration.csv")["score"]
    assert len(body["edges"]) == 21 and sum(body["calibration"]) == len(cal)
    assert sum(body["lines"][line]) + body["overflow"][line] == 4
    assert body["overflow"][line] >= 1  # the far outlier does not stretch the bins
    assert body["thresholds"][line] == 150.0 and body["model_version"] == version
    me = httpx.get(f"{api_url}/v1/me", headers=VIEW).json()
    assert me == {"name": "victor", "role": "viewer"}

"""The pieces of ``vlaewatch demo`` that are not training or deploying: the API in a thread of
this process, the ingestion client that streams test images at a steady rate, the listener that
times alerts as the API shows them, and the summary."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import uvicorn

from api.config import ApiConfig


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


class ApiThread:
    """uvicorn serving the API app in a daemon thread (signals stay with the main thread)."""

    def __init__(self, cfg: ApiConfig, host: str, port: int) -> None:
        from api.app import ApiServer, create_app

        app = create_app(cfg)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                timeout_graceful_shutdown=2)  # fmt: skip
        self.server = ApiServer(config, app)
        self.thread = threading.Thread(target=self.server.run, name="api", daemon=True)
        self.url = f"http://{host}:{port}"

    def start(self, timeout_s: float = 30) -> ApiThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise DemoError(f"the API did not start on {self.url} (port in use?)")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class AlertListener:
    """Reads ``/v1/stream`` and notes when each alert became visible."""

    def __init__(self, api_url: str, headers: dict[str, str]) -> None:
        self.url = f"{api_url}/v1/stream"
        self.headers = headers
        self.seen: dict[str, tuple[float, dict[str, Any]]] = {}
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._resp: httpx.Response | None = None
        self.thread = threading.Thread(target=self._run, name="alerts", daemon=True)

    def start(self) -> AlertListener:
        self.thread.start()
        if not self.ready.wait(15):
            raise DemoError("could not subscribe to the API's alert stream")
        return self

    def _run(self) -> None:
        timeout = httpx.Timeout(10, read=None)
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=timeout) as resp:
                self._resp = resp
                for text in resp.iter_lines():
                    if text.startswith(":"):
                        self.ready.set()
                    elif text.startswith("data:"):
                        alert = json.loads(text[5:])
                        self.seen.setdefault(alert["item_id"], (time.time(), alert))
        except Exception as exc:  # closing from stop() raises whatever the read was doing
            if not self._stop.is_set():  # else: the demo is stopping, as asked
                print(f"alert stream closed: {exc}", file=sys.stderr)

    def stop(self) -> None:
        """Hang up, so the API's shutdown does not wait for this open stream."""
        self._stop.set()
        if self._resp is not None:
            self._resp.close()
        self.thread.join(5)


def as_sent(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) images as a line sends them in an NPY body: N x H x W for grey,
    N x H x W x C for colour."""
    return images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)


@dataclass(frozen=True)
class LinePart:
    """What one camera line of the demo sends: its images (uint8 N x H x W[x C], as on the
    wire), their true labels and, for generated parts, where each defect is."""

    line: str
    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None  # bool N x H x W; None: no ground truth of where


@dataclass
class Streamed:
    """What the ingestion client sent and got back, one entry per scored item."""

    item_ids: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    regions: list[list[dict[str, Any]]] = field(default_factory=list)  # as scored
    maps: list[np.ndarray] = field(default_factory=list)  # with ``maps``: each anomaly map
    where: list[tuple[int, int]] = field(default_factory=list)  # (part, index in it)
    failed: int = 0
    seconds: float = 0.0


def _turns(parts: list[LinePart], batch: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """(part, image indices) per request: each part shuffled, the lines taking turns."""
    rng = np.random.default_rng(seed)
    queues = [rng.permutation(len(p.images)) for p in parts]
    turns, lo = [], 0
    while any(lo < len(q) for q in queues):
        turns += [(k, q[lo : lo + batch]) for k, q in enumerate(queues) if lo < len(q)]
        lo += batch
    return turns


def stream_lines(
    scorer_url: str,
    parts: list[LinePart],
    rate: float,
    batch: int,
    run_id: str,
    progress: Any,
    maps: bool = False,
    seed: int = 0,
    headers: dict[str, str] | None = None,
) -> Streamed:
    """POST each line's images, shuffled, ``batch`` at a time, at ``rate`` images/s in all,
    the lines taking turns; ``maps`` asks for each item's anomaly map too; ``headers``
    carries an ``ingest`` key when the scorer has keys."""
    from scorer.publish import decode_map

    out = Streamed()
    total, sent = sum(len(p.images) for p in parts), 0
    start = time.monotonic()
    with httpx.Client(timeout=60) as http:
        for k, idx in _turns(parts, batch, seed):
            part = parts[k]
            ids = [f"{run_id}-{part.line}-{i}" for i in idx]
            buf = io.BytesIO()
            np.save(buf, part.images[idx])
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
            sent += len(idx)
            resp = http.post(f"{scorer_url}/v1/score", content=buf.getvalue(),
                             headers={"content-type": "application/x-npy", **(headers or {})},
                             params={"line": part.line, "item_id": ids,
                                     "maps": str(maps).lower()})  # fmt: skip
            if resp.status_code != 200:
                raise DemoError(f"the scorer answered {resp.status_code}: {resp.text[:300]}")
            for i, result in zip(idx, resp.json()["results"], strict=True):
                if not result["ok"]:
                    out.failed += 1
                    continue
                out.item_ids.append(result["item_id"])
                out.lines.append(part.line)
                out.labels.append(str(part.labels[i]))
                out.scores.append(float(result["score"]))
                out.regions.append(result.get("regions") or [])
                out.where.append((k, int(i)))
                if maps:
                    out.maps.append(decode_map(result["anomaly_map"]))
            progress(len(out.item_ids) + out.failed, total)
    out.seconds = time.monotonic() - start
    return out


def wait_consumed(api_url: str, timeout_s: float = 60) -> None:
    """Until the API's consumer group has read and acknowledged everything."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = httpx.get(f"{api_url}/v1/health", timeout=5).json()
        if health.get("lag") == 0 and health.get("pending") == 0:
            return
        time.sleep(0.2)
    raise DemoError("the API did not consume the score stream in time")


def summary(
    streamed: Streamed,
    alerted: dict[str, tuple[float, dict[str, Any]]],
    normal: list[str],
) -> dict[str, Any]:
    """Counts, alert quality against the true labels, AUROC, throughput and latency."""
    from sklearn.metrics import roc_auc_score

    is_anomaly = np.array([lb not in normal for lb in streamed.labels])
    flagged = np.array([i in alerted for i in streamed.item_ids])
    tp = int(np.sum(flagged & is_anomaly))
    latencies = np.array([seen - a["ts_ingested"] for seen, a in alerted.values()]) * 1000
    both = 0 < is_anomaly.sum() < len(is_anomaly)
    by_line: dict[str, int] = {}
    for line, hit in zip(streamed.lines, flagged, strict=True):
        by_line[line] = by_line.get(line, 0) + int(hit)
    return {
        "items_scored": len(streamed.item_ids),
        "items_failed": streamed.failed,
        "items_normal": int(np.sum(~is_anomaly)),
        "items_anomalous": int(np.sum(is_anomaly)),
        "alerts": int(flagged.sum()),
        "alerts_by_line": by_line,
        "alerts_on_normal": int(np.sum(flagged & ~is_anomaly)),
        "alerts_on_anomalies": tp,
        "precision": tp / int(flagged.sum()) if flagged.any() else None,
        "recall": tp / int(is_anomaly.sum()) if is_anomaly.any() else None,
        "auroc": float(roc_auc_score(is_anomaly, streamed.scores)) if both else None,
        "images_per_s": len(streamed.item_ids) / streamed.seconds if streamed.seconds else None,
        "latency_ms_p50": float(np.percentile(latencies, 50)) if len(latencies) else None,
        "latency_ms_p99": float(np.percentile(latencies, 99)) if len(latencies) else None,
    }


def _overlaps(region: dict[str, Any], mask: np.ndarray) -> bool:
    """Whether a region's box covers any pixel of a defect mask."""
    y, x = int(region["y"]), int(region["x"])
    return bool(mask[y : y + int(region["h"]), x : x + int(region["w"])].any())


def where_summary(
    streamed: Streamed,
    parts: list[LinePart],
    alerted: dict[str, tuple[float, dict[str, Any]]],
    normal: list[str],
    pixel: dict[str, dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Per line with defect masks: detection (image and pixel AUROC, recall and precision of
    its alerts), localisation (the share of alerts on defective parts whose largest region
    overlaps the defect's mask) and the false-region rate on good parts beside the target
    its pixel calibration (``pixel[line]``, the calibration answer) promised."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, dict[str, Any]] = {}
    for k, part in enumerate(parts):
        if part.masks is None:
            continue
        mine = [j for j, (p, _) in enumerate(streamed.where) if p == k]
        bad = np.array([streamed.labels[j] not in normal for j in mine])
        flagged = np.array([streamed.item_ids[j] in alerted for j in mine])
        scores = np.array([streamed.scores[j] for j in mine])
        masks = part.masks[[streamed.where[j][1] for j in mine]]
        located = [
            _overlaps(regions[0], mask)
            for j, mask, is_bad in zip(mine, masks, bad, strict=True)
            if is_bad and (regions := alerted.get(streamed.item_ids[j], (0, {}))[1].get("regions"))
        ]
        on_defects = int(np.sum(flagged & bad))
        good_regions = [bool(streamed.regions[j]) for j, b in zip(mine, bad, strict=True) if not b]
        both = 0 < bad.sum() < len(bad)
        pixel_auroc = None
        if streamed.maps and both:
            maps = np.stack([streamed.maps[j] for j in mine])
            pixel_auroc = float(roc_auc_score(masks.ravel(), maps.ravel()))
        cal = pixel.get(part.line, {})
        far = cal.get("false_alarm_rate") or {}
        out[part.line] = {
            "items": len(mine),
            "defective": int(bad.sum()),
            "alerts": int(flagged.sum()),
            "image_auroc": float(roc_auc_score(bad, scores)) if both else None,
            "pixel_auroc": pixel_auroc,
            "recall": on_defects / int(bad.sum()) if bad.any() else None,
            "precision": on_defects / int(flagged.sum()) if flagged.any() else None,
            "localisation_hit_rate": sum(located) / len(located) if located else None,
            "alerts_located": f"{sum(located)} of {on_defects}",
            "false_region_rate": sum(good_regions) / len(good_regions) if good_regions else None,
            "false_region_target": cal.get("alpha"),
            "false_region_interval": [far.get("low"), far.get("high")],
        }
    return out


def progress_printer(label: str) -> Any:
    """A one-line progress display on stderr, redrawn in place."""
    last = [0.0]

    def show(done: int, total: int, extra: str = "") -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.5:
            return
        last[0] = now
        filled = round(20 * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(f"\r[{'#' * filled}{'.' * (20 - filled)}] {label} {done}/{total} {extra}",
              end=end, file=sys.stderr, flush=True)  # fmt: skip

    return show

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
        from api.app import create_app

        config = uvicorn.Config(create_app(cfg), host=host, port=port, log_level="warning",
                                timeout_graceful_shutdown=2)  # fmt: skip
        self.server = uvicorn.Server(config)
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
                for text in resp.iter_lines():
                    if text.startswith(":"):
                        self.ready.set()
                    elif text.startswith("data:"):
                        alert = json.loads(text[5:])
                        self.seen.setdefault(alert["item_id"], (time.time(), alert))
        except httpx.HTTPError as exc:
            if not self._stop.is_set():  # else: the API is shutting down, as asked
                print(f"alert stream closed: {exc}", file=sys.stderr)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Streamed:
    """What the ingestion client sent and got back."""

    item_ids: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    failed: int = 0
    seconds: float = 0.0


def stream_images(
    scorer_url: str,
    images: np.ndarray,
    labels: np.ndarray,
    lines: list[str],
    rate: float,
    batch: int,
    run_id: str,
    progress: Any,
    seed: int = 0,
) -> Streamed:
    """POST the images, shuffled, ``batch`` at a time at ``rate`` images/s, each batch on the
    next line id in turn."""
    order = np.random.default_rng(seed).permutation(len(images))
    out = Streamed()
    start = time.monotonic()
    with httpx.Client(timeout=60) as http:
        for n, lo in enumerate(range(0, len(order), batch)):
            idx = order[lo : lo + batch]
            line = lines[n % len(lines)]
            ids = [f"{run_id}-{line}-{i}" for i in idx]
            buf = io.BytesIO()
            np.save(buf, images[idx])
            due = start + lo / rate
            time.sleep(max(0.0, due - time.monotonic()))
            resp = http.post(f"{scorer_url}/v1/score", content=buf.getvalue(),
                             headers={"content-type": "application/x-npy"},
                             params={"line": line, "item_id": ids})  # fmt: skip
            if resp.status_code != 200:
                raise DemoError(f"the scorer answered {resp.status_code}: {resp.text[:300]}")
            for i, result in zip(idx, resp.json()["results"], strict=True):
                if not result["ok"]:
                    out.failed += 1
                    continue
                out.item_ids.append(result["item_id"])
                out.lines.append(line)
                out.labels.append(str(labels[i]))
                out.scores.append(float(result["score"]))
            progress(len(out.item_ids) + out.failed, len(order))
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

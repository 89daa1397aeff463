"""The demo's camera lines: what each sends, and the ingestion client that streams their
images to the scorer at a steady rate."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from vlaewatch.cli.demo_api import DemoError


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
    progress: Callable[[int, int], None],
    maps: bool = False,
    seed: int = 0,
    headers: dict[str, str] | None = None,
) -> Streamed:
    """POST each line's images, shuffled, ``batch`` at a time, at ``rate`` images/s in all,
    the lines taking turns; ``maps`` asks for each item's anomaly map too; ``headers``
    carries an ``ingest`` key when the scorer has keys."""
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
            _record(out, k, part, idx, resp.json()["results"], maps)
            progress(len(out.item_ids) + out.failed, total)
    out.seconds = time.monotonic() - start
    return out


def _record(
    out: Streamed, k: int, part: LinePart, idx: np.ndarray, results: list[dict[str, Any]],
    maps: bool,
) -> None:  # fmt: skip
    """Note one answer of the scorer: each item scored, or failed."""
    from scorer.publish import decode_map

    for i, result in zip(idx, results, strict=True):
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

"""What the demo found: alert quality against the true labels, throughput and latency, and per
line with defect masks, detection and localisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlaewatch.cli.console import err
from vlaewatch.cli.demo_stream import LinePart, Streamed

Alerted = dict[str, tuple[float, dict[str, Any]]]  # item id -> (seen at, the alert)


def summary(streamed: Streamed, alerted: Alerted, normal: list[str]) -> dict[str, Any]:
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
    alerted: Alerted,
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


COLUMNS = ("line", "images", "defective", "alerts", "on normal", "precision", "recall",
           "image AUROC", "pixel AUROC", "located")  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_summary(result: dict[str, Any], full: Path) -> None:
    """The summary in brief on stderr: speed, a row a line and one for all, where to look;
    every figure is in ``full``."""
    whole = {k: "-" if result[k] is None else f"{result[k]:.0f}"
             for k in ("images_per_s", "latency_ms_p50", "latency_ms_p99")}  # fmt: skip
    err(
        f"[6/6] summary: {result['items_scored']} images at {whole['images_per_s']}/s, alert "
        f"latency p50 {whole['latency_ms_p50']} ms, p99 {whole['latency_ms_p99']} ms"
    )
    rows = [[line, f["items"], f["defective"], f["alerts"], None, f["precision"], f["recall"],
             f["image_auroc"], f["pixel_auroc"], f["alerts_located"]]
            for line, f in result["lines"].items()]  # fmt: skip
    rows.append(["all", result["items_scored"], result["items_anomalous"], result["alerts"],
                 result["alerts_on_normal"], result["precision"], result["recall"],
                 result["auroc"], None, None])  # fmt: skip
    table = [list(COLUMNS)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[k]) for row in table) for k in range(len(COLUMNS))]
    for row in table:
        cells = [c.rjust(w) for c, w in zip(row, widths, strict=True)]
        cells[0] = row[0].ljust(widths[0])
        err("      " + "  ".join(cells))
    urls = result["urls"]
    err(f"      console {urls['console']} (API docs {urls['api_docs']}); scorer {urls['scorer']}")
    err(f"      every figure: {full}")

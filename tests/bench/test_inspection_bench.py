"""The inspection benchmark end to end on a tiny run: its report, and the checkpoint it keeps."""

from __future__ import annotations

import json
from pathlib import Path

from bench.inspection import main
from vlae.checkpoint import load_checkpoint, read_card


def test_a_tiny_run_reports_each_defect_and_keeps_its_checkpoint(tmp_path: Path) -> None:
    out, keep = tmp_path / "results", tmp_path / "models"
    assert main(["--categories", "washer", "--size", "32", "--n-train", "40",
                 "--n-test-good", "8", "--n-test-per-defect", "4", "--epochs", "1",
                 "--baseline-epochs", "0", "--no-pyod", "--out", str(out),
                 "--keep", str(keep)]) == 0  # fmt: skip
    report = json.loads((out / "inspection.json").read_text())
    washer = report["categories"]["washer"]
    defects = {"contamination", "crack", "hole", "misplaced", "scratch", "stain"}
    assert set(washer["image_auroc"]["local"]) == defects
    assert set(washer["pixel_auroc"]) == defects
    assert all(0.0 <= v <= 1.0 for v in washer["image_auroc"]["local"].values())
    assert "keep" not in report["config"]  # a machine's folder stays out of the results
    # The kept checkpoint is the scored model: the default for the data, a card to read.
    card = read_card(keep / "washer")
    assert card.score_kind == "local" and card.variant == "DenoisingSpatialVLAE"
    assert load_checkpoint(keep / "washer").model.config.image_shape == (1, 32, 32)

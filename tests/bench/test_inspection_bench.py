"""The inspection benchmark end to end on a tiny run: its report, and the checkpoint it keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.inspection import main
from tests.figures import assert_recomputed
from trainer.inspection import make_split
from vlae.checkpoint import load_checkpoint, read_card
from vlae.score import score_images


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
    assert "keep" not in report["config"]  # a machine's folder stays out of the results
    # The kept checkpoint is the scored model: the default for the data, a card to read.
    card = read_card(keep / "washer")
    assert card.score_kind == "local" and card.variant == "DenoisingSpatialVLAE"
    model = load_checkpoint(keep / "washer").model
    assert model.config.image_shape == (1, 32, 32)
    # Each figure is sklearn's on that model's scores of the same generated test set: that
    # defect's images against the good ones, each image's map against its own mask. No floor:
    # one epoch on 40 images is at chance (image AUROC 0.09 to 0.94 by defect and seed).
    _, test = make_split("washer", n_train=40, n_test_good=8, n_test_per_defect=4, size=32)
    scores = score_images(model, test.images, maps=True)
    assert scores.maps is not None
    assert_recomputed(
        washer["image_auroc"]["local"],
        washer["pixel_auroc"],
        test.labels,
        test.masks,
        scores.score,
        scores.maps,
        defects,
    )


def test_categories_side_by_side_give_the_figures_of_one_after_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two processes of one thread each against this process alone on one thread: the same
    # arithmetic, so the same figures, reported in the order named.
    tiny = ["--categories", "pill,fabric", "--size", "32", "--n-train", "40", "--n-test-good",
            "8", "--n-test-per-defect", "4", "--epochs", "1", "--baseline-epochs", "0",
            "--no-pyod"]  # fmt: skip
    monkeypatch.setenv("TORCH_THREADS", "1")
    threads = torch.get_num_threads()
    try:
        assert main([*tiny, "--jobs", "1", "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main([*tiny, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = (json.loads((tmp_path / d / "inspection.json").read_text()) for d in ("one", "two"))
    assert list(two["categories"]) == ["pill", "fabric"]
    for cat in ("pill", "fabric"):
        for key in ("image_auroc", "pixel_auroc"):
            assert two["categories"][cat][key] == one["categories"][cat][key], (cat, key)
    assert "categories 2 at once, 1 torch thread(s) each" in two["machine"]

"""The ``vlaewatch`` command as a user runs it: train with Ray Train, evaluate, info. Called
in this process (``vlaewatch.cli.main``, what the console script runs) except by the one test
of the installed script itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.figures import assert_recomputed
from vlaewatch.cli import main

BIN = Path(sys.executable).parent / "vlaewatch"
# The digits fit. AUROC of its score, measured at seeds 0, 1 and 2: 0.982, 0.972, 0.971 at 20
# epochs; 0.976, 0.967, 0.948 at 15; 0.960, 0.960, 0.931 at 10. Fewer epochs would leave the
# floor of 0.95 (test_evaluate_prints_auroc_per_score_kind) no margin.
EPOCHS = 20


def _cli(capsys: pytest.CaptureFixture[str], line: str) -> tuple[int, str, str]:
    """``vlaewatch LINE`` in this process (its paths have no spaces): the exit status, stdout
    and stderr."""
    capsys.readouterr()
    code = main(line.split())
    out = capsys.readouterr()
    return code, out.out, out.err


def _report(capsys: pytest.CaptureFixture[str], line: str) -> Any:
    """The JSON that ``vlaewatch LINE`` prints when it succeeds."""
    code, out, err = _cli(capsys, line)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vlaewatch train --dataset digits --normal 0 --epochs EPOCHS --out DIR` on the session
    cluster."""
    out = tmp_path_factory.mktemp("cli") / "model"
    runs = tmp_path_factory.mktemp("runs")
    line = (
        f"train --dataset digits --normal 0 --epochs {EPOCHS} --workers 2 --out {out} "
        f"--storage-path {runs}"
    )
    assert main(line.split()) == 0
    return out


def test_train_writes_the_checkpoint(trained: Path) -> None:
    names = {p.name for p in trained.iterdir()}
    assert names == {
        "model.safetensors",
        "denoiser.safetensors",
        "model_card.json",
        "calibration.csv",
        "calibration_latents.safetensors",
    }
    card = json.loads((trained / "model_card.json").read_text())
    assert card["variant"] == "ConvVLAE" and card["architecture"]["arch"] == "conv"
    assert card["score_kind"] == "elbo_per_tv" and card["training"]["epochs"] == EPOCHS
    assert card["normal_classes"] == ["0"]
    assert card["dataset"]["name"] == "digits"
    assert card["dataset"]["train_class_counts"] == {"0": card["dataset"]["n_train"]}
    assert card["epochs"] == EPOCHS and len(card["history"]) == EPOCHS
    assert card["training"]["launcher"]["kind"] == "ray-train"
    assert card["training"]["launcher"]["workers"] == 2
    assert len(card["model_version"]) == 16
    calib = pd.read_csv(trained / "calibration.csv")
    assert list(calib.columns) == ["label", "recon", "kl", "complexity", "score", "map_max"]
    assert len(calib) == card["dataset"]["n_calibration"] > 0


def test_evaluate_prints_auroc_per_score_kind(trained: Path, capsys) -> None:
    report = _report(capsys, f"evaluate --checkpoint {trained} --dataset digits")
    assert set(report["auroc"]) == {"recon", "kl", "elbo", "score"}
    assert report["auroc"]["score"] > 0.95
    assert report["n_normal"] == 100 and report["n_anomalous"] == 900
    assert set(report["mean_score_by_class"]) == {str(d) for d in range(10)}


def test_clear_errors_exit_2(tmp_path: Path, capsys) -> None:
    code, _, err = _cli(capsys, f"train --normal cat --no-ray --out {tmp_path}")
    assert code == 2
    assert "no training image of the normal classes ['cat']" in err
    code, _, err = _cli(capsys, f"evaluate --checkpoint {tmp_path}")
    assert code == 2 and "no checkpoint" in err


def test_info_lists_the_store_and_no_secret(trained: Path, capsys, monkeypatch) -> None:
    # `info` is the Docker image's default command: before, it printed every API key, the
    # Redis password and the Grafana token.
    secrets = {
        "VLAEWATCH_API_KEYS": "secret-key-0123456789:operator,other-key-0123456789:viewer",
        "REDIS_URL": "redis://user:hunter2-password@redis.local:6380/0",
        "VLAEWATCH_GRAFANA_TOKEN": "glsa_secret_token_value",
    }
    for name, value in {"VLAEWATCH_MODEL_STORE": str(trained.parent), **secrets}.items():
        monkeypatch.setenv(name, value)
    code, out, err = _cli(capsys, "info")
    assert code == 0, err
    for secret in ("secret-key", "other-key", "hunter2", "glsa_secret"):
        assert secret not in out + err, secret
    info = json.loads(out)
    assert info["settings"]["redis_url"] == "redis://user:***@redis.local:6380/0"
    assert info["settings"]["api_keys"] == "<2 key(s), redacted>"
    assert info["torch"].startswith("2.14")
    assert [m["model_version"] for m in info["models"]] == [
        json.loads((trained / "model_card.json").read_text())["model_version"]
    ]


def test_console_script_starts_and_stops_its_own_cluster(tmp_path: Path) -> None:
    """A user's run of the installed script: own loopback cluster, model into the store, no
    process left behind."""
    ray_tmp = tempfile.mkdtemp(prefix="vwray", dir="/tmp")  # short: Ray's socket paths
    store, runs = tmp_path / "store", tmp_path / "runs"
    line = f"train --epochs 1 --workers 1 --no-denoiser --store {store} --storage-path {runs}"
    proc = subprocess.run(
        [str(BIN), *line.split()],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        env={**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_ADDRESS": ""},
    )
    result = json.loads(proc.stdout)
    assert Path(result["checkpoint"]).parent == store
    # The epochs reach the driver's progress bar; the workers' own output stays in Ray's logs.
    assert "1/1 [" in proc.stderr and "epoch/s" in proc.stderr
    assert "[train]" not in proc.stderr and "TrainingReport(" not in proc.stderr
    assert "on 127.0.0.1:" in proc.stderr and "Ray logs in /" in proc.stderr  # loopback
    leftovers = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "Ray processes outlived the command"


def test_train_and_evaluate_on_an_image_folder(tmp_path: Path, capsys) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, level in (("good", 40), ("scratch", 200)):
        (tmp_path / "line" / cls).mkdir(parents=True)
        for i in range(20):
            arr = np.clip(rng.normal(level, 20, (30 + i, 25, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "line" / cls / f"{i}.png")
    out = tmp_path / "model"
    _report(
        capsys,
        f"train --dataset folder --image-folder {tmp_path / 'line'} --normal good "
        f"--image-size 16 --channels 3 --epochs 2 --no-ray --out {out}",
    )
    card = json.loads((out / "model_card.json").read_text())
    # Colour photographs, not digits: the model, likelihood and score chosen for them.
    assert card["variant"] == "DenoisingSpatialVLAE" and card["image_shape"] == [3, 16, 16]
    assert card["score_kind"] == "local" and card["likelihood"].startswith("Gaussian")
    assert card["data_profile"]["near_binary"] is False
    assert card["dataset"]["train_class_counts"] == {"good": card["dataset"]["n_train"]}
    report = _report(capsys, f"evaluate --checkpoint {out}")
    assert report["n_normal"] == 4 and report["n_anomalous"] == 4


def test_evaluate_a_folder_of_known_defects_with_masks(tmp_path: Path, capsys) -> None:
    """Train on a folder of good parts; evaluate on a folder of good and defective ones with
    their masks beside it: image AUROC per defect, and pixel AUROC."""
    from trainer.inspection import make_split, write_folder
    from vlae.checkpoint import load_checkpoint
    from vlae.score import score_images

    sizes = {"n_train": 60, "n_test_good": 12, "n_test_per_defect": 4, "size": 32}
    root = write_folder("metal", tmp_path, **sizes)
    out = tmp_path / "model"
    _report(
        capsys,
        f"train --dataset folder --image-folder {root / 'train'} --normal good "
        f"--image-size 32 --epochs 1 --no-ray --out {out}",
    )
    card = json.loads((out / "model_card.json").read_text())
    assert card["image_shape"] == [1, 32, 32]  # grey, as the files are
    evaluate = f"evaluate --checkpoint {out} --image-folder {root / 'test'}"
    report = _report(capsys, evaluate)
    defects = {"scratch", "hole", "stain", "crack", "contamination", "worn"}
    assert report["n_normal"] == 12 and report["n_anomalous"] == 4 * len(defects)
    assert set(report["auroc_by_class"]) == set(report["pixel_auroc_by_class"]) == defects
    # The report's figures are sklearn's on the same model's scores of the arrays the folder
    # was written from, each image with its own mask and label: a mask read for another image
    # or a label for another file changes them. No floor: a fit this short is near chance
    # (pixel AUROC 0.33 to 0.65 at 1 to 3 epochs, 0.76 to 0.81 at 40), and the trained
    # models' floors are tests/scorer/test_inspection.py's.
    _, test = make_split("metal", **sizes)
    scores = score_images(load_checkpoint(out).model, test.images, maps=True)
    assert scores.maps is not None
    good = test.labels == "good"
    assert report["auroc"]["score"] == pytest.approx(roc_auc_score(~good, scores.score), abs=1e-6)
    pixel = roc_auc_score(test.masks.ravel(), scores.maps.ravel())
    assert report["pixel_auroc"] == pytest.approx(pixel, abs=1e-6)
    assert_recomputed(
        report["auroc_by_class"],
        report["pixel_auroc_by_class"],
        test.labels,
        test.masks,
        scores.score,
        scores.maps,
        defects,
    )
    # A defective image without its mask is refused, not counted as normal pixels.
    next((root / "masks" / "hole").iterdir()).unlink()
    code, _, err = _cli(capsys, evaluate)
    assert code == 2 and "no mask" in err

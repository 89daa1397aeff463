"""The ``vlaewatch`` command as a user runs it: train with Ray Train, evaluate, info."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from vlaewatch.cli import main

BIN = Path(sys.executable).parent / "vlaewatch"


def _run(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        check=check,
    )


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vlaewatch train --dataset digits --normal 0 --epochs 20 --out DIR` on the session
    cluster."""
    out = tmp_path_factory.mktemp("cli") / "model"
    runs = tmp_path_factory.mktemp("runs")
    code = main(
        [
            "train",
            "--dataset",
            "digits",
            "--normal",
            "0",
            "--epochs",
            "20",
            "--workers",
            "2",
            "--out",
            str(out),
            "--storage-path",
            str(runs),
        ]
    )
    assert code == 0
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
    assert card["score_kind"] == "elbo_per_tv" and card["training"]["epochs"] == 20
    assert card["normal_classes"] == ["0"]
    assert card["dataset"]["name"] == "digits"
    assert card["dataset"]["train_class_counts"] == {"0": card["dataset"]["n_train"]}
    assert card["epochs"] == 20 and len(card["history"]) == 20
    assert card["training"]["launcher"]["kind"] == "ray-train"
    assert card["training"]["launcher"]["workers"] == 2
    assert len(card["model_version"]) == 16
    calib = pd.read_csv(trained / "calibration.csv")
    assert list(calib.columns) == ["label", "recon", "kl", "complexity", "score", "map_max"]
    assert len(calib) == card["dataset"]["n_calibration"] > 0


def test_evaluate_prints_auroc_per_score_kind(trained: Path) -> None:
    proc = _run("evaluate", "--checkpoint", str(trained), "--dataset", "digits")
    report = json.loads(proc.stdout)
    assert set(report["auroc"]) == {"recon", "kl", "elbo", "score"}
    assert report["auroc"]["score"] > 0.95
    assert report["n_normal"] == 100 and report["n_anomalous"] == 900
    assert set(report["mean_score_by_class"]) == {str(d) for d in range(10)}


def test_clear_errors_exit_2(tmp_path: Path) -> None:
    proc = _run("train", "--normal", "cat", "--no-ray", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert "no training image of the normal classes ['cat']" in proc.stderr
    proc = _run("evaluate", "--checkpoint", str(tmp_path), check=False)
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr


def test_info_lists_the_store_and_no_secret(trained: Path) -> None:
    # `info` is the Docker image's default command: before, it printed every API key, the
    # Redis password and the Grafana token.
    secrets = {"VLAEWATCH_API_KEYS": "secret-key-0123456789:operator,other-key-0123456789:viewer",
               "REDIS_URL": "redis://user:hunter2-password@redis.local:6380/0",
               "VLAEWATCH_GRAFANA_TOKEN": "glsa_secret_token_value"}  # fmt: skip
    proc = _run("info", env={"VLAEWATCH_MODEL_STORE": str(trained.parent), **secrets})
    for secret in ("secret-key", "other-key", "hunter2", "glsa_secret"):
        assert secret not in proc.stdout + proc.stderr, secret
    info = json.loads(proc.stdout)
    assert info["settings"]["redis_url"] == "redis://user:***@redis.local:6380/0"
    assert info["settings"]["api_keys"] == "<2 key(s), redacted>"
    assert info["torch"].startswith("2.14")
    assert [m["model_version"] for m in info["models"]] == [
        json.loads((trained / "model_card.json").read_text())["model_version"]
    ]


def test_console_script_starts_and_stops_its_own_cluster(tmp_path: Path) -> None:
    """A user's run: own loopback cluster, model into the store, no process left behind."""
    ray_tmp = tempfile.mkdtemp(prefix="vwray", dir="/tmp")  # short: Ray's socket paths
    store = tmp_path / "store"
    proc = _run(
        "train",
        "--epochs",
        "1",
        "--workers",
        "1",
        "--no-denoiser",
        "--store",
        str(store),
        "--storage-path",
        str(tmp_path / "runs"),
        env={"RAY_TMPDIR": ray_tmp, "RAY_ADDRESS": ""},
    )
    result = json.loads(proc.stdout)
    assert Path(result["checkpoint"]).parent == store
    # The epochs reach the driver's progress bar; the workers' own output stays in Ray's logs.
    assert "1/1 [" in proc.stderr and "epoch/s" in proc.stderr
    assert "[train]" not in proc.stderr and "TrainingReport(" not in proc.stderr
    assert "on 127.0.0.1:" in proc.stderr and "Ray logs in /" in proc.stderr  # loopback
    leftovers = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "Ray processes outlived the command"


def test_train_and_evaluate_on_an_image_folder(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, level in (("good", 40), ("scratch", 200)):
        (tmp_path / "line" / cls).mkdir(parents=True)
        for i in range(20):
            arr = np.clip(rng.normal(level, 20, (30 + i, 25, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "line" / cls / f"{i}.png")
    out = tmp_path / "model"
    _run(
        "train",
        "--dataset",
        "folder",
        "--image-folder",
        str(tmp_path / "line"),
        "--normal",
        "good",
        "--image-size",
        "16",
        "--channels",
        "3",
        "--epochs",
        "2",
        "--no-ray",
        "--out",
        str(out),
    )
    card = json.loads((out / "model_card.json").read_text())
    # Colour photographs, not digits: the model, likelihood and score chosen for them.
    assert card["variant"] == "DenoisingSpatialVLAE" and card["image_shape"] == [3, 16, 16]
    assert card["score_kind"] == "local" and card["likelihood"].startswith("Gaussian")
    assert card["data_profile"]["near_binary"] is False
    assert card["dataset"]["train_class_counts"] == {"good": card["dataset"]["n_train"]}
    report = json.loads(_run("evaluate", "--checkpoint", str(out)).stdout)
    assert report["n_normal"] == 4 and report["n_anomalous"] == 4


def test_evaluate_a_folder_of_known_defects_with_masks(tmp_path: Path) -> None:
    """Train on a folder of good parts; evaluate on a folder of good and defective ones with
    their masks beside it: image AUROC per defect, and pixel AUROC."""
    from trainer.inspection import write_folder

    root = write_folder("metal", tmp_path, n_train=120, n_test_good=12, n_test_per_defect=4,
                        size=32)  # fmt: skip
    out = tmp_path / "model"
    _run("train", "--dataset", "folder", "--image-folder", str(root / "train"), "--normal", "good",
         "--image-size", "32", "--epochs", "3", "--no-ray", "--out", str(out))  # fmt: skip
    card = json.loads((out / "model_card.json").read_text())
    assert card["image_shape"] == [1, 32, 32]  # grey, as the files are
    report = json.loads(_run("evaluate", "--checkpoint", str(out), "--image-folder",
                             str(root / "test")).stdout)  # fmt: skip
    defects = {"scratch", "hole", "stain", "crack", "contamination", "worn"}
    assert report["n_normal"] == 12 and report["n_anomalous"] == 4 * len(defects)
    assert set(report["auroc_by_class"]) == set(report["pixel_auroc_by_class"]) == defects
    assert 0 <= report["pixel_auroc"] <= 1 and 0 <= report["auroc"]["score"] <= 1
    # A defective image without its mask is refused, not counted as normal pixels.
    next((root / "masks" / "hole").iterdir()).unlink()
    proc = _run("evaluate", "--checkpoint", str(out), "--image-folder", str(root / "test"),
                check=False)  # fmt: skip
    assert proc.returncode != 0 and "no mask" in proc.stderr

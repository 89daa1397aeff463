"""Training images streamed through Ray Data (trainer/stream.py): the same split as the
in-memory reader, held-out sets bounded in the driver, Ray Train workers fed through
``get_dataset_shard`` (with a resumed run), a folder under an S3 URI (the moto stand-in), and
images in Parquet files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from trainer import stream
from trainer.data import DataError, load_folder, split_normal
from trainer.launch import RayLaunch, fit_with_ray, new_run_name
from trainer.pipeline import train_arrays
from trainer.train import TrainConfig
from vlae.model import VLAEConfig
from vlaewatch.cli import main

SHAPE = (3, 16, 16)


def _folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """Colour PNGs of several sizes, a subfolder a class (and a masks folder, no class)."""
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            level = 60 if cls.startswith("good") else 200
            arr = np.clip(rng.normal(level, 30, (14 + i % 5, 18, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i:03d}.png")
    (root / "masks").mkdir()
    return root


def test_the_file_split_is_the_in_memory_split(tmp_path: Path) -> None:
    # "good" and "good-x" sort differently as strings ("good-x/..." < "good/...") and as
    # folders: the file list must take the folders' order, as read_folder does.
    root = _folder(tmp_path / "line", {"good": 60, "good-x": 25, "scratch": 10})
    normal = ["good", "good-x"]
    memory = split_normal(load_folder(root, SHAPE), normal, seed=3)
    files = stream.list_images(root, SHAPE)
    assert len(files) == 95 and set(files.labels) == {"good", "good-x", "scratch"}
    streamed = stream.split_files(files, normal, seed=3)
    assert isinstance(streamed.train, stream.ImageFiles)
    assert np.array_equal(streamed.train.read().images, memory.train.images)
    assert streamed.train.class_counts() == memory.train.class_counts()
    for part in ("validation", "calibration"):
        assert np.array_equal(getattr(streamed, part).images, getattr(memory, part).images)
    # The fingerprint is the file list's: a renamed or resized file changes it.
    before = streamed.train.fingerprint()
    (root / "good" / "000.png").rename(root / "good" / "zzz.png")
    after = stream.split_files(stream.list_images(root, SHAPE), normal, seed=3)
    assert after.train.fingerprint() != before


def test_held_out_sets_are_a_bounded_sample(tmp_path: Path, monkeypatch) -> None:
    root = _folder(tmp_path / "line", {"good": 100})
    full = stream.split_files(stream.list_images(root, SHAPE), ["good"], seed=1)
    monkeypatch.setattr(stream, "MAX_VALIDATION", 3)
    monkeypatch.setattr(stream, "MAX_CALIBRATION", 5)
    capped = stream.split_files(stream.list_images(root, SHAPE), ["good"], seed=1)
    assert (len(capped.validation), len(capped.calibration)) == (3, 5)
    assert len(full.calibration) == 16 and len(capped.train) == len(full.train)  # 80 % of 100

    def rows(a: np.ndarray) -> set[bytes]:
        return {im.tobytes() for im in a}

    assert rows(capped.calibration.images) <= rows(full.calibration.images)
    assert not rows(capped.calibration.images) & rows(capped.train.read().images)
    # Large images: fewer, so that the held-out sets stay within HELD_OUT_BYTES.
    monkeypatch.setattr(stream, "MAX_VALIDATION", 2_000)
    monkeypatch.setattr(stream, "MAX_CALIBRATION", 5_000)
    assert stream.held_out_caps((3, 64, 64)) == (2_000, 5_000)
    n_val, n_cal = stream.held_out_caps((3, 1024, 1024))
    assert (n_val + n_cal) * 3 * 1024 * 1024 <= stream.HELD_OUT_BYTES and n_cal > 2 * n_val > 0


def test_condition_indices_come_from_the_class_folders(tmp_path: Path) -> None:
    png = (_folder(tmp_path / "a", {"good": 1}) / "good" / "000.png").read_bytes()
    batch = {"bytes": np.array([png, png], dtype=object),
             "path": np.array(["line/good-x/1.png", "line/good/2.png"])}  # fmt: skip
    out = stream.decode_batch(batch, SHAPE, {"good": 0, "good-x": 1}, by_folder=True)
    assert out["x"].shape == (2, *SHAPE) and out["c"].tolist() == [1, 0]
    # A flat folder is one class, 'normal', whatever the folder is called.
    flat = stream.decode_batch(batch, SHAPE, {"normal": 0}, by_folder=False)
    assert flat["c"].tolist() == [0, 0]


def test_a_bad_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"broken\.png"):
        stream.decode_batch({"bytes": np.array([b"not an image"], dtype=object),
                             "path": np.array(["line/good/broken.png"])}, SHAPE, None)  # fmt: skip
    with pytest.raises(DataError, match="does not exist"):
        stream.list_images(tmp_path / "nowhere", SHAPE)
    with pytest.raises(DataError, match="credentials"):
        stream.filesystem("s3://key:secret@bucket/line")


def test_ray_train_workers_stream_their_shards_then_resume(ray_cluster, tmp_path: Path) -> None:
    root = _folder(tmp_path / "line", {"good": 90}, seed=2)
    split = stream.split_files(stream.list_images(root, SHAPE), ["good"], seed=0)
    model = VLAEConfig(image_shape=SHAPE, latent_dim=4, hidden=(32, 16))
    data = train_arrays(split, conditional=False, seed=0)
    # 90 files: 72 in the training partition, less 14 calibration and 7 validation.
    assert data.train_x is None and len(data.stream) == 51  # type: ignore[arg-type]
    launch = RayLaunch(storage_path=tmp_path / "runs", run_name=new_run_name("test-stream"),
                       num_workers=2, cpus_per_worker=1, checkpoint_every_s=0)  # fmt: skip
    cfg = TrainConfig(epochs=2, batch_size=16, denoiser=False)
    first = fit_with_ray(model, cfg, data, launch)
    assert [h["epoch"] for h in first.history] == [1.0, 2.0]
    assert all(np.isfinite(h["loss"]) and h["loss"] > 0 for h in first.history)
    resumed = fit_with_ray(model, TrainConfig(epochs=3, batch_size=16, denoiser=False), data,
                           launch)  # fmt: skip
    assert resumed.history[:2] == first.history and resumed.history[2]["epoch"] == 3.0


def _upload(root: Path, uri: str) -> None:
    fs, base = pafs.FileSystem.from_uri(uri)
    for p in sorted(root.rglob("*.png")):
        with fs.open_output_stream(f"{base}/{p.relative_to(root).as_posix()}") as out:
            out.write(p.read_bytes())


def test_train_from_an_s3_folder_through_ray_data(
    ray_cluster, s3_stand_in: str, tmp_path: Path
) -> None:
    """``vlaewatch train --image-folder s3://...``: a URI streams by default, and the card
    says so; its split is the one the local copy of the folder gets in memory."""
    root = _folder(tmp_path / "line", {"good": 40, "scratch": 6}, seed=4)
    uri = s3_stand_in.replace("s3://items/line", "s3://items/train-folder")
    _upload(root, uri)
    cards = {}
    # The local copy's split in memory needs no cluster: that run stays in this process.
    for name, folder, where in (("s3", uri, "--workers 1"), ("local", str(root), "--no-ray")):
        out = tmp_path / name
        line = (
            f"train --dataset folder --image-folder {folder} --normal good --image-size 16 "
            f"--epochs 1 {where} --out {out} --storage-path {tmp_path / 'runs'}"
        )
        assert main(line.split()) == 0
        cards[name] = json.loads((out / "model_card.json").read_text())["dataset"]
    assert cards["s3"]["reader"] == "ray-data" and cards["local"]["reader"] == "memory"
    assert cards["s3"]["name"] == "folder:train-folder"
    for key in ("n_train", "n_validation", "n_calibration", "train_class_counts"):
        assert cards["s3"][key] == cards["local"][key], key


def test_reader_flags_are_checked(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "line", {"good": 10})
    assert main(["train", "--dataset", "digits", "--reader", "stream"]) == 2
    assert "--reader stream reads --dataset folder" in capsys.readouterr().err
    assert main(["train", "--dataset", "folder", "--image-folder", str(root), "--reader",
                 "stream", "--no-ray"]) == 2  # fmt: skip
    assert "needs Ray" in capsys.readouterr().err


def _parquet(root: Path, out: Path, row_group_size: int = 16) -> Path:
    """The class folders' images as Parquet rows (``image``: the PNG file, ``label``), in
    the folders' order, in two files of row groups of ``row_group_size``."""
    files = sorted(p for p in root.glob("*/*.png") if p.parent.name != "masks")
    files.sort(key=lambda p: (p.parent.name, p.name))
    out.mkdir()
    half = len(files) // 2
    for i, part in enumerate((files[:half], files[half:])):
        table = pa.table({"image": [p.read_bytes() for p in part],
                          "label": [p.parent.name for p in part]})  # fmt: skip
        pq.write_table(table, out / f"part-{i}.parquet", row_group_size=row_group_size)
    return out


def test_parquet_rows_split_as_the_same_images_in_folders(tmp_path: Path) -> None:
    root = _folder(tmp_path / "line", {"good": 60, "good-x": 25, "scratch": 10})
    table = _parquet(root, tmp_path / "table")
    assert stream.is_parquet(table) and not stream.is_parquet(root)
    normal = ["good", "good-x"]
    memory = split_normal(load_folder(root, SHAPE), normal, seed=3)
    rows = stream.list_images(table, (0, 16, 16))  # channels: the first image's
    assert rows.shape == SHAPE and rows.rows is not None and len(rows) == 95
    streamed = stream.split_files(rows, normal, seed=3)
    assert np.array_equal(streamed.train.read().images, memory.train.images)
    for part in ("validation", "calibration"):
        assert np.array_equal(getattr(streamed, part).images, getattr(memory, part).images)
    # The in-memory reader takes Parquet too, through the same listing.
    assert np.array_equal(split_normal(load_folder(table, SHAPE), normal, seed=3).train.images,
                          memory.train.images)  # fmt: skip
    with pytest.raises(DataError, match="no 'image' column"):
        bad = tmp_path / "bad.parquet"
        pq.write_table(pa.table({"label": ["good"]}), bad)
        stream.list_images(bad, SHAPE)


def test_train_on_parquet_rows_through_ray_data(ray_cluster, tmp_path: Path) -> None:
    """A conditional model on Parquet rows of two classes: each Ray Data task reads one row
    group and decodes its training rows, with their condition indices."""
    root = _folder(tmp_path / "line", {"good": 40, "good-x": 30}, seed=5)
    table = _parquet(root, tmp_path / "table")
    out = tmp_path / "model"
    code = main(["train", "--dataset", "folder", "--image-folder", str(table), "--reader",
                 "stream", "--normal", "good,good-x", "--conditional", "--arch", "mlp",
                 "--image-size", "16", "--epochs", "2", "--workers", "2", "--out", str(out),
                 "--storage-path", str(tmp_path / "runs")])  # fmt: skip
    assert code == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["dataset"]["reader"] == "ray-data" and card["conditions"] == ["good", "good-x"]
    counts = split_normal(load_folder(root, SHAPE), ["good", "good-x"]).train.class_counts()
    assert card["dataset"]["train_class_counts"] == counts
    assert [h["epoch"] for h in card["history"]] == [1.0, 2.0]

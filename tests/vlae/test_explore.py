"""The explorer on a model trained on digits: latent-space math, checkpoint latents, and every
``vlaewatch explore`` command writing its PNG and JSON."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from vlae import explore
from vlae.card import CardDraft
from vlae.checkpoint import (
    CARD,
    LATENTS,
    CheckpointError,
    load_checkpoint,
    read_card,
    save_checkpoint,
    verify_checkpoint,
)
from vlae.images import to_float
from vlae.model import config_from_dict
from vlaewatch.cli import main

GAP = 1


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return im.size


def _grid_size(rows: int, cols: int, scale: int, h: int = 28, w: int = 28) -> tuple[int, int]:
    """(width, height) of a grid of rows x cols tiles, 1-pixel gaps, upscaled."""
    return ((cols * w + (cols - 1) * GAP) * scale, (rows * h + (rows - 1) * GAP) * scale)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(list(argv)) == 0, capsys.readouterr().err
    return dict(json.loads(capsys.readouterr().out))


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> Any:
    return load_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def two_digits(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VLAE on digits 0 and 1: two clearly different kinds of item to interpolate between."""
    out = tmp_path_factory.mktemp("ckpt") / "zero-one"
    _train(digits, out, ["0", "1"], latent_dim=20, epochs=5)
    return out


def _first(digits: Any, label: str, k: int = 1) -> list[int]:
    return [int(i) for i in np.flatnonzero(digits.test.labels.astype(str) == label)[:k]]


def test_checkpoint_holds_calibration_latents_covered_by_its_hash(
    checkpoint: Path, loaded: Any, tmp_path: Path
) -> None:
    ref = loaded.latents
    card = read_card(checkpoint)
    n_cal = card.dataset.n_calibration
    assert card.has_calibration_latents is True
    assert ref.mu.shape == (n_cal, card.latent_dim) and ref.images.shape == (n_cal, 1, 28, 28)
    assert (ref.conditions == -1).all()
    # The stored means are the model's own encoding of the stored images.
    mu, _ = explore.encode(loaded.model, ref.images)
    assert np.allclose(mu, ref.mu, atol=1e-5)

    swapped = tmp_path / "swapped"
    shutil.copytree(checkpoint, swapped)
    tensors = load_file(str(swapped / LATENTS))
    tensors["mu"] = tensors["mu"] + 1.0
    save_file(tensors, str(swapped / LATENTS))
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        verify_checkpoint(swapped)


def test_a_checkpoint_saved_without_latents_loads_and_the_explorer_says_why(
    loaded: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draft = CardDraft.model_validate(loaded.card.model_dump(include=set(CardDraft.model_fields)))
    cfg = config_from_dict(loaded.card.architecture)
    bare = save_checkpoint(tmp_path / "bare", cfg, {"model": loaded.model.state_dict()}, draft,
                           loaded.calibration)  # fmt: skip
    assert read_card(bare).has_calibration_latents is False
    assert load_checkpoint(bare).latents is None
    assert main(["explore", "latent-map", "--checkpoint", str(bare), "--out",
                 str(tmp_path / "m.png")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "no calibration latents" in err and "train it again" in err
    # Views that need no normal reference still work.
    _run(capsys, "explore", "sample", "--checkpoint", str(bare), "--out", str(tmp_path / "s.png"))


def test_a_card_lacking_a_field_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(checkpoint, old)
    card = json.loads((old / CARD).read_text())
    del card["hashed_files"]
    (old / CARD).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="not a model card: hashed_files: Field required"):
        load_checkpoint(old)


def test_latent_map_places_anomalies_farther_from_normal(loaded: Any, digits: Any) -> None:
    test = digits.test
    labels = test.labels.astype(str)
    mu, _ = explore.encode(loaded.model, test.images)
    is_normal = labels == "0"
    groups = ["normal" if n else "anomalous" for n in is_normal]
    for method in ("pca", "tsne"):
        idx = np.arange(len(test)) if method == "pca" else np.arange(0, len(test), 3)
        lmap = explore.latent_map(loaded.latents.mu, mu[idx], [groups[i] for i in idx],
                                  method=method)  # fmt: skip
        assert lmap.method == method and lmap.coords.shape == (len(loaded.latents) + len(idx), 2)
        d = lmap.map_distance()
        normal = is_normal[idx]
        assert d[~normal].mean() > d[normal].mean(), method
        assert lmap.latent_distance[~normal].mean() > lmap.latent_distance[normal].mean()
    # The share of normal calibration items closer to the centroid is a rank in [0, 1].
    assert ((lmap.normal_share_closer >= 0) & (lmap.normal_share_closer <= 1)).all()


def test_interpolation_ends_decode_closer_to_their_own_item(two_digits: Path, digits: Any) -> None:
    model = load_checkpoint(two_digits).model
    test = digits.test
    for a, b in zip(_first(digits, "0", 3), _first(digits, "1", 3), strict=True):
        images = test.images[[a, b]]
        mu, _ = explore.encode(model, images)
        strip = explore.interpolate(model, mu[0], mu[1], 8)
        assert strip.shape == (8, 1, 28, 28) and strip.dtype == np.uint8
        x, ends = to_float(images), to_float(strip[[0, -1]])

        def mse(p: np.ndarray, q: np.ndarray) -> float:
            return float(((p - q) ** 2).mean())

        assert mse(ends[0], x[0]) < mse(ends[0], x[1]), (a, b)
        assert mse(ends[1], x[1]) < mse(ends[1], x[0]), (a, b)


def test_traversal_changes_the_image_monotonically(loaded: Any) -> None:
    ref = loaded.latents
    dims = explore.active_dims(ref.mu, 3)
    assert len(set(dims)) == 3
    for start in (0, 7, 21):
        rows, values = explore.traverse(loaded.model, ref.mu[start], dims, 9, 3.0,
                                        ref.mu.std(axis=0))  # fmt: skip
        assert rows.shape == (3, 9, 1, 28, 28) and values.shape == (3, 9)
        assert (np.diff(values, axis=1) > 0).all()
        for r in range(3):
            frames = to_float(rows[r]).reshape(9, -1)
            # Moving further along the dimension moves the image further from where it began.
            moved = np.linalg.norm(frames - frames[0], axis=1)
            assert (np.diff(moved) > 0).all(), (start, dims[r], moved)
    with pytest.raises(ValueError, match="outside"):
        explore.traverse(loaded.model, ref.mu[0], [99], 5)


def test_compression_ratio_is_input_size_over_code_size(loaded: Any, digits: Any) -> None:
    images = digits.test.images[:20]
    d = loaded.card.latent_dim
    for dtype, itemsize in (("float32", 4), ("float16", 2)):
        result = explore.compress(loaded.model, images, code_dtype=dtype)  # type: ignore[arg-type]
        assert result.input_bytes == 784 and result.code_bytes == d * itemsize
        assert result.ratio == pytest.approx(784 / (d * itemsize))
        assert result.codes.dtype == np.dtype(dtype) and result.decoded.shape == images.shape
        err = ((to_float(images) - to_float(result.decoded)) ** 2).reshape(20, -1).mean(axis=1)
        assert np.allclose(result.mse, err, atol=1e-6)
        assert np.allclose(result.psnr, 10 * np.log10(1 / err), atol=1e-3)


def test_prior_samples_are_seeded_images(loaded: Any) -> None:
    a = explore.sample_prior(loaded.model, 6, seed=3)
    assert a.shape == (6, 1, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, explore.sample_prior(loaded.model, 6, seed=3))
    assert not np.array_equal(a, explore.sample_prior(loaded.model, 6, seed=4))


def test_every_explore_command_writes_a_png_of_the_expected_size(
    checkpoint: Path, two_digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    digits: Any,
) -> None:  # fmt: skip
    ck = ["--checkpoint", str(checkpoint)]

    def out(name: str) -> list[str]:
        return ["--out", str(tmp_path / f"{name}.png"), "--json", str(tmp_path / f"{name}.json")]

    m = _run(capsys, "explore", "latent-map", *ck, *out("map"), "--method", "pca",
             "--size", "300x400", "--n-test", "200")  # fmt: skip
    assert _png_size((tmp_path / "map.png").read_bytes()) == (400, 300)
    assert json.loads((tmp_path / "map.json").read_text()) == m
    g = m["groups"]
    assert g["anomalous (test)"]["mean_map_distance"] > g["normal (test)"]["mean_map_distance"]
    assert g["anomalous (test)"]["flagged"] > g["normal (test)"]["flagged"]
    assert len(m["points"]) == 200 and m["method"] == "pca"

    s = _run(capsys, "explore", "sample", *ck, *out("sample"), "--n", "12", "--scale", "3")
    assert _png_size((tmp_path / "sample.png").read_bytes()) == _grid_size(2, 8, 3)
    assert s["n"] == 12

    zero, one = f"test:{_first(digits, '0')[0]}", f"test:{_first(digits, '1')[0]}"
    i = _run(capsys, "explore", "interpolate", zero, one, "--checkpoint", str(two_digits),
             *out("interp"), "--steps", "6")  # fmt: skip
    assert _png_size((tmp_path / "interp.png").read_bytes()) == _grid_size(1, 8, 2)
    ends = np.array(i["endpoint_mse"])  # decoded end x original item
    assert ends[0, 0] < ends[0, 1] and ends[1, 1] < ends[1, 0]

    t = _run(capsys, "explore", "traverse", "test:3", *ck, *out("trav"), "--n-dims", "3",
             "--steps", "7")  # fmt: skip
    assert _png_size((tmp_path / "trav.png").read_bytes()) == _grid_size(3, 7, 2)
    assert len(t["dims"]) == 3 and t["start"] == "test:3"
    t = _run(capsys, "explore", "traverse", *ck, *out("trav0"), "--dims", "0,1")
    assert t["dims"] == [0, 1] and t["start"] == "normal centroid"

    # A store with two latent sizes: the rate-distortion table has a row for each model.
    store = tmp_path / "store"
    store.mkdir()
    shutil.copytree(checkpoint, store / "a")
    small = _train(digits, store / "b", ["0"], latent_dim=4, epochs=1)
    c = _run(capsys, "explore", "compress", "test:0", "test:1", "test:2", "--checkpoint",
             str(store / "a"), *out("comp"), "--store", str(store))  # fmt: skip
    assert _png_size((tmp_path / "comp.png").read_bytes()) == _grid_size(2, 3, 2)
    assert c["ratio"] == pytest.approx(c["input_bytes"] / c["code_bytes"]) == 784 / 80
    rows = c["rate_distortion"]
    assert [r["latent_dim"] for r in rows] == [4, 20]
    assert rows[0]["ratio"] == pytest.approx(784 / 16) and rows[0]["model_version"] == small

    assert main(["explore", "interpolate", "test:1", "test:99999", *ck, *out("bad")]) == 2
    assert "test:0..test:" in capsys.readouterr().err
    assert main(["explore", "traverse", *ck, *out("bad"), "--dims", "55"]) == 2
    assert "outside" in capsys.readouterr().err


def _train(digits: Any, out: Path, normal: list[str], latent_dim: int, epochs: int) -> str:
    from trainer.data import split_normal
    from trainer.pipeline import DatasetInfo, train_model
    from trainer.train import LoopContext, TrainConfig, fit
    from vlae.model import VLAEConfig

    path = train_model(
        split_normal(digits, normal), VLAEConfig(latent_dim=latent_dim),
        TrainConfig(epochs=epochs, denoiser=False), DatasetInfo("digits"),
        lambda m, c, d: fit(m, c, d, LoopContext(log=lambda _: None)), {"kind": "in-process"},
        out=out,
    )  # fmt: skip
    return read_card(path).model_version


def test_every_view_works_on_a_model_with_a_grid_of_latent_cells(tmp_path: Path) -> None:
    # A SpatialVLAE's latent means are a grid (channels x h x w); the explorer takes them as
    # flat vectors and decodes them back on the grid. Before, neighbours and the latent map
    # failed on it ("the array at index 1 has 6 dimension(s)"), and samples did not decode.
    from trainer.data import LabelledImages, Source, split_normal
    from trainer.defaults import choose_model, choose_training
    from trainer.inspection import good, make_split
    from trainer.pipeline import DatasetInfo, train_model
    from trainer.train import LoopContext, fit
    from vlae import views

    train, test = make_split("pill", n_train=60, n_test_good=4, n_test_per_defect=1, size=32)
    src = Source("pill", LabelledImages(train, np.full(len(train), "good", dtype=object)),
                 LabelledImages(test.images, test.labels))  # fmt: skip
    model_cfg, _ = choose_model(train)
    path = train_model(split_normal(src, ["good"]), model_cfg,
                       choose_training(model_cfg, epochs=1), DatasetInfo("pill"),
                       lambda m, c, d: fit(m, c, d, LoopContext(log=lambda _: None)),
                       {"kind": "in-process"}, out=tmp_path / "pill")  # fmt: skip
    loaded = load_checkpoint(path)
    assert loaded.latents is not None and loaded.latents.mu.ndim == 2
    d = explore.latent_size(loaded.model)
    assert loaded.latents.mu.shape[1] == d == model_cfg.latent_dim * 8 * 8  # 32 / 4 a side
    items = views.Items(names=["a", "b"], images=good("pill", 2, 32, seed=9),
                        conditions=np.array([-1, -1]))  # fmt: skip
    png, data = views.neighbours(loaded, items, 3, 1)
    assert _png_size(png) == _grid_size(1, 4, 1, 32, 32) and data["k"] == 3
    png, data = views.map_view(loaded, items, ["x", "x"], np.array([False, True]), "pca",
                               (320, 240))  # fmt: skip
    assert _png_size(png) == (320, 240) and data["groups"]["x"]["n"] == 2
    png, _ = views.sample(loaded, 4, None, 0, 1)
    assert _png_size(png)[1] == 32
    png, _ = views.interpolate(loaded, items, 5, 1)
    assert _png_size(png) == _grid_size(1, 5 + 2, 1, 32, 32)  # both items at the ends
    png, data = views.traverse(loaded, items, None, 2, 3, 2.0, 1, None)
    assert all(0 <= dim < d for dim in data["dims"])
    png, data = views.compress(loaded, items, "float16", 1)
    assert data["latent_dim"] == d

"""Input validation: every kind of bad image is a clear per-item error. The frames path's
plain-PNG decoder gives what ``Image.open`` gives, pixel for pixel and error for error."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vlae import images as decode
from vlae.images import InputError, Limits, decode_array, decode_image, load_npy, split_batch

GRAY = (1, 28, 28)
LIMITS = Limits()


def _png(arr: np.ndarray, mode: str | None = None, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG", **kw)
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_png_and_jpeg_decode_to_chw() -> None:
    arr = (np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)
    out = decode_image(_png(arr), GRAY, LIMITS)
    assert out.shape == GRAY and np.array_equal(out[0], arr)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    assert decode_image(buf.getvalue(), GRAY, LIMITS).shape == GRAY
    rgb = np.zeros((28, 28, 3), np.uint8)
    assert decode_image(_png(rgb), (3, 28, 28), LIMITS).shape == (3, 28, 28)


@pytest.mark.parametrize(
    ("data", "message", "status"),
    [
        (b"", "empty", 422),
        (b"hello, not an image", "not a PNG or JPEG", 422),
        (
            _png(np.random.default_rng(0).integers(0, 255, (28, 28), np.uint8))[:400],
            "cannot decode",
            422,
        ),
        (_png(np.zeros((28, 28, 3), np.uint8)), "3 channel", 422),
        (_png(np.zeros((30, 28), np.uint8)), "30x28", 422),
        (_png(np.zeros((28, 28), np.uint16)), "16/32-bit", 422),
        (_png(np.zeros((28, 28, 4), np.uint8)), "alpha", 422),
    ],
    ids=["empty", "not-image", "truncated", "rgb", "size", "16bit", "alpha"],
)
def test_bad_files_are_clear_errors(data: bytes, message: str, status: int) -> None:
    with pytest.raises(InputError, match=message) as err:
        decode_image(data, GRAY, LIMITS)
    assert err.value.status == status


def test_decompression_bomb_refused_before_decoding() -> None:
    big = Image.new("1", (5000, 5000))  # 25 Mpx declared, a few kB on the wire
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(InputError, match="exceeds") as err:
        decode_image(buf.getvalue(), GRAY, LIMITS)
    assert err.value.status == 413


def test_animated_and_oversized_files() -> None:
    frames = [Image.fromarray(np.full((28, 28), v, np.uint8)) for v in (0, 255)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match="animated"):
        decode_image(buf.getvalue(), GRAY, LIMITS)
    with pytest.raises(InputError) as err:
        decode_image(b"x" * 100, GRAY, Limits(max_image_bytes=10))
    assert err.value.status == 413
    # Only the PNG and JPEG parsers ever see a caller's bytes: before, every format PIL knows
    # was tried (and its parser ran) before the format was refused.
    for fmt in ("GIF", "BMP", "TIFF"):
        other = io.BytesIO()
        frames[0].save(other, format=fmt)
        with pytest.raises(InputError, match="not a PNG or JPEG"):
            decode_image(other.getvalue(), GRAY, LIMITS)


def test_an_image_of_the_wrong_size_is_refused_by_its_header() -> None:
    # A PNG whose header declares 2000 x 2000 and whose pixel data is cut off: refused for
    # its size without decoding (before, it was decoded first, and failed on the cut).
    for mode in ("L", "P"):  # the fast path's kind of PNG, and Image.open's
        buf = io.BytesIO()
        Image.new(mode, (2000, 2000)).save(buf, format="PNG")
        cut = buf.getvalue()[:200]
        with pytest.raises(InputError, match="2000x2000 \\(by its header\\)"):
            decode_image(cut, GRAY, LIMITS)
    # With resize, a size other than the model's is decoded and resized.
    buf = io.BytesIO()
    Image.new("L", (56, 56)).save(buf, format="PNG")
    assert decode_image(buf.getvalue(), GRAY, Limits(resize=True)).shape == GRAY


def test_arrays_nan_range_dtype() -> None:
    good = np.zeros((28, 28), np.float32)
    assert decode_array(good, GRAY, LIMITS).dtype == np.uint8
    bad = good.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        decode_array(bad, GRAY, LIMITS)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        decode_array(good + 2, GRAY, LIMITS)
    with pytest.raises(InputError, match="dtype"):
        decode_array(np.zeros((28, 28), np.complex64), GRAY, LIMITS)


def test_npy_batches_and_no_pickle() -> None:
    batch = np.zeros((5, 28, 28), np.uint8)
    items = split_batch(load_npy(_npy(batch), LIMITS), GRAY, LIMITS)
    assert len(items) == 5
    rgb_one = np.zeros((28, 28, 3), np.uint8)
    assert len(split_batch(rgb_one, (3, 28, 28), LIMITS)) == 1
    with pytest.raises(InputError, match="cannot read NPY"):
        load_npy(_npy(np.array([{"a": 1}], dtype=object)), LIMITS)
    with pytest.raises(InputError, match="cannot read NPY"):
        load_npy(b"\x93NUMPY garbage", LIMITS)


def test_resize_when_configured() -> None:
    arr = np.zeros((56, 40), np.uint8)
    out = decode_image(_png(arr), GRAY, Limits(resize=True))
    assert out.shape == GRAY


# --- plain PNGs: the frames path's decoder, checked against Image.open -----------------------


Outcome = np.ndarray | tuple[str, int]  # pixels, or an error's (reason, status)


def _through_image_open(data: bytes, shape: tuple[int, int, int],
                        monkeypatch: pytest.MonkeyPatch) -> Outcome:  # fmt: skip
    """What ``decode_image`` gives without the plain-PNG path."""
    with monkeypatch.context() as m:
        m.setattr(decode, "_plain_png", lambda data, shape, limits: None)
        return _outcome(data, shape)


def _outcome(data: bytes, shape: tuple[int, int, int]) -> Outcome:
    try:
        return decode_image(data, shape, LIMITS)
    except InputError as exc:
        return exc.reason, exc.status


def _same(a: Outcome, b: Outcome) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def _digits_pngs(digits: Any) -> list[bytes]:
    """Camera-like frames: every zlib level, with and without PIL's optimiser (so rows come
    with each of the five PNG filters)."""
    return [_png(im, compress_level=i % 10, optimize=i % 7 == 0)
            for i, im in enumerate(digits.test.images[:120, 0])]  # fmt: skip


def test_plain_pngs_take_the_fast_path_and_decode_as_image_open_does(
    digits: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    grey = [*_digits_pngs(digits), _png(rng.integers(0, 256, (28, 28), np.uint8))]
    rgb = [_png(rng.integers(0, 256, (28, 28, 3), np.uint8)) for _ in range(10)]
    assert all(decode._plain_png(d, GRAY, LIMITS) is not None for d in grey)
    assert all(decode._plain_png(d, (3, 28, 28), LIMITS) is not None for d in rgb)
    # Grey and RGB frames for a grey and an RGB model: the same pixels, or the same refusal.
    for data, shape in [(d, s) for d in grey + rgb for s in (GRAY, (3, 28, 28))]:
        fast = _outcome(data, shape)
        assert _same(fast, _through_image_open(data, shape, monkeypatch)), fast


def test_other_pngs_are_left_to_image_open() -> None:
    from PIL import PngImagePlugin

    arr = np.random.default_rng(2).integers(0, 256, (28, 28), np.uint8)
    text = PngImagePlugin.PngInfo()
    text.add_text("camera", "cam3")
    plain = _png(arr)
    paletted = io.BytesIO()
    Image.fromarray(arr).convert("P").save(paletted, format="PNG")
    others = {
        "16-bit": _png(arr.astype(np.uint16) * 257),
        "paletted": paletted.getvalue(),
        "grey with alpha": _png(np.stack([arr, arr], axis=-1)),
        "a text chunk": _png(arr, pnginfo=text),
        "bytes after IEND": plain + b"\x00",
        "a wrong checksum": plain[:-1] + bytes([plain[-1] ^ 1]),
    }
    limits = Limits(max_pixels=32 * 32)
    for name, data in others.items():
        assert decode._plain_png(data, GRAY, limits) is None, name
    assert decode._plain_png(plain, GRAY, limits) is not None
    with pytest.raises(InputError, match="exceeds") as err:  # refused by its header
        decode._plain_png(_png(np.zeros((64, 64), np.uint8)), GRAY, limits)
    assert err.value.status == 413
    # Image.open's way, as before: a text chunk is no matter, a palette is colour.
    assert np.array_equal(decode_image(others["a text chunk"], GRAY, LIMITS)[0], arr)
    with pytest.raises(InputError, match="3 channel"):
        decode_image(others["paletted"], GRAY, LIMITS)


def test_damaged_pngs_give_what_image_open_gives(
    digits: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Flipped bytes and cut files: each is decoded the same or refused with the same reason.
    rng = np.random.default_rng(3)
    pngs = _digits_pngs(digits)
    for _ in range(600):
        data = bytearray(pngs[int(rng.integers(len(pngs)))])
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        if rng.random() < 0.2:
            data = data[: int(rng.integers(len(data)))]
        fast = _outcome(bytes(data), GRAY)
        assert _same(fast, _through_image_open(bytes(data), GRAY, monkeypatch)), fast

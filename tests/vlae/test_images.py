"""Input validation: every kind of bad image is a clear per-item error, and no bytes at all
make ``decode_image`` raise anything but ``InputError``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

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
    for mode in ("L", "P"):  # grey, and paletted
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


# --- fuzzing: whatever a client sends, the answer is pixels or an InputError -----------------


def _valid_files() -> list[bytes]:
    """One valid file of each kind a client sends, grey and colour."""
    rng = np.random.default_rng(4)
    grey = rng.integers(0, 256, (28, 28), np.uint8)
    rgb = rng.integers(0, 256, (28, 28, 3), np.uint8)
    jpegs = []
    for arr in (grey, rgb):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG")
        jpegs.append(buf.getvalue())
    return [_png(grey), _png(rgb), _png(grey, optimize=True), *jpegs, _npy(grey),
            _npy(rgb), _npy(grey.astype(np.float32) / 255)]  # fmt: skip


VALID = _valid_files()
SHAPES = st.sampled_from([GRAY, (3, 28, 28)])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_refuse(data: bytes, shape: tuple[int, int, int], resize: bool) -> None:
    """``decode_image`` gives the model's pixels or an ``InputError``; anything else fails."""
    try:
        out = decode_image(data, shape, Limits(resize=resize))
    except InputError as err:
        assert err.reason and err.status in (413, 422)
    else:
        assert out.dtype == np.uint8 and out.shape == shape


@FUZZ
@given(prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\x93NUMPY\x01\x00"]),
       body=st.binary(max_size=512), shape=SHAPES, resize=st.booleans())  # fmt: skip
def test_random_bytes_decode_or_are_refused(
    prefix: bytes, body: bytes, shape: tuple[int, int, int], resize: bool
) -> None:
    _decode_or_refuse(prefix + body, shape, resize)


@FUZZ
@given(which=st.integers(0, len(VALID) - 1), shape=SHAPES, resize=st.booleans(),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=6),
       cut=st.none() | st.floats(0, 1), insert=st.binary(max_size=16))  # fmt: skip
def test_damaged_files_decode_or_are_refused(
    which: int,
    shape: tuple[int, int, int],
    resize: bool,
    edits: list[tuple[float, int]],
    cut: float | None,
    insert: bytes,
) -> None:
    # Bytes overwritten (mostly near the front, where the headers are), some inserted, the
    # end cut off: a header's sizes and lengths, a chunk's checksum, the compressed data.
    data = bytearray(VALID[which])
    for at, value in edits:
        data[int(at**2 * len(data))] = value
    data[int(edits[0][0] * len(data)) : int(edits[0][0] * len(data))] = insert
    if cut is not None:
        data = data[: max(1, int(cut * len(data)))]
    _decode_or_refuse(bytes(data), shape, resize)


def test_an_npy_header_cannot_ask_for_more_memory_than_the_file_holds() -> None:
    data = _npy(np.zeros((28, 28), np.uint8))
    for shape in (b"(28000000000, 28)", b"(99999999999999999999, 28)", b"(-1, 28)"):
        with pytest.raises(InputError, match="cannot read NPY"):
            decode_image(data.replace(b"(28, 28)", shape), GRAY, LIMITS)

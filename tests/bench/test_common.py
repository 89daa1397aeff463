"""The benchmarks' load generators run as a line's clients: at a lower CPU priority, on a
thread of their own, so that the thread that started them keeps its own. A report's command
can be pasted into a shell. The hypervisor's steal is read as the VM counts it. Frames go out
as the PNG a camera would send, grey or colour."""

from __future__ import annotations

import io
import itertools
import os
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from bench.common import CLIENT_NICE, StealWatch, command_line, on_client_thread, png_frames
from bench.speed_inspection import frame_steps


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_a_client_thread_runs_at_the_client_nice_and_the_caller_keeps_its_own() -> None:
    caller = _nice()
    assert on_client_thread(_nice) == max(CLIENT_NICE, caller)
    assert _nice() == caller


def test_a_client_thread_raises_its_error_in_the_caller() -> None:
    def fail(what: str) -> None:
        raise ValueError(what)

    with pytest.raises(ValueError, match="no such frame"):
        on_client_thread(fail, "no such frame")


def test_the_recorded_command_quotes_what_a_shell_would_split_and_hides_the_data_path() -> None:
    argv = ["--b", '{"batch_wait_timeout_s": 0.005}', "--data-dir", "/d/mnist"]
    assert command_line("bench.ab", argv) == (
        """python -m bench.ab --b '{"batch_wait_timeout_s": 0.005}' --data-dir $DATA_DIR"""
    )


def test_steal_is_the_counted_seconds_over_the_wall_seconds_between_samples() -> None:
    watch = StealWatch()
    watch.samples = [(100.0, 5.0), (101.0, 5.2), (102.0, 5.8), (103.0, 5.8)]
    assert watch.cores(100.0, 102.0) == pytest.approx(0.4)
    assert watch.cores(101.5, 103.0) == pytest.approx(0.0)
    assert watch.cores(101.2, 101.8) is None  # no two samples inside


def test_steal_watch_samples_while_the_block_runs() -> None:
    with StealWatch(every_s=0.05) as watch:
        time.sleep(0.3)
    n = len(watch.samples)
    assert n >= 4
    pairs = itertools.pairwise(watch.samples)
    assert all(b[0] > a[0] and b[1] >= a[1] for a, b in pairs)  # time and steal go forward
    time.sleep(0.1)
    assert len(watch.samples) == n  # stopped with the block
    cores = watch.cores(watch.samples[0][0], watch.samples[-1][0])
    assert cores is not None and 0.0 <= cores <= (os.cpu_count() or 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_frames_are_the_images_as_png_grey_or_colour(channels: int) -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, channels, 8, 6), dtype=np.uint8)
    pngs = png_frames(images, 2)
    assert len(pngs) == 2
    for png, img in zip(pngs, images, strict=False):
        back = np.asarray(Image.open(io.BytesIO(png)))
        assert np.array_equal(back, img[0] if channels == 1 else img.transpose(1, 2, 0))


def test_frames_steps_of_a_slow_model_are_whole_and_distinct() -> None:
    # A 256 x 256 model scores a few images a second: its steps must not round to 0.
    assert frame_steps(9.0) == [2, 4, 6]
    assert frame_steps(0.5) == [1]
    assert frame_steps(30_000) == [7_500, 15_000, 22_000]

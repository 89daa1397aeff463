"""Regions of an anomaly map above a pixel threshold."""

from __future__ import annotations

import numpy as np

from vlae.regions import MAX_REGIONS, find_regions


def test_regions_are_connected_components_largest_first() -> None:
    m = np.zeros((16, 16), np.float32)
    m[2:4, 3:8] = 5.0  # 10 pixels, peak 6 below
    m[3, 5] = 6.0
    m[10, 10] = 3.0  # touches the next one diagonally: one region of 2
    m[11, 11] = 2.5
    m[14, 1] = 0.9  # below the threshold
    regions, area = find_regions(m, 1.0)
    assert regions == [
        {"x": 3, "y": 2, "w": 5, "h": 2, "area": 10, "peak": 6.0},
        {"x": 10, "y": 10, "w": 2, "h": 2, "area": 2, "peak": 3.0},
    ]
    assert area == 12 / 256
    assert find_regions(m, 10.0) == ([], 0.0)


def test_regions_are_in_pixels_of_the_image_as_sent() -> None:
    m = np.zeros((8, 8), np.float32)
    m[2:4, 4:6] = 1.0
    regions, area = find_regions(m, 0.5, source_hw=(32, 16))  # sent 32 high, 16 wide
    assert regions == [{"x": 8, "y": 8, "w": 4, "h": 8, "area": 32, "peak": 1.0}]
    assert area == 4 / 64  # a share: the same at any scale


def test_at_most_sixteen_regions_but_the_area_counts_them_all() -> None:
    m = np.zeros((40, 40), np.float32)
    m[::4, ::4] = 1.0  # 100 separate pixels
    regions, area = find_regions(m, 0.5)
    assert len(regions) == MAX_REGIONS == 16
    assert area == 100 / 1600

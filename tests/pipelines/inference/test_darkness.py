"""pipelines.inference.darkness: the statistics on real photos, dark and normal, and the --only-dark rule."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipelines.demo.sample_photos import NORMAL_LAYOUT
from pipelines.inference.darkness import (
    DARKNESS_COLUMNS,
    DEFAULT_DARK_THRESHOLD,
    darkness_stats,
)
from tests.fixtures.photos import darken, fit_within, wheel_photo

DAY_PHOTOS = ("chelsea", "motorcycle", "flower", "coffee", "astronaut", "china")


@pytest.mark.parametrize("name", DAY_PHOTOS)
def test_a_day_photo_is_not_dark_and_its_darkened_copy_is(name):
    photo = fit_within(wheel_photo(name), 600, 400)
    day, night = darkness_stats(photo), darkness_stats(darken(photo))
    assert set(day) == set(DARKNESS_COLUMNS)
    assert day["darkness"] < DEFAULT_DARK_THRESHOLD <= night["darkness"]
    assert night["luma_mean"] < day["luma_mean"] / 3
    assert night["near_black"] > day["near_black"]
    assert day["luma_p50"] <= day["luma_p95"]


def test_statistics_match_a_direct_computation_on_known_pixels():
    half = np.zeros((100, 200, 3), dtype=np.uint8)
    half[:, 100:] = 200  # half black, half luma 200
    stats = darkness_stats(half)
    assert stats["near_black"] == 0.5
    assert stats["luma_mean"] == 100.0
    assert stats["luma_p95"] == 200.0
    assert stats["darkness"] == round(1 - 200 / 255, 4)
    white = np.full((10, 10, 3), 255, dtype=np.uint8)
    assert darkness_stats(white)["darkness"] == 0.0
    assert darkness_stats(np.zeros((1, 1, 3), dtype=np.uint8))["darkness"] == 1.0


def test_a_strided_copy_scores_a_big_photo_like_the_full_one_and_quickly():
    photo = fit_within(wheel_photo("motorcycle"), 4000, 2700)
    full = (photo.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).ravel()
    stats = darkness_stats(photo)
    assert abs(stats["luma_mean"] - full.mean()) < 2.0
    assert abs(stats["luma_p95"] - np.percentile(full, 95)) < 4.0
    started = time.perf_counter()
    for _ in range(10):
        darkness_stats(photo)
    assert (time.perf_counter() - started) / 10 < 0.05  # next to a decode of 10 megapixels


def test_the_night_sky_of_the_normal_set_counts_as_dark():
    """The one "normal" photo above the threshold: a deep-field sky, black with stars."""
    names = {photo for photo, _ in NORMAL_LAYOUT}
    assert "hubble" in names
    assert darkness_stats(wheel_photo("hubble"))["darkness"] >= DEFAULT_DARK_THRESHOLD

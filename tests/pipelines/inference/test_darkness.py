"""pipelines.inference.darkness: the statistics on real photos, dark and normal, and the --only-dark rule."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipelines.demo.sample_photos import NORMAL_LAYOUT, PHOTO_SOURCES
from pipelines.inference.darkness import (
    DARKNESS_COLUMNS,
    DEFAULT_DARK_THRESHOLD,
    DarkPolicy,
    darkness_stats,
)
from tests.fixtures.photos import darken, fit_within, wheel_photo

DAY_PHOTOS = tuple(name for name in PHOTO_SOURCES if name != "hubble")
# The score before issue 26: 1 - the 95th percentile of luma / 255, dark from 0.65.
OLD_THRESHOLD = 0.65


def old_darkness(stats: dict[str, float]) -> float:
    return 1 - stats["luma_p95"] / 255


def night_shot(rgb: np.ndarray, stops: float = 4.0, lit_share: float = 0.08) -> np.ndarray:
    """A camera-like low-light copy: the exposure cut by ``stops`` in linear light (sRGB taken as
    gamma 2.2), then a lit window, warm white (luma 244), over ``lit_share`` of the frame."""
    linear = (rgb.astype(np.float64) / 255.0) ** 2.2 * 2.0**-stops
    night = np.round(linear ** (1 / 2.2) * 255.0).astype(np.uint8)
    height, width = night.shape[:2]
    side = np.sqrt(lit_share)
    top, left = height // 8, width // 2
    night[top : top + round(height * side), left : left + round(width * side)] = (255, 244, 214)
    return night


@pytest.mark.parametrize("name", DAY_PHOTOS)
def test_a_day_photo_is_not_dark_and_its_darkened_copy_is(name):
    photo = fit_within(wheel_photo(name), 600, 400)
    day, night = darkness_stats(photo), darkness_stats(darken(photo))
    assert set(day) == set(DARKNESS_COLUMNS)
    assert day["darkness"] < DEFAULT_DARK_THRESHOLD <= night["darkness"]
    assert night["luma_mean"] < day["luma_mean"] / 3
    assert night["near_black"] > day["near_black"]
    assert day["luma_p50"] <= day["luma_p95"]


@pytest.mark.parametrize("name", DAY_PHOTOS)
def test_a_night_shot_with_a_lit_window_is_dark_though_its_highlights_are_bright(name):
    """What the 95th percentile got wrong on real low-light photos (DICM: 10 of 64 dark)."""
    photo = fit_within(wheel_photo(name), 600, 400)
    lit = darkness_stats(night_shot(photo))
    assert lit["luma_p95"] >= 240 and old_darkness(lit) < OLD_THRESHOLD
    assert lit["darkness"] >= DEFAULT_DARK_THRESHOLD
    assert DarkPolicy("skip").is_dark(lit["darkness"])
    # The window lightens the score, but less than it lightens the mean.
    unlit = darkness_stats(night_shot(photo, lit_share=0.0))
    assert unlit["darkness"] > lit["darkness"]
    score_shift = unlit["darkness"] - lit["darkness"]
    assert score_shift < (lit["luma_mean"] - unlit["luma_mean"]) / 255


def test_the_score_is_a_power_mean_of_luma_on_known_pixels():
    half = np.zeros((100, 200, 3), dtype=np.uint8)
    half[:, 100:] = 200  # half black, half luma 200
    stats = darkness_stats(half)
    assert stats["near_black"] == 0.5
    assert stats["luma_mean"] == 100.0
    assert stats["luma_p95"] == 200.0
    assert stats["darkness"] == round(1 - (200 / 255) / 8, 4)  # ((0 + (200/255)^(1/3)) / 2)^3
    for grey in (0, 40, 128, 255):
        uniform = np.full((10, 10, 3), grey, dtype=np.uint8)
        assert darkness_stats(uniform)["darkness"] == round(1 - grey / 255, 4)


def test_a_strided_copy_scores_a_big_photo_like_the_full_one_and_quickly():
    photo = fit_within(wheel_photo("motorcycle"), 4000, 2700)
    full = (photo.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).ravel()
    stats = darkness_stats(photo)
    assert abs(stats["luma_mean"] - full.mean()) < 2.0
    assert abs(stats["luma_p95"] - np.percentile(full, 95)) < 4.0
    full_score = 1 - np.mean((full / 255) ** (1 / 3)) ** 3
    assert abs(stats["darkness"] - full_score) < 0.01
    started = time.perf_counter()
    for _ in range(10):
        darkness_stats(photo)
    assert (time.perf_counter() - started) / 10 < 0.05  # next to a decode of 10 megapixels


def test_the_night_sky_of_the_normal_set_counts_as_dark():
    """The one "normal" photo above the threshold: a deep-field sky, black with stars."""
    names = {photo for photo, _ in NORMAL_LAYOUT}
    assert "hubble" in names
    assert darkness_stats(wheel_photo("hubble"))["darkness"] >= DEFAULT_DARK_THRESHOLD

"""The training-free baselines evaluate scores beside the generator."""

from __future__ import annotations

import numpy as np
import pytest

from enlightengan.baselines import gamma_correction, histogram_equalization
from tests.fixtures.photos import darken, fit_within, wheel_photo


@pytest.fixture(scope="module")
def dark_photo() -> np.ndarray:
    return darken(fit_within(wheel_photo("coffee"), 200, 150))


def luma(image: np.ndarray) -> float:
    return float((image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).mean())


def test_gamma_brightens_keeps_shape_and_black_white(dark_photo):
    out = gamma_correction(dark_photo)
    assert out.shape == dark_photo.shape and out.dtype == np.uint8
    assert luma(out) > 2 * luma(dark_photo)
    ends = np.array([[[0, 255, 128]]], dtype=np.uint8)
    np.testing.assert_array_equal(gamma_correction(ends, 1.0), ends)
    assert tuple(gamma_correction(ends, 0.5)[0, 0]) == (0, 255, 181)


def test_histogram_equalization_spreads_luma_and_keeps_hue(dark_photo):
    out = histogram_equalization(dark_photo)
    assert out.shape == dark_photo.shape and out.dtype == np.uint8
    assert 90 < luma(out) < 170
    levels = np.round(out.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    assert levels.max() - levels.min() > 200
    # The channel order of a strongly coloured pixel survives (no per-channel equalisation).
    source = dark_photo.reshape(-1, 3).astype(int)
    result = out.reshape(-1, 3).astype(int)
    saturated = (source.max(1) - source.min(1) > 10) & (result.max(1) < 255)
    assert saturated.sum() > 100
    np.testing.assert_array_equal(source[saturated].argmax(1), result[saturated].argmax(1))


def test_flat_image_is_returned_unchanged_and_bad_input_refused():
    flat = np.full((8, 8, 3), 40, dtype=np.uint8)
    np.testing.assert_array_equal(histogram_equalization(flat), flat)
    with pytest.raises(ValueError):
        gamma_correction(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        histogram_equalization(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        gamma_correction(flat, 0.0)

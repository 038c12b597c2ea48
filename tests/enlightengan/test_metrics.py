"""NIQE on real photos: the MATLAB reference's score on coffee, darkening, formats, bad input."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from enlightengan.metrics import imresize_matlab, load_pristine_model, niqe
from tests.fixtures.photos import darken, encode, wheel_photo


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return wheel_photo("coffee")


def test_pristine_model_ships_as_package_data():
    mean, covariance, window = load_pristine_model()
    assert mean.shape == (36,) and covariance.shape == (36, 36) and window.shape == (7, 7)
    np.testing.assert_allclose(covariance, covariance.T)
    assert window.sum() == pytest.approx(1.0)


def test_coffee_scores_like_the_matlab_reference(coffee):
    score = niqe(coffee)
    # Reference implementations (MATLAB via BasicSR / iqa-torch) give 4.06-4.12 on this photo.
    assert 4.0 <= score <= 4.2
    assert score == pytest.approx(4.11525, abs=1e-4)
    assert 4.0 <= niqe(coffee, luminance="gray") <= 4.2


def test_darkened_copy_scores_clearly_worse(coffee):
    assert niqe(darken(coffee)) > niqe(coffee) + 1.0


def test_other_photos_score_in_the_natural_range():
    for name in ("chelsea", "astronaut", "grace_hopper"):
        assert 2.0 < niqe(wheel_photo(name)) < 6.0, name


def test_score_is_identical_across_lossless_formats(coffee):
    direct = niqe(coffee)
    for fmt in ("PNG", "BMP", "TIFF"):
        decoded = np.asarray(Image.open(io.BytesIO(encode(coffee, fmt))).convert("RGB"))
        assert niqe(decoded) == direct, fmt
    lossy = np.asarray(Image.open(io.BytesIO(encode(coffee, "JPEG", quality=30))))
    assert niqe(lossy) != direct


def test_grayscale_input(coffee):
    grey = np.asarray(Image.fromarray(coffee).convert("L"))
    score = niqe(grey)
    assert 2.0 < score < 6.0
    assert niqe(grey[:, :, None]) == score
    stacked = np.repeat(grey[:, :, None], 3, axis=2)
    assert niqe(stacked, luminance="gray") == score


def test_crop_border_changes_the_region_scored(coffee):
    assert niqe(coffee, crop_border=4) == niqe(coffee[4:-4, 4:-4])


def test_too_small_image_is_refused_with_the_reason(coffee):
    with pytest.raises(ValueError, match="at least 96x96"):
        niqe(coffee[:95, :300])
    with pytest.raises(ValueError, match="at least 96x96"):
        niqe(coffee[:100, :100], crop_border=3)


def test_wrong_dtype_or_layout_is_refused(coffee):
    with pytest.raises(ValueError, match="uint8"):
        niqe(coffee.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        niqe(np.zeros((200, 200, 4), np.uint8))
    with pytest.raises(ValueError, match="luminance"):
        niqe(coffee, luminance="lab")


def test_textureless_image_scores_nan():
    assert np.isnan(niqe(np.zeros((200, 300, 3), np.uint8)))


def test_imresize_matches_antialiased_bicubic_and_keeps_constants(coffee):
    grey = coffee[..., 1].astype(np.float64)
    halved = imresize_matlab(grey, 0.5)
    assert halved.shape == (200, 300)
    reference = F.interpolate(
        torch.from_numpy(grey)[None, None], scale_factor=0.5, mode="bicubic", antialias=True
    )[0, 0].numpy()
    # Same kernel (Keys, a=-0.5, stretched x2) away from the borders; MATLAB mirrors at borders.
    np.testing.assert_allclose(halved[4:-4, 4:-4], reference[4:-4, 4:-4], atol=1e-9)
    assert not np.allclose(halved[0], reference[0])
    assert imresize_matlab(np.full((97, 61), 7.0), 0.5).shape == (49, 31)
    np.testing.assert_allclose(imresize_matlab(np.full((97, 61), 7.0), 0.5), 7.0)


def test_niqe_is_fast_on_a_600x400_photo(coffee):
    niqe(coffee)
    started = time.perf_counter()
    niqe(coffee)
    assert time.perf_counter() - started < 1.0


def test_psnr_of_known_error_and_of_identical_images(coffee):
    from enlightengan.metrics import psnr

    shifted = np.clip(coffee.astype(np.int16) + 5, 0, 255).astype(np.uint8)
    mse = np.mean((shifted.astype(np.float64) - coffee) ** 2)
    assert psnr(shifted, coffee) == pytest.approx(10 * np.log10(255**2 / mse))
    assert psnr(coffee, coffee) == float("inf")
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(coffee, coffee[:-1])


def test_ssim_matches_scikit_image_and_falls_with_noise(coffee):
    from skimage.metrics import structural_similarity

    from enlightengan.metrics import ssim

    rng = np.random.default_rng(0)
    noisy = [
        np.clip(coffee + rng.normal(0, sigma, coffee.shape), 0, 255).astype(np.uint8)
        for sigma in (5, 20, 60)
    ]
    values = [ssim(image, coffee) for image in noisy]
    assert ssim(coffee, coffee) == pytest.approx(1.0)
    assert values[0] > values[1] > values[2]
    for image, value in zip(noisy, values, strict=True):
        reference = structural_similarity(
            image,
            coffee,
            channel_axis=2,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
        )
        assert value == pytest.approx(reference, abs=0.01)  # borders: replicate vs cropped

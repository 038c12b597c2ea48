"""NIQE: the Natural Image Quality Evaluator (Mittal, Soundararajan and Bovik, IEEE SPL 2013).

A no-reference score: lower means the image's local statistics are closer to those of pristine
natural photographs. This module follows the authors' MATLAB release (``computequality.m``):

1. Luminance: the Y channel of MATLAB's ``rgb2ycbcr`` (16-235 range) by default, or MATLAB's
   ``rgb2gray``; rounded to integers as the uint8 MATLAB pipeline does.
2. The image is cropped to a whole number of 96x96 blocks.
3. At two scales (full, then MATLAB ``imresize(im, 0.5)`` with antialiased bicubic) the mean
   subtracted contrast normalised coefficients (MSCN, eq. 1 of the paper)
   ``(I - mu) / (sigma + 1)`` are computed with a 7x7 Gaussian window (sigma 7/6, replicate
   borders).
4. Per block: an asymmetric generalised Gaussian (AGGD) fit of the MSCN coefficients (shape and
   mean scale) and AGGD fits of the products of horizontally, vertically and diagonally
   adjacent coefficients (shape, mean, left and right scales): 18 features per scale, 36 in
   all.
5. The quality is the Mahalanobis-like distance (eq. 4 of the paper) between the multivariate
   Gaussian fitted to the blocks' features and the pristine model shipped as package data,
   using the pseudo-inverse of the average of the two covariances.

The pristine model (``data/niqe_pris_params.npz``) comes from the authors' MATLAB release as
redistributed under the Apache License 2.0 by BasicSR and iqa-torch; see ``data/NOTICE-niqe.md``.
"""

from __future__ import annotations

import functools
import importlib.resources
import math

import numpy as np

NIQE_BLOCK_SIZE = 96
LUMINANCE_MODES = ("y", "gray")
# The AGGD shape is found by table look-up over this grid, as the MATLAB code does.
_SHAPE_GRID = np.arange(0.2, 10.0005, 0.001)
# circshift offsets (rows, columns) of the four neighbour directions in the MATLAB code.
_NEIGHBOUR_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))


@functools.lru_cache(maxsize=1)
def load_pristine_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(mu (36,), covariance (36, 36), gaussian_window (7, 7))`` of the pristine model."""
    resource = importlib.resources.files("enlightengan") / "data" / "niqe_pris_params.npz"
    with resource.open("rb") as handle, np.load(handle) as params:
        mean = params["mu_pris_param"].reshape(-1).astype(np.float64)
        covariance = params["cov_pris_param"].astype(np.float64)
        window = params["gaussian_window"].astype(np.float64)
    for shared in (mean, covariance, window):
        shared.flags.writeable = False  # cached and shared by every caller
    return mean, covariance, window


def _gamma(values: np.ndarray) -> np.ndarray:
    """Gamma function for positive arguments (no scipy dependency)."""
    log_gamma = np.frompyfunc(math.lgamma, 1, 1)(np.asarray(values, dtype=np.float64))
    return np.exp(log_gamma.astype(np.float64))


@functools.lru_cache(maxsize=1)
def _generalised_gaussian_ratio_table() -> np.ndarray:
    """rho(a) = Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) over the shape grid (Sharifi & Leon-Garcia)."""
    grid = _SHAPE_GRID
    return _gamma(2.0 / grid) ** 2 / (_gamma(1.0 / grid) * _gamma(3.0 / grid))


def to_luminance(image: np.ndarray, mode: str = "y") -> np.ndarray:
    """uint8 RGB (H, W, 3) or grey (H, W) -> rounded float64 luminance in MATLAB's conventions."""
    if mode not in LUMINANCE_MODES:
        raise ValueError(f"luminance mode must be one of {LUMINANCE_MODES}, got {mode!r}")
    if image.ndim == 2:
        return image.astype(np.float64)
    rgb = image.astype(np.float64)
    if mode == "y":
        luminance = 16.0 + rgb @ np.array([65.481, 128.553, 24.966]) / 255.0
    else:
        luminance = rgb @ np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
    # MATLAB returns uint8 for uint8 input: round half away from zero (all values positive).
    return np.floor(luminance + 0.5)


def _cubic_kernel(distance: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as MATLAB's imresize uses."""
    x = np.abs(distance)
    x2, x3 = x * x, x * x * x
    near = (1.5 * x3 - 2.5 * x2 + 1.0) * (x <= 1)
    far = (-0.5 * x3 + 2.5 * x2 - 4.0 * x + 2.0) * ((x > 1) & (x <= 2))
    return near + far


def _imresize_matrix(in_length: int, scale: float) -> np.ndarray:
    """Dense (out, in) matrix of MATLAB's antialiased bicubic ``imresize`` along one axis.

    When shrinking, the kernel is stretched by 1/scale (antialiasing); borders are handled by
    mirroring indices (symmetric padding), exactly as MATLAB's ``contributions`` does.
    """
    out_length = math.ceil(in_length * scale)
    kernel_width = 4.0 / scale if scale < 1 else 4.0
    taps = math.ceil(kernel_width) + 2
    out_positions = np.arange(1, out_length + 1, dtype=np.float64)
    centres = out_positions / scale + 0.5 * (1.0 - 1.0 / scale)
    first = np.floor(centres - kernel_width / 2.0)
    indices = first[:, None] + np.arange(taps)[None, :]
    distance = centres[:, None] - indices
    if scale < 1:
        weights = scale * _cubic_kernel(scale * distance)
    else:
        weights = _cubic_kernel(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    source = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(out_length), taps), source.ravel()), weights.ravel())
    return matrix


def imresize_matlab(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(image, scale)`` (bicubic, antialiasing on) for a 2-D float image."""
    rows = _imresize_matrix(image.shape[0], scale)
    columns = _imresize_matrix(image.shape[1], scale)
    return rows @ image @ columns.T


def _gaussian_filter_replicate(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """``imfilter(image, window, 'replicate')`` for a separable (rank-one) symmetric window."""
    column_profile = window.sum(axis=1)
    row_profile = window.sum(axis=0) / column_profile.sum()
    radius = window.shape[0] // 2
    padded = np.pad(image, radius, mode="edge")
    height, width = image.shape
    vertical = sum(
        weight * padded[offset : offset + height, :] for offset, weight in enumerate(column_profile)
    )
    return sum(
        weight * vertical[:, offset : offset + width] for offset, weight in enumerate(row_profile)
    )


def mscn_coefficients(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Mean subtracted contrast normalised coefficients, (I - mu) / (sigma + 1) (eq. 1)."""
    local_mean = _gaussian_filter_replicate(image, window)
    local_variance = _gaussian_filter_replicate(image * image, window) - local_mean**2
    return (image - local_mean) / (np.sqrt(np.abs(local_variance)) + 1.0)


def _fit_aggd(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moment-matching AGGD fit of each row of ``samples`` (MATLAB ``estimateaggdparam``).

    Returns ``(shape, left_scale, right_scale)`` per row. Rows without negative or positive
    samples give NaN, as MATLAB's mean of an empty set does; those blocks are dropped later.
    """
    negative, positive = samples < 0, samples > 0
    squares = samples * samples
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt((squares * negative).sum(axis=1) / negative.sum(axis=1))
        right_std = np.sqrt((squares * positive).sum(axis=1) / positive.sum(axis=1))
        std_ratio = left_std / right_std
        moment_ratio = np.abs(samples).mean(axis=1) ** 2 / squares.mean(axis=1)
        normalised = moment_ratio * (std_ratio**3 + 1) * (std_ratio + 1) / (std_ratio**2 + 1) ** 2
    table = _generalised_gaussian_ratio_table()
    position = np.argmin((table[None, :] - normalised[:, None]) ** 2, axis=1)
    shape = _SHAPE_GRID[position]
    shape = np.where(np.isnan(normalised), np.nan, shape)
    with np.errstate(invalid="ignore"):
        scale_factor = np.sqrt(_gamma(1.0 / shape) / _gamma(3.0 / shape))
    return shape, left_std * scale_factor, right_std * scale_factor


def _block_features(coefficients: np.ndarray, block_size: int) -> np.ndarray:
    """The 18 NIQE features of every block of an MSCN map, rows in row-major block order."""
    rows, columns = coefficients.shape[0] // block_size, coefficients.shape[1] // block_size
    blocks = (
        coefficients[: rows * block_size, : columns * block_size]
        .reshape(rows, block_size, columns, block_size)
        .transpose(0, 2, 1, 3)
        .reshape(rows * columns, block_size, block_size)
    )
    flat = blocks.reshape(len(blocks), -1)
    shape, left, right = _fit_aggd(flat)
    features = [shape, (left + right) / 2.0]
    for shift in _NEIGHBOUR_SHIFTS:
        # circshift inside each block, like blkproc's per-block call in the MATLAB code
        products = flat * np.roll(blocks, shift, axis=(1, 2)).reshape(len(blocks), -1)
        shape, left, right = _fit_aggd(products)
        with np.errstate(invalid="ignore"):
            mean = (right - left) * (_gamma(2.0 / shape) / _gamma(1.0 / shape))
        features += [shape, mean, left, right]
    return np.stack(features, axis=1)


def niqe_features(luminance: np.ndarray) -> np.ndarray:
    """(blocks, 36) NIQE features of a 2-D float luminance image (cropped to whole blocks)."""
    _, _, window = load_pristine_model()
    block_rows = luminance.shape[0] // NIQE_BLOCK_SIZE
    block_columns = luminance.shape[1] // NIQE_BLOCK_SIZE
    image = luminance[: block_rows * NIQE_BLOCK_SIZE, : block_columns * NIQE_BLOCK_SIZE]
    per_scale = []
    for scale in (1, 2):
        per_scale.append(
            _block_features(mscn_coefficients(image, window), NIQE_BLOCK_SIZE // scale)
        )
        if scale == 1:
            image = imresize_matlab(image, 0.5)
    return np.concatenate(per_scale, axis=1)


def niqe(image: np.ndarray, *, crop_border: int = 0, luminance: str = "y") -> float:
    """NIQE score (lower is better) of a uint8 RGB (H, W, 3) or greyscale (H, W) image.

    ``crop_border`` pixels are removed from every side first. ``luminance`` selects MATLAB's
    ``rgb2ycbcr`` Y channel (``"y"``, as BasicSR and iqa-torch default to) or ``rgb2gray``.
    Raises ValueError for other dtypes or layouts, and for images smaller than one 96x96 block.
    Returns NaN when no block has any texture to fit (e.g. a uniformly black frame).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"NIQE expects a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"NIQE expects an (H, W) or (H, W, 3) image, got shape {image.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        image = image[crop_border:-crop_border, crop_border:-crop_border]
    height, width = image.shape[:2]
    if height < NIQE_BLOCK_SIZE or width < NIQE_BLOCK_SIZE:
        raise ValueError(
            f"NIQE needs at least {NIQE_BLOCK_SIZE}x{NIQE_BLOCK_SIZE} pixels after cropping "
            f"{crop_border} border pixels, got {height}x{width}"
        )
    features = niqe_features(to_luminance(image, luminance))
    if np.isnan(features).all(axis=0).any():
        return math.nan
    pristine_mean, pristine_covariance, _ = load_pristine_model()
    distorted_mean = np.nanmean(features, axis=0)
    complete = features[~np.isnan(features).any(axis=1)]
    if len(complete) >= 2:
        distorted_covariance = np.cov(complete, rowvar=False)
    else:
        # MATLAB's cov of a single observation is zero; numpy's would be NaN.
        distorted_covariance = np.zeros_like(pristine_covariance)
    inverse = np.linalg.pinv((pristine_covariance + distorted_covariance) / 2.0)
    difference = pristine_mean - distorted_mean
    return float(np.sqrt(difference @ inverse @ difference))


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images of one shape (higher is better)."""
    image, reference = _same_shape_uint8(image, reference)
    mse = np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """Structural similarity (Wang et al., IEEE TIP 2004) of two uint8 images, in [-1, 1].

    The paper's setting: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, computed
    per channel (replicate borders) and averaged over pixels and channels.
    """
    image, reference = _same_shape_uint8(image, reference)
    axis = np.arange(11) - 5
    profile = np.exp(-(axis**2) / (2 * 1.5**2))
    window = np.outer(profile, profile) / profile.sum() ** 2
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    channels_x = np.atleast_3d(image.astype(np.float64))
    channels_y = np.atleast_3d(reference.astype(np.float64))
    values = []
    for channel in range(channels_x.shape[2]):
        x, y = channels_x[..., channel], channels_y[..., channel]
        mean_x = _gaussian_filter_replicate(x, window)
        mean_y = _gaussian_filter_replicate(y, window)
        var_x = _gaussian_filter_replicate(x * x, window) - mean_x**2
        var_y = _gaussian_filter_replicate(y * y, window) - mean_y**2
        covariance = _gaussian_filter_replicate(x * y, window) - mean_x * mean_y
        numerator = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
        denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
        values.append(np.mean(numerator / denominator))
    return float(np.mean(values))


def _same_shape_uint8(image: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image, reference = np.asarray(image), np.asarray(reference)
    if image.dtype != np.uint8 or reference.dtype != np.uint8:
        raise ValueError("expected two uint8 images")
    if image.shape != reference.shape:
        raise ValueError(f"shapes differ: {image.shape} vs {reference.shape}")
    return image, reference

"""Training-free enhancement baselines the evaluation scores beside the generator.

Both work on uint8 RGB (H, W, 3) arrays and return the same shape and dtype.
"""

from __future__ import annotations

import numpy as np

# ITU-R BT.601 luma weights, as MATLAB's rgb2gray and the NIQE luminance use.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
DEFAULT_GAMMA = 1 / 2.2


def _check_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected a uint8 (H, W, 3) image, got {image.dtype} {tuple(image.shape)}"
        )
    return image


def gamma_correction(image: np.ndarray, gamma: float = DEFAULT_GAMMA) -> np.ndarray:
    """``out = 255 * (in / 255) ** gamma`` per channel; gamma < 1 brightens (default 1/2.2)."""
    image = _check_rgb(image)
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    table = np.round(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)
    return table[image]


def histogram_equalization(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of the luminance, colours kept.

    The luma ``Y`` is mapped through its own normalised cumulative histogram to ``Y'``; every
    channel is scaled by ``Y' / Y`` (clipped to 255), so hue survives where equalising each
    channel on its own would shift it.
    """
    image = _check_rgb(image)
    luma = image.astype(np.float64) @ _LUMA_WEIGHTS
    levels = np.clip(np.round(luma), 0, 255).astype(np.int64)
    histogram = np.bincount(levels.ravel(), minlength=256)
    cumulative = np.cumsum(histogram)
    first = cumulative[np.nonzero(histogram)[0][0]]
    span = cumulative[-1] - first
    if span == 0:
        return image.copy()
    mapping = np.clip((cumulative - first) / span * 255.0, 0, 255)
    target = mapping[levels]
    gain = target / np.maximum(luma, 0.5)
    return np.clip(np.round(image * gain[..., None]), 0, 255).astype(np.uint8)


BASELINES = {"gamma": gamma_correction, "histeq": histogram_equalization}

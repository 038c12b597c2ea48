"""Per-image scores shared by ``evaluate`` and the enhance report: mean luma and NIQE."""

from __future__ import annotations

import math

import numpy as np


def luma_mean(image: np.ndarray) -> float:
    """Mean BT.601 luma (0-255) of a uint8 RGB image."""
    return float((image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).mean())


def safe_niqe(image: np.ndarray) -> float:
    """NIQE, or NaN where it is undefined (smaller than one 96x96 block, no texture)."""
    from enlightengan.metrics import niqe

    try:
        return niqe(image)
    except ValueError:
        return math.nan

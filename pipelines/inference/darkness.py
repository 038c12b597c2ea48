"""How dark a photo is, measured on the CPU at decode time, and the ``--only-dark`` rule.

EnlightenGAN brightens whatever it is given: run on a well-exposed photo it washes it out. So
``enhance`` scores every decoded image and, with ``--only-dark``, sends only the dark ones through
the model. The statistics come from a strided copy of at most :data:`SCORE_SIDE` pixels on its
long side (a few thousand pixels of a 24-megapixel photo: cheap next to the decode itself):

* ``luma_mean``, ``luma_p50``, ``luma_p95``: BT.601 luma (0-255) mean, median and 95th
  percentile;
* ``near_black``: the share of pixels with luma below :data:`NEAR_BLACK_LUMA`;
* ``darkness``: the score ``--only-dark`` compares, ``1 - mean((luma / 255) ** (1/3)) ** 3``:
  one minus the power mean of luma with exponent 1/3 (the mean of the cube roots, cubed). 0 is
  all white, 1 all black, and a uniform grey of luma ``v`` scores ``1 - v / 255``. Every pixel
  counts, a bright one less than a dark one, so the lamp, lit window or moon of a night photo
  moves the score little; the 95th percentile used before (``1 - luma_p95 / 255``, threshold
  0.65) called such a photo bright once its lights covered 5 % of the frame, and so found 10 of
  the 64 DICM photos dark. How the score and :data:`DEFAULT_DARK_THRESHOLD` were chosen:
  ``docs/guides/enhance.md``, "Only the dark photos"; ``benchmarks/bench_darkness.py`` measures both error rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCORE_SIDE = 256
NEAR_BLACK_LUMA = 16
DARKNESS_POWER = 1 / 3
DEFAULT_DARK_THRESHOLD = 0.79
ONLY_DARK_MODES = ("skip", "copy")
# Manifest columns, in this order; NaN where the image was not decoded in that run.
DARKNESS_COLUMNS = ("darkness", "luma_mean", "luma_p50", "luma_p95", "near_black")
_LUMA_WEIGHTS = np.array([299, 587, 114], dtype=np.uint32)
# (luma / 255) ** DARKNESS_POWER of each luma: the score is a dot product with the histogram.
_POWERED_LUMA = (np.arange(256) / 255.0) ** DARKNESS_POWER


def darkness_stats(rgb: np.ndarray) -> dict[str, float]:
    """The :data:`DARKNESS_COLUMNS` of an RGB uint8 image (H, W, 3)."""
    height, width = rgb.shape[:2]
    step = max(1, math.ceil(max(height, width) / SCORE_SIDE))
    small = rgb[::step, ::step]
    luma = (small.astype(np.uint32) @ _LUMA_WEIGHTS + 500) // 1000
    counts = np.bincount(luma.ravel(), minlength=256)
    total = int(counts.sum())
    cumulative = np.cumsum(counts)
    p50, p95 = (int(np.searchsorted(cumulative, share * total)) for share in (0.5, 0.95))
    power_mean = (float(counts @ _POWERED_LUMA) / total) ** (1 / DARKNESS_POWER)
    return {
        "darkness": round(1.0 - power_mean, 4),
        "luma_mean": round(float(counts @ np.arange(256)) / total, 2),
        "luma_p50": float(p50),
        "luma_p95": float(p95),
        "near_black": round(float(cumulative[NEAR_BLACK_LUMA - 1]) / total, 4),
    }


def unknown_stats() -> dict[str, float]:
    """The darkness columns of an image that was not decoded."""
    return dict.fromkeys(DARKNESS_COLUMNS, math.nan)


@dataclass(frozen=True)
class DarkPolicy:
    """``--only-dark``: images whose ``darkness`` is below ``threshold`` are not enhanced;
    ``mode`` says what happens to them: ``skip`` (no output) or ``copy`` (the original bytes)."""

    mode: str
    threshold: float = DEFAULT_DARK_THRESHOLD

    def is_dark(self, darkness: float) -> bool:
        return darkness >= self.threshold

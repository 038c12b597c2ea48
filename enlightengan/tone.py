"""Tone transfer: the generator decides how much to brighten, the input keeps its detail.

A deviation from the reference, off unless a model's config or the caller turns it on
(:class:`~enlightengan.config.GeneratorConfig` ``tone_transfer_strength``). The generator's
output ``O`` and its input ``I`` (pixels in [0, 255]) give a per-pixel gain for each channel
``c``::

    g_c = log((O_c + 1) / (I_c + 1))

Each gain map is smoothed by a guided filter (He, Sun and Tang, "Guided Image Filtering",
TPAMI 2013, eqs. 7-8: within every window the smoothed map is an affine function of the guide,
``q = a * G + b``, with ``a = cov(G, g) / (var(G) + eps)`` and ``b = mean(g) - a * mean(G)``,
both averaged over the windows that cover a pixel) whose guide is the input's log luminance, so
the gain follows the input's edges without carrying the generator's fine texture. The result::

    T_c = clip(I_c * exp(strength * q_c), 0, 255)

keeps the input's detail at every scale below the filter's window and takes the generator's
brightening and colour balance above it. With ``dark_strength`` set, the strength depends on
how dark the input is: ``dark_strength`` for an input whose mean luma ``L`` is at most
``dark_luma``, ``strength`` from ``bright_luma`` up, and in between interpolated in
``log(1 + L)``, so a very dark photo is lifted further and one that was only a little dark is
not pushed past where a person would expose it.

Two further settings deal with noise, which a lift amplifies. ``denoise`` replaces ``I`` in
``T_c`` by a base layer from which the finest detail is filtered when it is at the level of the
input's noise: each channel guided-filtered by itself (the edge-preserving smoother of He et al.,
section 3.4) in a window of ``denoise_radius_fraction`` of the shorter side and with
``epsilon = (denoise * sigma)^2``, where ``sigma`` is the input luma's noise level estimated by
Immerkaer's operator ("Fast Noise Variance Estimation", CVIU 1996: the mean absolute response
to the difference of two Laplacians, times sqrt(pi / 2) / 6). Windows whose variance is well above
the noise keep their detail; flat ones lose the noise. With ``noise_low`` and ``noise_high`` set,
the extra lift of a dark input fades out as its ``sigma`` rises from ``noise_low`` to
``noise_high``: a clean dark photo is lifted by ``dark_strength``, a noisy one only by
``strength``, because lifting noise further costs more than the light gains. ``colour`` and
``dark_colour`` weigh the generator's colour balance: each channel's smoothed gain is
``q_Y + colour * (q_c - q_Y)``, ``q_Y`` the luma-weighted mean of the three, so 1 takes the
generator's colour correction as it is and 0 lifts the three channels alike; ``dark_colour``
applies to dark inputs with the same weight as ``dark_strength`` (the noise fade included), and
does so even when ``dark_strength`` is left unset.

The window's radius is a fraction of the image's
shorter side, so a photo and its thumbnail get the same result; large images are filtered at a
lower resolution (the "fast guided filter", He and Sun 2015: ``a`` and ``b`` computed on a
subsampled grid and upsampled bilinearly), which keeps time and memory linear in the pixels.

Why: a GAN trained on a few dozen photos on a CPU learns where and how much to brighten well
before it learns to draw texture that no-reference quality measures like NIQE accept. On the
64 real photos of DICM the shipped starter's own output scored NIQE 4.41, its brightening
transferred onto the input 3.74-3.77 (BENCHMARKS.md, "Tone transfer").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# BT.601 luma weights, as the NIQE and luma scores use.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# The guide is log(luma + 1) / LOG_SCALE, so it spans about [0, 1] and EPSILON reads as a
# variance on that scale.
LOG_SCALE = math.log(256.0)
# Low-resolution windows of at least this radius keep the fast filter close to the exact one.
LOW_RES_RADIUS = 8
# The denoising filter's smallest regulariser, in squared 0-255 grey levels (sigma 0.1).
MIN_DENOISE_EPSILON = 0.01


@dataclass(frozen=True)
class ToneTransfer:
    """How the generator's brightening is transferred onto the input.

    Attributes:
        strength: multiplies the smoothed log gain: 1 takes the generator's brightening as
            it is, below 1 brightens less (0 returns the input).
        radius_fraction: the guided filter's window radius over the image's shorter side.
        epsilon: the guided filter's regulariser: larger smooths across more of the input's
            edges.
        dark_strength: the strength for inputs of mean BT.601 luma at most ``dark_luma``;
            ``None``: ``strength`` whatever the input.
        dark_luma, bright_luma: mean lumas (0-255) where the strength is ``dark_strength``
            and ``strength``.
        denoise: the base layer's guided-filter regulariser in units of the input's noise
            level (``epsilon = (denoise * sigma)^2``); 0 keeps the input as it is.
        denoise_radius_fraction: that filter's window radius over the shorter side.
        noise_low, noise_high: estimated noise levels (0-255 luma units) between which the
            extra lift of a dark input fades out; ``None``: the lift ignores noise.
        colour: the weight of the generator's colour balance (1: as it is; 0: one gain for
            all three channels).
        dark_colour: that weight for dark inputs, weighted as ``dark_strength`` is (also when
            ``dark_strength`` is ``None``); ``None``: ``colour``.
    """

    strength: float = 1.0
    radius_fraction: float = 1 / 60
    epsilon: float = 0.01
    dark_strength: float | None = None
    dark_luma: float = 30.0
    bright_luma: float = 80.0
    denoise: float = 0.0
    denoise_radius_fraction: float = 1 / 300
    noise_low: float | None = None
    noise_high: float | None = None
    colour: float = 1.0
    dark_colour: float | None = None

    def validate(self) -> ToneTransfer:
        if not 0.0 <= self.strength <= 2.0:
            raise ValueError(f"tone transfer strength must be in [0, 2], got {self.strength}")
        if not 0.0 < self.radius_fraction <= 0.5:
            raise ValueError(
                f"tone transfer radius_fraction must be in (0, 0.5], got {self.radius_fraction}"
            )
        if not self.epsilon > 0.0:
            raise ValueError(f"tone transfer epsilon must be > 0, got {self.epsilon}")
        if self.dark_strength is not None and not 0.0 <= self.dark_strength <= 2.0:
            raise ValueError(
                f"tone transfer dark_strength must be None or in [0, 2], got {self.dark_strength}"
            )
        if not 0.0 <= self.dark_luma < self.bright_luma <= 255.0:
            raise ValueError(
                "tone transfer needs 0 <= dark_luma < bright_luma <= 255, got "
                f"{self.dark_luma} and {self.bright_luma}"
            )
        if not 0.0 <= self.denoise <= 10.0:
            raise ValueError(f"tone transfer denoise must be in [0, 10], got {self.denoise}")
        if not 0.0 < self.denoise_radius_fraction <= 0.05:
            raise ValueError(
                "tone transfer denoise_radius_fraction must be in (0, 0.05], got "
                f"{self.denoise_radius_fraction}"
            )
        if (self.noise_low is None) != (self.noise_high is None) or (
            self.noise_low is not None and not 0.0 <= self.noise_low < self.noise_high
        ):
            raise ValueError(
                "tone transfer needs both noise_low and noise_high (0 <= noise_low < "
                f"noise_high) or neither, got {self.noise_low} and {self.noise_high}"
            )
        for name in ("colour", "dark_colour"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.5:
                raise ValueError(f"tone transfer {name} must be in [0, 1.5], got {value}")
        return self

    def __call__(self, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` and ``outputs``: (B, 3, H, W) float pixels in [0, 255]; returns the
        input with the generator's smoothed gain applied, same shape, in [0, 255]."""
        if inputs.shape != outputs.shape or inputs.ndim != 4 or inputs.shape[1] != 3:
            raise ValueError(
                f"expected two (B, 3, H, W) batches of one shape, got {tuple(inputs.shape)} "
                f"and {tuple(outputs.shape)}"
            )
        inputs, outputs = inputs.float(), outputs.float()
        weights = torch.tensor(LUMA_WEIGHTS, device=inputs.device).view(1, 3, 1, 1)
        luma = (inputs * weights).sum(1, keepdim=True)
        guide = torch.log1p(luma) / LOG_SCALE
        log_gain = torch.log1p(outputs) - torch.log1p(inputs)
        radius = max(1, int(min(inputs.shape[-2:]) * self.radius_fraction))
        smoothed = guided_filter(guide, log_gain, radius, self.epsilon)
        uses_noise = self.denoise != 0.0 or self.noise_low is not None
        noise = noise_level(luma) if uses_noise else luma.new_zeros(luma.shape[0])
        dark = self.dark_weights(luma.mean((-3, -2, -1)), noise).view(-1, 1, 1, 1)
        strengths = self.strength + (self._dark_strength - self.strength) * dark
        colours = self.colour + (self._dark_colour - self.colour) * dark
        if self.colour != 1.0 or self._dark_colour != 1.0:
            luma_gain = (smoothed * weights).sum(1, keepdim=True)
            smoothed = luma_gain + colours * (smoothed - luma_gain)
        base = inputs if self.denoise == 0.0 else self._denoised(inputs, noise)
        # The gain multiplies I, not I + 1: black stays black, as in the scene.
        return (base * torch.exp(strengths * smoothed)).clamp_(0.0, 255.0)

    @property
    def _dark_strength(self) -> float:
        return self.strength if self.dark_strength is None else self.dark_strength

    @property
    def _dark_colour(self) -> float:
        return self.colour if self.dark_colour is None else self.dark_colour

    def _denoised(self, inputs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        radius = max(1, int(min(inputs.shape[-2:]) * self.denoise_radius_fraction))
        # A flat or synthetic image has no measurable noise; the floor keeps its windows finite.
        epsilon = (self.denoise * noise).square().clamp_min(MIN_DENOISE_EPSILON).view(-1, 1, 1, 1)
        channels = [
            guided_filter(channel, channel, radius, epsilon, subsample=False)
            for channel in inputs.split(1, dim=1)
        ]
        return torch.cat(channels, dim=1)

    def dark_weights(self, mean_lumas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """How far each input gets the dark settings, in [0, 1]: 1 at mean luma ``dark_luma``
        and below, 0 from ``bright_luma`` up (interpolated in log(1 + luma) between), times
        the fade over ``noise_low``..``noise_high`` of the estimated noise when those are set."""
        position = (torch.log1p(mean_lumas) - math.log1p(self.dark_luma)) / (
            math.log1p(self.bright_luma) - math.log1p(self.dark_luma)
        )
        weights = 1.0 - position.clamp(0.0, 1.0)
        if self.noise_low is not None:
            fade = (self.noise_high - noise) / (self.noise_high - self.noise_low)
            weights = weights * fade.clamp(0.0, 1.0)
        return weights

    def strengths(
        self, mean_lumas: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The strength for inputs of these mean lumas (0-255) and estimated noise levels
        (:func:`noise_level`; needed only with ``noise_low`` set), one per image."""
        if noise is None:
            noise = torch.zeros_like(mean_lumas)
        dark = self.dark_weights(mean_lumas, noise)
        return self.strength + (self._dark_strength - self.strength) * dark


def noise_level(luma: torch.Tensor) -> torch.Tensor:
    """The standard deviation of white noise in each (B, 1, H, W) luma image, one per image
    (Immerkaer 1996: ``sqrt(pi / 2) / (6 (W - 2) (H - 2))`` times the summed absolute response to
    the mask ``[[1, -2, 1], [-2, 4, -2], [1, -2, 1]]``, which cancels smooth gradients)."""
    if min(luma.shape[-2:]) < 3:
        return luma.new_zeros(luma.shape[0])
    mask = luma.new_tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    response = F.conv2d(luma, mask.view(1, 1, 3, 3)).abs().mean((-3, -2, -1))
    return response * (math.sqrt(math.pi / 2) / 6.0)


def box_mean(values: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2r+1)^2 window around each pixel of (B, C, H, W) ``values``, counting
    only pixels inside the image; running sums make it cost the same for any radius."""
    total = _box_sum(_box_sum(values.double(), radius, -2), radius, -1)
    ones = torch.ones((1, 1, *values.shape[-2:]), dtype=torch.float64, device=values.device)
    count = _box_sum(_box_sum(ones, radius, -2), radius, -1)
    return (total / count).to(values.dtype)


def _box_sum(values: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    length = values.shape[dim]
    shape = list(values.shape)
    shape[dim] = 1
    running = torch.cat([values.new_zeros(shape), values.cumsum(dim)], dim)
    positions = torch.arange(length, device=values.device)
    upper = (positions + radius + 1).clamp(max=length)
    lower = (positions - radius).clamp(min=0)
    return running.index_select(dim, upper) - running.index_select(dim, lower)


def guided_filter(
    guide: torch.Tensor,
    source: torch.Tensor,
    radius: int,
    epsilon: float | torch.Tensor,
    subsample: bool = True,
) -> torch.Tensor:
    """Filter ``source`` (B, C, H, W) guided by ``guide`` (B, 1, H, W) (He et al. 2013,
    eqs. 7-8), on a grid subsampled so that the window keeps at least LOW_RES_RADIUS (unless
    ``subsample`` is off: a filter meant to remove pixel-level noise must see every pixel).
    ``epsilon``: one value, or a (B, 1, 1, 1) tensor of one per image."""
    height, width = guide.shape[-2:]
    step = max(1, radius // LOW_RES_RADIUS) if subsample else 1
    if step > 1:
        size = (math.ceil(height / step), math.ceil(width / step))
        low_guide = F.adaptive_avg_pool2d(guide, size)
        low_source = F.adaptive_avg_pool2d(source, size)
        radius = max(1, round(radius / step))
    else:
        low_guide, low_source = guide, source
    mean_guide = box_mean(low_guide, radius)
    mean_source = box_mean(low_source, radius)
    covariance = box_mean(low_guide * low_source, radius) - mean_guide * mean_source
    # Rounding can leave a flat window's variance a hair below zero.
    variance = (box_mean(low_guide * low_guide, radius) - mean_guide * mean_guide).clamp_min(0.0)
    slope = covariance / (variance + epsilon)
    offset = mean_source - slope * mean_guide
    slope, offset = box_mean(slope, radius), box_mean(offset, radius)
    if step > 1:
        slope = F.interpolate(slope, size=(height, width), mode="bilinear", align_corners=False)
        offset = F.interpolate(offset, size=(height, width), mode="bilinear", align_corners=False)
    return slope * guide + offset

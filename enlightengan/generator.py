"""The attention-guided U-Net generator of EnlightenGAN (Jiang et al., TIP 2021, Sec. III-A).

The self-regularised attention map is A = 1 - Y with Y = 0.299 R + 0.587 G + 0.114 B of the
input mapped to [0, 1] (paper Eq. 1 uses the illumination channel). A is max-pooled into a
pyramid that multiplies every encoder skip and the bottleneck; the network predicts a residual
that is also multiplied by A, so output = input + A * residual.

Module attribute names equal the authors' parameter names (``conv1_1``, ``bn1_1``, ...,
``deconv5``, ..., ``conv10``), so their released weights load without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from enlightengan.config import CONV_BIAS_INITS, GeneratorConfig

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
LEVELS = 5


def attention_map(images: torch.Tensor) -> torch.Tensor:
    """A = 1 - Y for RGB images in [-1, 1]: (B, 3, H, W) -> (B, 1, H, W), no normalisation."""
    unit = (images + 1.0) / 2.0
    red, green, blue = unit[:, 0:1], unit[:, 1:2], unit[:, 2:3]
    luma = LUMA_WEIGHTS[0] * red + LUMA_WEIGHTS[1] * green + LUMA_WEIGHTS[2] * blue
    return 1.0 - luma


def reference_init(network: nn.Module, conv_bias_init: str) -> None:
    """The reference's ``weights_init`` on freshly built layers: conv weights N(0, 0.02),
    norm weights N(1, 0.02) and biases 0.

    Conv biases keep the uniform init PyTorch drew when the layer was built, which the
    reference leaves alone, unless ``conv_bias_init`` is ``zero``.
    """
    if conv_bias_init not in CONV_BIAS_INITS:
        raise ValueError(f"unknown conv_bias_init {conv_bias_init!r}")
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if conv_bias_init == "zero" and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.SyncBatchNorm | nn.InstanceNorm2d):
            if module.weight is not None:
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)


def make_norm(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "sync_batch":
        return nn.SyncBatchNorm(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}")


class Generator(nn.Module):
    """EnlightenGAN's generator; input and output are RGB in [-1, 1], any height and width.

    ``forward`` pads to a multiple of ``pad_multiple`` (reflection, split floor/ceil), halves
    very wide inputs as the reference does, and crops back, so callers never pad. The output
    is not clamped: clamp when converting to pixels.
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config or GeneratorConfig()
        self.config.validate()
        widths = [self.config.base_channels * 2**level for level in range(LEVELS)]
        norm = self.config.norm

        in_channels = 4
        for level, width in enumerate(widths, start=1):
            self._add_block(f"{level}_1", in_channels, width, norm)
            self._add_block(f"{level}_2", width, width, norm)
            in_channels = width

        for step, level in enumerate(range(LEVELS - 1, 0, -1)):
            deep, skip = widths[level], widths[level - 1]
            name = LEVELS + 1 + step
            setattr(self, f"deconv{LEVELS + step}", nn.Conv2d(deep, skip, 3, padding=1))
            self._add_block(f"{name}_1", 2 * skip, skip, norm)
            last = level == 1
            self._add_block(f"{name}_2", skip, skip, "none" if last else norm)
        self.conv10 = nn.Conv2d(widths[0], 3, 1)
        reference_init(self, self.config.conv_bias_init)

    def _add_block(self, suffix: str, in_channels: int, out_channels: int, norm: str) -> None:
        setattr(self, f"conv{suffix}", nn.Conv2d(in_channels, out_channels, 3, padding=1))
        if norm != "none":
            setattr(self, f"bn{suffix}", make_norm(norm, out_channels))

    def _block(self, suffix: str, features: torch.Tensor) -> torch.Tensor:
        """conv 3x3 -> LeakyReLU(0.2) -> norm: the reference puts the norm after the activation."""
        features = F.leaky_relu(getattr(self, f"conv{suffix}")(features), 0.2)
        norm = getattr(self, f"bn{suffix}", None)
        return norm(features) if norm is not None else features

    def reset_parameters(self) -> None:
        """Draw every parameter again as at construction: PyTorch's default init of each
        layer, then the reference's ``weights_init`` (:func:`reference_init`)."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        reference_init(self, self.config.conv_bias_init)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Enhance ``images`` (B, 3, H, W) in [-1, 1]; returns the same shape."""
        return self.forward_with_latent(images)[0]

    def forward_with_latent(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (output, latent) with output = images + latent on the original area."""
        check_image_batch(images)
        height, width = images.shape[-2:]
        attention = attention_map(images)
        network_input = images
        halve = self.config.halve_above_width is not None and width > self.config.halve_above_width
        if halve:
            network_input = F.avg_pool2d(images, 2)
            attention = F.avg_pool2d(attention, 2)
        padded_input, padding = pad_to_multiple(network_input, self.config.pad_multiple)
        padded_attention, _ = pad_to_multiple(attention, self.config.pad_multiple)
        latent = self._residual(padded_input, padded_attention)
        latent = crop_padding(latent, padding)
        output = crop_padding(padded_input, padding) + latent
        if halve:
            size = (height, width)
            mode_kwargs = {"mode": "bilinear", "align_corners": self.config.upsample_align_corners}
            output = F.interpolate(output, size=size, **mode_kwargs)
            latent = F.interpolate(latent, size=size, **mode_kwargs)
        return output, latent

    def _residual(self, images: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        attention_pyramid = [attention]
        for _ in range(LEVELS - 1):
            attention_pyramid.append(F.max_pool2d(attention_pyramid[-1], 2))

        skips = []
        features = torch.cat([images, attention], dim=1)
        for level in range(1, LEVELS):
            features = self._block(f"{level}_2", self._block(f"{level}_1", features))
            skips.append(features)
            features = F.max_pool2d(features, 2)
        features = self._block(f"{LEVELS}_1", features)
        if self.config.attention_skips:
            features = features * attention_pyramid[-1]
        features = self._block(f"{LEVELS}_2", features)

        for step, level in enumerate(range(LEVELS - 1, 0, -1)):
            features = F.interpolate(
                features,
                scale_factor=2,
                mode="bilinear",
                align_corners=self.config.upsample_align_corners,
            )
            skip = skips[level - 1]
            if self.config.attention_skips:
                skip = skip * attention_pyramid[level - 1]
            up = getattr(self, f"deconv{LEVELS + step}")(features)
            name = LEVELS + 1 + step
            features = torch.cat([up, skip], dim=1)
            features = self._block(f"{name}_2", self._block(f"{name}_1", features))

        latent = self.conv10(features)
        if self.config.attention_output:
            latent = latent * attention
        return latent


def check_image_batch(images: torch.Tensor) -> None:
    """Raise ValueError for anything that is not a finite float (B, 3, H, W) batch."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) RGB batch, got shape {tuple(images.shape)}")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"empty image batch of shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected a float tensor in [-1, 1], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError("input contains NaN or infinite values")


Padding = tuple[int, int, int, int]


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, Padding]:
    """Reflection-pad H and W up to a multiple, split floor/ceil; returns (padded, l, r, t, b).

    Reflection needs the padding to be smaller than the side; tiny images fall back to
    replicate padding, which the reference never met (it refuses nothing, but crashes).
    """
    height, width = images.shape[-2:]
    pad_h = math.ceil(height / multiple) * multiple - height
    pad_w = math.ceil(width / multiple) * multiple - width
    padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    if pad_h == 0 and pad_w == 0:
        return images, padding
    fits = max(padding[0], padding[1]) < width and max(padding[2], padding[3]) < height
    return F.pad(images, padding, mode="reflect" if fits else "replicate"), padding


def crop_padding(images: torch.Tensor, padding: Padding) -> torch.Tensor:
    left, right, top, bottom = padding
    height, width = images.shape[-2:]
    return images[..., top : height - bottom, left : width - right]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""Global and local (patch) discriminators of EnlightenGAN (paper Sec. III-B).

Both are plain PatchGAN-style stacks: 4x4 convs with padding 2, LeakyReLU(0.2) between layers,
no normalisation and no sigmoid (the least-squares losses take raw scores). The global D sees
whole crops (a 13x13 score map for 320x320); the local D sees 32x32 patches (5x5 map).
"""

from __future__ import annotations

import torch
from torch import nn

from enlightengan.config import DiscriminatorConfig
from enlightengan.generator import reference_init


class Discriminator(nn.Module):
    """``strided_layers`` stride-2 convs (channels doubling up to 8x base), then two stride-1.

    With base 64: 3 -> 64 -> 128 -> 256 -> 512 [-> 512 ...] at stride 2, 512 -> 512 at
    stride 1, 512 -> 1 at stride 1. Init as the reference's ``weights_init``: conv weights
    N(0, 0.02); biases keep PyTorch's default uniform init unless ``conv_bias_init="zero"``.
    """

    def __init__(
        self, strided_layers: int, base_channels: int = 64, conv_bias_init: str = "pytorch"
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        out_channels = base_channels
        for index in range(strided_layers):
            out_channels = base_channels * min(2**index, 8)
            layers.append(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=2))
            layers.append(nn.LeakyReLU(0.2))
            in_channels = out_channels
        widest = base_channels * min(2**strided_layers, 8)
        layers.append(nn.Conv2d(in_channels, widest, 4, stride=1, padding=2))
        layers.append(nn.LeakyReLU(0.2))
        layers.append(nn.Conv2d(widest, 1, 4, stride=1, padding=2))
        self.layers = nn.Sequential(*layers)
        reference_init(self, conv_bias_init)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw realness scores (B, 1, h, w) for RGB images in [-1, 1]."""
        return self.layers(images)


def build_discriminators(
    config: DiscriminatorConfig | None = None,
) -> tuple[Discriminator, Discriminator]:
    """Return (global D, patch D) as the reference builds them."""
    config = config or DiscriminatorConfig()
    config.validate()
    global_d = Discriminator(config.global_layers, config.base_channels, config.conv_bias_init)
    patch_d = Discriminator(config.patch_layers, config.base_channels, config.conv_bias_init)
    return global_d, patch_d

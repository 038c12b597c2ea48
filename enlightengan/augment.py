"""The reference's data augmentation for unpaired (low, normal) training pairs.

For each pair: a random square crop from each image, an independent horizontal flip per
domain, then a joint horizontal and a joint vertical flip, each with p = 0.5. Every random
choice comes from an explicit ``torch.Generator`` so runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from enlightengan.config import AugmentConfig


def to_model_range(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 HxWx3 -> float (3, H, W) in [-1, 1]."""
    tensor = torch.from_numpy(np.array(image)) if isinstance(image, np.ndarray) else image
    if tensor.dtype != torch.uint8 or tensor.ndim != 3 or tensor.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8 HxWx3 image, got dtype {tensor.dtype} shape {tuple(tensor.shape)}"
        )
    return tensor.permute(2, 0, 1).float() / 127.5 - 1.0


def random_crop(image: torch.Tensor, size: int, rng: torch.Generator) -> torch.Tensor:
    """Random size x size crop of a (3, H, W) tensor; smaller images are first upscaled."""
    height, width = image.shape[-2:]
    if height < size or width < size:
        scale = size / min(height, width)
        new_size = (max(size, round(height * scale)), max(size, round(width * scale)))
        image = F.interpolate(image[None], size=new_size, mode="bilinear", align_corners=False)[0]
        height, width = new_size
    top = int(torch.randint(0, height - size + 1, (1,), generator=rng))
    left = int(torch.randint(0, width - size + 1, (1,), generator=rng))
    return image[:, top : top + size, left : left + size]


def _coin(rng: torch.Generator) -> bool:
    return bool(torch.rand((), generator=rng) < 0.5)


def augment_pair(
    low: torch.Tensor, normal: torch.Tensor, config: AugmentConfig, rng: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop and flip one (low, normal) pair of (3, H, W) tensors as the reference does."""
    low = random_crop(low, config.crop_size, rng)
    normal = random_crop(normal, config.crop_size, rng)
    if config.flips:
        if _coin(rng):
            low = low.flip(-1)
        if _coin(rng):
            normal = normal.flip(-1)
        if _coin(rng):
            low, normal = low.flip(-1), normal.flip(-1)
        if _coin(rng):
            low, normal = low.flip(-2), normal.flip(-2)
    return low, normal


def make_training_batch(
    low_images: Sequence[np.ndarray],
    normal_images: Sequence[np.ndarray],
    config: AugmentConfig,
    rng: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded uint8 images of any sizes -> (low, normal) batches (B, 3, crop, crop) in [-1, 1]."""
    if len(low_images) != len(normal_images) or not low_images:
        raise ValueError(
            f"need equal, non-zero numbers of low and normal images, got "
            f"{len(low_images)} and {len(normal_images)}"
        )
    pairs = [
        augment_pair(to_model_range(low), to_model_range(normal), config, rng)
        for low, normal in zip(low_images, normal_images, strict=True)
    ]
    low_batch = torch.stack([low for low, _ in pairs])
    normal_batch = torch.stack([normal for _, normal in pairs])
    return low_batch, normal_batch


def random_darken(
    low: torch.Tensor,
    config: AugmentConfig,
    rng: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """With p = darken_probability per image, divide the [0, 1] image by a factor in
    ``darken_range``: a multiple of 1 / darken_resolution (the reference's
    ``random.randint(200, 400) / 100``) or, with no resolution, continuous.

    Under data parallelism each of ``world_size`` ranks holds one share of the global batch:
    the draws are made for the whole global batch and rank ``rank`` applies its slice, so with
    ``rng`` in the same state on every rank each image is darkened as one process would.
    """
    if not config.random_darken:
        return low
    batch = low.shape[0]
    total = batch * world_size
    chosen = torch.rand(total, generator=rng) < config.darken_probability
    low_factor, high_factor = config.darken_range
    resolution = config.darken_resolution
    if resolution is None:
        factors = low_factor + (high_factor - low_factor) * torch.rand(total, generator=rng)
    else:
        lowest, highest = round(low_factor * resolution), round(high_factor * resolution)
        steps = torch.randint(lowest, highest + 1, (total,), generator=rng)
        factors = steps.double() / resolution
    mine = slice(rank * batch, (rank + 1) * batch)
    divisor = torch.where(chosen[mine], factors[mine], torch.ones_like(factors[mine]))
    divisor = divisor.to(low.device, low.dtype)
    return ((low + 1.0) / 2.0 / divisor.view(-1, 1, 1, 1)) * 2.0 - 1.0

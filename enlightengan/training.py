"""One EnlightenGAN optimisation step and the learning-rate schedule.

The step is a plain function: a plain PyTorch loop and a Ray Train worker call the same code
(DDP-wrapped networks work unchanged). It follows the reference's update order: forward G;
update G on the total objective (paper Eq. 7); then update both discriminators on the same,
pre-update output, detached.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from enlightengan.augment import random_darken
from enlightengan.config import PATCH_OFFSETS, EnlightenGANConfig, OptimConfig
from enlightengan.discriminator import build_discriminators
from enlightengan.distributed import rank_and_world_size
from enlightengan.generator import Generator
from enlightengan.losses import (
    ChromaPreservingLoss,
    ColorConstancyLoss,
    ExposureControlLoss,
    LeastSquaresGAN,
    RelativisticAverageLSGAN,
    SaturationCapLoss,
    SelfFeaturePreservingLoss,
)

LOSS_TERMS = (
    "g_total",
    "g_global_adv",
    "g_local_adv",
    "g_sfp",
    "g_sfp_patches",
    "d_global",
    "d_patch",
)
# Reported only when its weight is non-zero (a setting outside the reference recipe).
OPTIONAL_LOSS_TERMS = {
    "g_exposure": "exposure",
    "g_color": "color_constancy",
    "g_chroma": "chroma",
    "g_saturation": "saturation",
}


def reported_terms(config: EnlightenGANConfig) -> tuple[str, ...]:
    """The loss names :func:`training_step` returns for this config, in a fixed order."""
    optional = (
        name for name, weight in OPTIONAL_LOSS_TERMS.items() if getattr(config.loss, weight) > 0
    )
    return LOSS_TERMS + tuple(optional)


@dataclass
class GANModules:
    """The three trainable networks and the self-feature-preserving loss (frozen VGG inside)."""

    generator: nn.Module
    global_d: nn.Module
    patch_d: nn.Module
    sfp: SelfFeaturePreservingLoss

    def trainable(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "global_d": self.global_d, "patch_d": self.patch_d}


@dataclass
class GANOptimizers:
    generator: torch.optim.Optimizer
    global_d: torch.optim.Optimizer
    patch_d: torch.optim.Optimizer

    def as_dict(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.generator, "global_d": self.global_d, "patch_d": self.patch_d}


def build_modules(config: EnlightenGANConfig, vgg_features: nn.Module) -> GANModules:
    """Build G, D, D_patch from the config; ``vgg_features`` comes from ``enlightengan.vgg``."""
    config.validate()
    global_d, patch_d = build_discriminators(config.discriminator)
    sfp = SelfFeaturePreservingLoss(vgg_features, instance_norm=config.loss.sfp_instance_norm)
    return GANModules(Generator(config.generator), global_d, patch_d, sfp)


def build_optimizers(modules: GANModules, optim: OptimConfig) -> GANOptimizers:
    """Adam(lr, betas) for each network, as in the reference."""

    def adam(module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=optim.lr, betas=optim.betas)

    return GANOptimizers(adam(modules.generator), adam(modules.global_d), adam(modules.patch_d))


def learning_rate(epoch: int, optim: OptimConfig) -> float:
    """lr for a 0-based epoch: constant for ``epochs_constant``, then linear decay towards 0.

    As in the reference, the rate drops by lr / epochs_decay after every decay epoch, so the
    last epoch runs at lr / epochs_decay and the next would run at zero.
    """
    decayed_epochs = max(0, epoch - optim.epochs_constant)
    if optim.epochs_decay == 0:
        return optim.lr if epoch < optim.epochs_constant else 0.0
    return optim.lr * max(0.0, 1.0 - decayed_epochs / optim.epochs_decay)


def set_learning_rate(optimizers: GANOptimizers, lr: float) -> None:
    for optimizer in optimizers.as_dict().values():
        for group in optimizer.param_groups:
            group["lr"] = lr


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator for :func:`training_step` number ``step`` (0-based) of a run.

    It depends only on (seed, step), so every DDP rank draws the same patch corners and the
    same darkening draws for the global batch, as the reference's one process did, and a run
    resumed at any step, on any number of workers, draws what an uninterrupted run would.
    """
    mixed = np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed))


def random_patch_corners(
    height: int,
    width: int,
    patch_size: int,
    count: int,
    rng: torch.Generator,
    offsets: str = "reference",
) -> list[tuple[int, int]]:
    """``count`` (top, left) corners drawn uniformly; each is shared by the whole batch.

    ``offsets="reference"`` draws from 0..side-P-1 like the reference's
    ``random.randint(0, max(0, side - P - 1))``, never the last position; ``"all"`` draws
    from 0..side-P.
    """
    if offsets not in PATCH_OFFSETS:
        raise ValueError(f"unknown patch offsets {offsets!r}")
    last_excluded = 1 if offsets == "reference" else 0

    def draw(side: int) -> int:
        highest = max(0, side - patch_size - last_excluded)
        return int(torch.randint(0, highest + 1, (1,), generator=rng))

    return [(draw(height), draw(width)) for _ in range(count)]


def cut_patches(
    images: torch.Tensor, corners: Iterable[tuple[int, int]], size: int
) -> torch.Tensor:
    """Stack the patches at ``corners`` along the batch axis: (P * B, 3, size, size)."""
    return torch.cat([images[..., top : top + size, left : left + size] for top, left in corners])


def training_step(
    modules: GANModules,
    optimizers: GANOptimizers,
    low: torch.Tensor,
    normal: torch.Tensor,
    config: EnlightenGANConfig,
    rng: torch.Generator,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One update of G, then of both Ds; returns every loss term as a float.

    ``low`` and ``normal`` are augmented crops (B, 3, S, S) in [-1, 1] on the model's device.
    ``rng`` (a CPU generator) draws the random darkening and the patch corners. Patches of all
    locations go through the patch D as one batch: without normalisation in D this equals
    averaging the per-patch losses, as the reference does, with one forward instead of six.

    Under torch.distributed each rank passes its share of the global batch and ``rng`` in the
    same state on every rank (:func:`step_generator`): all ranks then cut the same patch
    locations and darken their images as one process would darken the global batch, and with
    ``loss.gather_relativistic_means`` the relativistic means cover the global batch, so DDP
    reproduces one process on the global batch (except BatchNorm statistics, which stay
    per rank unless ``generator.norm`` is ``sync_batch``).
    """
    if low.shape != normal.shape:
        raise ValueError(f"low {tuple(low.shape)} and normal {tuple(normal.shape)} batches differ")
    weights = config.loss
    patch_size = config.discriminator.patch_size
    relativistic = RelativisticAverageLSGAN(weights.gather_relativistic_means)
    least_squares = LeastSquaresGAN()
    rank, world_size = rank_and_world_size()
    generator_input = random_darken(low, config.augment, rng, rank, world_size)
    height, width = low.shape[-2:]
    corners = random_patch_corners(
        height,
        width,
        patch_size,
        config.discriminator.num_patches,
        rng,
        config.discriminator.patch_offsets,
    )

    with autocast_context(low.device, autocast_dtype):
        enhanced = modules.generator(generator_input)
        real_scores = modules.global_d(normal)
        fake_scores = modules.global_d(enhanced)
        g_global = relativistic.generator_loss(real_scores, fake_scores)
        g_sfp = modules.sfp(enhanced, low)
        zero = enhanced.new_zeros((), dtype=torch.float32)
        g_local = g_sfp_patches = zero
        if corners:
            enhanced_patches = cut_patches(enhanced, corners, patch_size)
            g_local = least_squares.generator_loss(modules.patch_d(enhanced_patches))
            g_sfp_patches = modules.sfp(enhanced_patches, cut_patches(low, corners, patch_size))
        g_total = (
            weights.global_adversarial * g_global
            + weights.local_adversarial * g_local
            + weights.self_feature * g_sfp
            + weights.self_feature_patches * g_sfp_patches
        )
        extra = {}
        if weights.exposure > 0:
            exposure = ExposureControlLoss(
                weights.exposure_target,
                weights.exposure_patch_size,
                weights.exposure_input_power,
                weights.exposure_never_darken,
            )
            extra["g_exposure"] = exposure(enhanced, low)
            g_total = g_total + weights.exposure * extra["g_exposure"]
        if weights.color_constancy > 0:
            extra["g_color"] = ColorConstancyLoss()(enhanced)
            g_total = g_total + weights.color_constancy * extra["g_color"]
        if weights.chroma > 0:
            extra["g_chroma"] = ChromaPreservingLoss()(enhanced, low)
            g_total = g_total + weights.chroma * extra["g_chroma"]
        if weights.saturation > 0:
            extra["g_saturation"] = SaturationCapLoss()(enhanced, low)
            g_total = g_total + weights.saturation * extra["g_saturation"]
    optimizers.generator.zero_grad(set_to_none=True)
    g_total.backward()
    optimizers.generator.step()

    enhanced = enhanced.detach()
    with autocast_context(low.device, autocast_dtype):
        d_global = relativistic.discriminator_loss(
            modules.global_d(normal), modules.global_d(enhanced)
        )
        d_patch = zero
        if corners:
            d_patch = least_squares.discriminator_loss(
                modules.patch_d(cut_patches(normal, corners, patch_size)),
                modules.patch_d(cut_patches(enhanced, corners, patch_size)),
            )
    optimizers.global_d.zero_grad(set_to_none=True)
    optimizers.patch_d.zero_grad(set_to_none=True)
    (d_global + d_patch).backward()
    optimizers.global_d.step()
    optimizers.patch_d.step()

    values = (g_total, g_global, g_local, g_sfp, g_sfp_patches, d_global, d_patch)
    losses = dict(zip(LOSS_TERMS, values, strict=True)) | extra
    return {name: float(value.detach()) for name, value in losses.items()}


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on the device's type; ``None``: full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

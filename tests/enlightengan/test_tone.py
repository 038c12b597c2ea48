"""Tone transfer: the generator's brightening on the input's detail, on real photos."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from enlightengan.config import tiny_config
from enlightengan.inference import Enhancer, EnhancerSettings
from enlightengan.tone import ToneTransfer, box_mean, guided_filter, noise_level
from tests.enlightengan.textured_generator import darken, psnr, textured_generator


def as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]


def as_image(batch: torch.Tensor) -> np.ndarray:
    return batch[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def dark_coffee() -> np.ndarray:
    return darken(data.coffee())  # 400 x 600 x 3


def test_a_uniform_gain_is_transferred(dark_coffee):
    inputs = as_batch(dark_coffee).clamp(min=20)
    outputs = (inputs * 2).clamp(0, 255)
    result = ToneTransfer()(inputs, outputs)
    unclipped = outputs < 255
    relative = (result[unclipped] - outputs[unclipped]).abs() / outputs[unclipped]
    assert relative.max() < 0.03


def test_black_stays_black():
    inputs = torch.zeros(1, 3, 64, 64)
    inputs[..., 32:] = 40.0
    outputs = (inputs * 3 + 10).clamp(0, 255)
    result = ToneTransfer()(inputs, outputs)
    assert result[..., :32].max() == 0
    assert result[..., 40:].mean() > 100


def test_strength_zero_returns_the_input_and_less_than_one_brightens_less(dark_coffee):
    inputs = as_batch(dark_coffee)
    outputs = (inputs * 3).clamp(0, 255)
    assert torch.allclose(ToneTransfer(strength=0.0)(inputs, outputs), inputs)
    half = ToneTransfer(strength=0.5)(inputs, outputs).mean()
    full = ToneTransfer(strength=1.0)(inputs, outputs).mean()
    assert inputs.mean() < half < full


def test_the_strength_follows_the_inputs_darkness_between_the_two_lumas():
    tone = ToneTransfer(strength=0.9, dark_strength=1.3, dark_luma=15.0, bright_luma=80.0)
    strengths = tone.strengths(torch.tensor([0.0, 15.0, 30.0, 50.0, 80.0, 200.0]))
    assert strengths[0] == pytest.approx(1.3) and strengths[1] == pytest.approx(1.3)
    assert strengths[4] == pytest.approx(0.9) and strengths[5] == pytest.approx(0.9)
    # Interpolated in log(1 + luma): at 30, log(31 / 16) / log(81 / 16) of the way to 0.9.
    at_30 = 1.3 + (0.9 - 1.3) * math.log(31 / 16) / math.log(81 / 16)
    assert strengths[2] == pytest.approx(at_30, abs=1e-5)
    assert 1.3 > strengths[2] > strengths[3] > 0.9
    assert ToneTransfer(strength=0.7).strengths(torch.tensor([5.0, 100.0])).tolist() == [
        pytest.approx(0.7),
        pytest.approx(0.7),
    ]


def test_each_image_of_a_batch_gets_the_strength_of_its_own_darkness(dark_coffee):
    dim = as_batch(dark_coffee)
    little_dark = (dim * 8).clamp(0, 255)
    inputs = torch.cat([dim, little_dark])
    outputs = (inputs * 2).clamp(0, 255)
    adaptive = ToneTransfer(strength=0.8, dark_strength=1.2)(inputs, outputs)
    assert torch.allclose(adaptive[:1], ToneTransfer(strength=1.2)(dim, outputs[:1]))
    assert torch.allclose(adaptive[1:], ToneTransfer(strength=0.8)(little_dark, outputs[1:]))


def test_the_input_keeps_its_detail_and_loses_the_generators_texture():
    photo = data.astronaut()
    dark = (photo.astype(np.float32) * 0.25).round()
    inputs = torch.from_numpy(dark).permute(2, 0, 1)[None]
    generator = torch.Generator().manual_seed(0)
    texture = torch.randn(inputs.shape, generator=generator) * 20
    outputs = (inputs * 4 + texture).clamp(0, 255)
    result = ToneTransfer()(inputs, outputs)
    clean = (inputs * 4).clamp(0, 255)
    error_out = (outputs - clean).abs().mean()
    error_transfer = (result - clean).abs().mean()
    assert error_transfer < error_out / 2


def test_edges_of_the_input_bound_the_gain():
    # A dark half and a bright half; the "generator" brightens only the dark half. A plain blur
    # of the gain spills it across the edge; the guided filter keeps most of it on its side.
    inputs = torch.full((1, 3, 120, 240), 200.0)
    inputs[..., :120] = 20.0
    outputs = inputs.clone()
    outputs[..., :120] = 120.0
    transfer = ToneTransfer(radius_fraction=0.2)
    result = transfer(inputs, outputs)
    radius = int(120 * transfer.radius_fraction)
    blurred_gain = box_mean(torch.log1p(outputs) - torch.log1p(inputs), radius)
    blurred = (inputs + 1) * torch.exp(blurred_gain) - 1
    guided_spill = result[..., 120:].sub(200).abs().max()
    blur_spill = blurred[..., 120:].sub(200).abs().max()
    assert guided_spill < blur_spill / 4
    direct = inputs * (outputs + 1) / (inputs + 1)
    assert result[..., : 120 - 2 * radius].sub(direct[..., : 120 - 2 * radius]).abs().max() < 1
    assert result[..., 120 + 2 * radius :].sub(200).abs().max() < 2


def test_the_fast_filter_on_large_images_follows_the_exact_one():
    photo = torch.from_numpy(data.coffee().astype(np.float32)).permute(2, 0, 1)[None]
    guide = torch.log1p(photo.mean(1, keepdim=True)) / np.log(256)
    source = F.avg_pool2d(photo[:, :1], 9, stride=1, padding=4) / 255
    exact = guided_filter(guide, source, 7, 0.01)
    fast = guided_filter(guide, source, 32, 0.01)
    assert exact.shape == fast.shape == source.shape
    slow_reference = _plain_guided_filter(guide, source, 32, 0.01)
    assert (fast - slow_reference).abs().mean() < 0.01


def _plain_guided_filter(guide, source, radius, epsilon):
    mean_guide, mean_source = box_mean(guide, radius), box_mean(source, radius)
    covariance = box_mean(guide * source, radius) - mean_guide * mean_source
    variance = box_mean(guide * guide, radius) - mean_guide**2
    slope = covariance / (variance + epsilon)
    offset = mean_source - slope * mean_guide
    return box_mean(slope, radius) * guide + box_mean(offset, radius)


def test_a_thumbnail_gets_the_same_tone_as_the_full_image(dark_coffee):
    inputs = as_batch(dark_coffee)
    outputs = (F.avg_pool2d(inputs, 31, stride=1, padding=15) * 3 + inputs * 0.5).clamp(0, 255)
    full = F.avg_pool2d(ToneTransfer()(inputs, outputs), 4)
    small = ToneTransfer()(F.avg_pool2d(inputs, 4), F.avg_pool2d(outputs, 4))
    assert psnr(as_image(full), as_image(small)) > 30


@pytest.mark.parametrize(
    "settings, message",
    [
        (ToneTransfer(strength=-0.1), "strength"),
        (ToneTransfer(radius_fraction=0.0), "radius_fraction"),
        (ToneTransfer(epsilon=0.0), "epsilon"),
        (ToneTransfer(dark_strength=2.5), "dark_strength"),
        (ToneTransfer(dark_luma=90.0, bright_luma=80.0), "dark_luma < bright_luma"),
        (ToneTransfer(denoise=-1.0), "denoise"),
        (ToneTransfer(noise_low=1.0), "noise_low and noise_high"),
        (ToneTransfer(noise_low=3.0, noise_high=2.0), "noise_low and noise_high"),
        (ToneTransfer(dark_colour=2.0), "dark_colour"),
    ],
)
def test_bad_settings_name_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        settings.validate()


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        ToneTransfer()(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


@pytest.fixture(scope="module")
def generators():
    plain = textured_generator(tiny_config().generator)
    config = dataclasses.replace(plain.config, tone_transfer_strength=0.8)
    toned = textured_generator(config)
    return plain, toned


def test_the_model_config_decides_by_default(generators, dark_coffee):
    plain, toned = generators
    assert Enhancer(plain).tone_transfer is None
    assert Enhancer(toned).tone_transfer == ToneTransfer(strength=0.8)
    assert Enhancer(toned, EnhancerSettings(tone_transfer="off")).tone_transfer is None
    forced = Enhancer(plain, EnhancerSettings(tone_transfer="on", tone_strength=0.5))
    assert forced.tone_transfer == ToneTransfer(strength=0.5)
    assert Enhancer(plain, EnhancerSettings(tone_transfer="on")).tone_transfer.strength == 1.0


def test_the_dark_strength_comes_from_the_config_unless_the_settings_say(generators):
    config = dataclasses.replace(generators[1].config, tone_transfer_dark_strength=1.3)
    adaptive = textured_generator(config)
    assert Enhancer(adaptive).tone_transfer == ToneTransfer(strength=0.8, dark_strength=1.3)
    other = Enhancer(adaptive, EnhancerSettings(tone_dark_strength=1.1)).tone_transfer
    assert other == ToneTransfer(strength=0.8, dark_strength=1.1)
    uniform = Enhancer(adaptive, EnhancerSettings(tone_strength=0.5)).tone_transfer
    assert uniform == ToneTransfer(strength=0.5)


def test_noise_and_colour_settings_come_from_the_config_and_denoise_can_be_overridden(generators):
    settings = {
        "dark_luma": 20.0,
        "bright_luma": 60.0,
        "denoise": 1.5,
        "noise_low": 1.0,
        "noise_high": 2.0,
        "colour": 0.6,
        "dark_colour": 1.0,
    }
    config = dataclasses.replace(
        generators[1].config, **{f"tone_transfer_{name}": value for name, value in settings.items()}
    )
    model = textured_generator(config)
    expected = ToneTransfer(strength=0.8, **settings)
    assert Enhancer(model).tone_transfer == expected
    override = Enhancer(model, EnhancerSettings(tone_denoise=0.0)).tone_transfer
    assert override == dataclasses.replace(expected, denoise=0.0)


def test_enhancer_output_is_the_transfer_of_the_generators_output(generators, dark_coffee):
    plain, toned = generators
    raw = Enhancer(plain, EnhancerSettings(tile_size=None))([dark_coffee])[0]
    transferred = Enhancer(toned, EnhancerSettings(tile_size=None))([dark_coffee])[0]
    expected = as_image(ToneTransfer(strength=0.8)(as_batch(dark_coffee), as_batch(raw)))
    assert np.abs(transferred.astype(int) - expected).max() <= 2
    assert psnr(transferred, raw) < 40


def test_enhancer_settings_refuse_unknown_modes():
    with pytest.raises(ValueError, match="tone_transfer"):
        EnhancerSettings(tone_transfer="maybe").validate()
    with pytest.raises(ValueError, match="strength"):
        EnhancerSettings(tone_strength=5.0).validate()
    with pytest.raises(ValueError, match="dark_strength"):
        EnhancerSettings(tone_dark_strength=-1.0).validate()


def test_the_noise_level_measures_added_noise_and_ignores_smooth_shading():
    generator = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(200.0), torch.arange(300.0), indexing="ij")
    shading = (20 + 0.3 * rows + 0.2 * cols)[None, None]
    assert noise_level(shading).item() < 1e-3
    for sigma in (1.0, 4.0):
        noisy = shading + sigma * torch.randn(shading.shape, generator=generator)
        assert noise_level(noisy).item() == pytest.approx(sigma, rel=0.05)
    photo = as_batch(data.camera()[..., None])
    levels = [
        noise_level(photo + s * torch.randn(photo.shape, generator=generator)) for s in (0, 2, 8)
    ]
    assert levels[0] < levels[1] < levels[2]
    assert noise_level(torch.zeros(2, 1, 2, 2)).tolist() == [0.0, 0.0]


def test_denoising_smooths_noise_in_flat_parts_and_keeps_edges():
    generator = torch.Generator().manual_seed(0)
    step = torch.full((1, 3, 120, 120), 40.0)
    step[..., 60:] = 120.0
    noisy = step + 3.0 * torch.randn(step.shape, generator=generator)
    doubled = ((noisy + 1) * 2 - 1).clamp(0, 255)
    plain = ToneTransfer()(noisy, doubled)
    denoised = ToneTransfer(denoise=1.5)(noisy, doubled)
    assert denoised[..., 10:50].std() < 0.75 * plain[..., 10:50].std()
    edge = denoised[..., 62:64].mean() - denoised[..., 56:58].mean()
    assert edge.item() == pytest.approx(2 * (120.0 - 40.0), rel=0.1)


def test_denoising_a_noiseless_image_keeps_it_finite_and_within_half_a_grey_level():
    rows, cols = torch.meshgrid(torch.arange(90.0), torch.arange(120.0), indexing="ij")
    images = torch.stack(
        [torch.full((3, 90, 120), 37.0), (10 + 0.2 * rows + 0.3 * cols).expand(3, 90, 120)]
    )
    assert noise_level(images[:, :1]).max() < 1e-3  # gray: every channel is the luma
    doubled = ((images + 1) * 2 - 1).clamp(0, 255)
    tone = ToneTransfer(strength=0.82, dark_strength=1.4, dark_luma=20, bright_luma=40, denoise=1.0)
    for batch in (images, images[:1], images[:, :, :2, :2]):
        result = tone(batch, ((batch + 1) * 2 - 1).clamp(0, 255))
        assert torch.isfinite(result).all()
    result = tone(images, doubled)
    assert torch.allclose(
        result,
        ToneTransfer(strength=0.82, dark_strength=1.4, dark_luma=20, bright_luma=40)(
            images, doubled
        ),
        atol=0.5,
    )


def test_noise_fades_the_dark_lift_and_colour_weighs_the_generators_balance(dark_coffee):
    tone = ToneTransfer(strength=1.0, dark_strength=1.5, noise_low=1.0, noise_high=3.0)
    lumas = torch.tensor([10.0, 10.0, 10.0, 200.0])
    noise = torch.tensor([0.5, 2.0, 4.0, 0.5])
    assert tone.strengths(lumas, noise).tolist() == pytest.approx([1.5, 1.25, 1.0, 1.0])
    inputs = as_batch(dark_coffee).clamp(min=20)
    tinted = inputs * torch.tensor([2.0, 1.5, 1.0]).view(1, 3, 1, 1)
    grey = ToneTransfer(colour=0.0)(inputs, tinted.clamp(max=255))
    ratios = grey / inputs
    assert (ratios[:, 0] - ratios[:, 2]).abs().max() < 1e-3
    full = ToneTransfer()(inputs, tinted.clamp(max=255)) / inputs
    assert (full[:, 0] / full[:, 2]).median() > 1.8

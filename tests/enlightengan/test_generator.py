import json
import math
from pathlib import Path

import pytest
import torch

import enlightengan
from enlightengan.config import GeneratorConfig
from enlightengan.generator import (
    Generator,
    attention_map,
    count_parameters,
    crop_padding,
    pad_to_multiple,
)

REFERENCE = Path(enlightengan.__file__).parent / "data" / "official_generator_state_dict.json"


def tiny_generator(**overrides) -> Generator:
    torch.manual_seed(0)
    return Generator(GeneratorConfig(base_channels=4, **overrides)).eval()


def test_default_generator_matches_reference_parameter_count_and_names():
    generator = Generator()
    assert count_parameters(generator) == 8_636_675
    state = generator.state_dict()
    names_and_shapes = [[name, list(tensor.shape)] for name, tensor in state.items()]
    assert names_and_shapes == json.loads(REFERENCE.read_text())
    assert len(state) == 131


def test_attention_map_is_one_minus_luma():
    image = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    assert attention_map(image).item() == pytest.approx(1 - 0.299)
    black = -torch.ones(1, 3, 2, 2)
    assert torch.equal(attention_map(black), torch.ones(1, 1, 2, 2))


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 40, 60), (1, 3, 16, 16), (1, 3, 5, 7)])
def test_output_shape_and_residual_identity_on_odd_sizes(shape):
    generator = tiny_generator()
    images = torch.rand(shape) * 2 - 1
    with torch.no_grad():
        output, latent = generator.forward_with_latent(images)
    assert output.shape == images.shape and latent.shape == images.shape
    # padding leaves no border artifacts: output equals input + latent on the original area
    assert torch.allclose(output, images + latent, atol=1e-6)
    assert torch.isfinite(output).all()


def test_padding_is_reflective_and_cropped_back_exactly():
    images = torch.arange(37 * 53, dtype=torch.float32).view(1, 1, 37, 53)
    padded, padding = pad_to_multiple(images, 16)
    assert padded.shape[-2:] == (48, 64)
    assert padding == (5, 6, 5, 6)
    assert torch.equal(padded[..., 5, 5:58], images[..., 0, :])
    assert torch.equal(padded[..., 4, 5:58], images[..., 1, :])  # reflection, not replication
    assert torch.equal(crop_padding(padded, padding), images)


def test_zero_latent_means_identity():
    generator = tiny_generator()
    torch.nn.init.zeros_(generator.conv10.weight)
    torch.nn.init.zeros_(generator.conv10.bias)
    images = torch.rand(1, 3, 33, 47) * 2 - 1
    with torch.no_grad():
        assert torch.equal(generator(images), images)


def test_wide_images_are_halved_then_upsampled_back():
    halving = tiny_generator(halve_above_width=64)
    plain = tiny_generator(halve_above_width=None)
    plain.load_state_dict(halving.state_dict())
    images = torch.rand(1, 3, 32, 96) * 2 - 1
    with torch.no_grad():
        halved = halving(images)
        full = plain(images)
    assert halved.shape == images.shape
    assert not torch.allclose(halved, full)


def test_align_corners_setting_changes_the_decoder():
    old = tiny_generator(upsample_align_corners=True)
    # the reference init (std 0.02) makes the residual ~1e-6; larger weights expose the decoder
    for module in old.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    new = tiny_generator(upsample_align_corners=False)
    new.load_state_dict(old.state_dict())
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        old_latent = old.forward_with_latent(images)[1]
        new_latent = new.forward_with_latent(images)[1]
    assert (old_latent - new_latent).abs().max() > 1e-3 * old_latent.abs().max()


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_norm_settings_build_and_run(norm):
    generator = tiny_generator(norm=norm)
    with torch.no_grad():
        assert generator(torch.zeros(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    has_batch_norm = any(isinstance(m, torch.nn.BatchNorm2d) for m in generator.modules())
    assert has_batch_norm == (norm == "batch")


def test_conv_biases_keep_pytorch_init_as_the_reference_or_are_zeroed_on_request():
    torch.manual_seed(0)
    first_conv = torch.nn.Conv2d(4, 4, 3, padding=1)  # what conv1_1 draws first when built
    reference = tiny_generator()
    zero = tiny_generator(conv_bias_init="zero")
    assert GeneratorConfig().conv_bias_init == "pytorch"
    assert torch.equal(reference.conv1_1.bias, first_conv.bias)
    convs = [name for name, m in reference.named_modules() if isinstance(m, torch.nn.Conv2d)]
    for name in convs:
        conv, zeroed = getattr(reference, name), getattr(zero, name)
        bound = 1 / math.sqrt(conv.weight[0].numel())
        assert 0 < conv.bias.abs().max() <= bound, name
        assert torch.count_nonzero(zeroed.bias) == 0, name
        # the bias setting draws nothing, so the N(0, 0.02) weights are the same either way
        assert torch.equal(conv.weight, zeroed.weight), name
    weights = torch.cat([getattr(reference, name).weight.detach().flatten() for name in convs])
    assert float(weights.std()) == pytest.approx(0.02, rel=0.05)
    norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in norms)
    assert float(torch.cat([m.weight.detach() for m in norms]).std()) == pytest.approx(
        0.02, rel=0.2
    )
    with pytest.raises(ValueError, match="conv_bias_init"):
        GeneratorConfig(conv_bias_init="one").validate()


def test_reset_parameters_draws_the_reference_init_again():
    generator = tiny_generator()
    for parameter in generator.parameters():
        torch.nn.init.constant_(parameter, 3.0)
    generator.reset_parameters()
    conv = generator.conv2_1
    assert 0 < conv.bias.abs().max() <= 1 / math.sqrt(conv.weight[0].numel())
    assert float(conv.weight.detach().std()) == pytest.approx(0.02, rel=0.2)
    assert torch.count_nonzero(generator.bn2_1.bias) == 0
    zero = tiny_generator(conv_bias_init="zero")
    zero.reset_parameters()
    assert torch.count_nonzero(zero.conv2_1.bias) == 0


def test_last_decoder_block_has_no_norm():
    generator = Generator()
    assert hasattr(generator, "bn9_1") and not hasattr(generator, "bn9_2")


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(1, 4, 16, 16), "RGB"),
        (torch.zeros(3, 16, 16), "RGB"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "float"),
        (torch.zeros(0, 3, 16, 16), "empty"),
        (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(images, message):
    with pytest.raises(ValueError, match=message):
        tiny_generator()(images)

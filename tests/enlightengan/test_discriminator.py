import math

import pytest
import torch

from enlightengan.config import DiscriminatorConfig
from enlightengan.discriminator import build_discriminators
from enlightengan.generator import count_parameters


def test_reference_parameter_counts_and_score_map_sizes():
    global_d, patch_d = build_discriminators(DiscriminatorConfig())
    assert round(count_parameters(global_d) / 1e6, 2) == 11.15
    assert round(count_parameters(patch_d) / 1e6, 2) == 6.96
    with torch.no_grad():
        assert global_d(torch.zeros(1, 3, 320, 320)).shape == (1, 1, 13, 13)
        assert patch_d(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 5, 5)


def test_discriminators_have_no_norm_and_no_sigmoid():
    global_d, _ = build_discriminators(DiscriminatorConfig(base_channels=8))
    kinds = {type(module).__name__ for module in global_d.modules()}
    assert not any("Norm" in kind or "Sigmoid" in kind for kind in kinds)
    assert isinstance(global_d.layers[-1], torch.nn.Conv2d)


def test_conv_biases_keep_pytorch_init_as_the_reference_or_are_zeroed_on_request():
    assert DiscriminatorConfig().conv_bias_init == "pytorch"
    torch.manual_seed(0)
    reference = build_discriminators(DiscriminatorConfig(base_channels=8))
    torch.manual_seed(0)
    zero = build_discriminators(DiscriminatorConfig(base_channels=8, conv_bias_init="zero"))
    for network, zeroed in zip(reference, zero, strict=True):
        pairs = zip(network.layers, zeroed.layers, strict=True)
        convs = [(a, b) for a, b in pairs if isinstance(a, torch.nn.Conv2d)]
        for conv, zero_conv in convs:
            assert 0 < conv.bias.abs().max() <= 1 / math.sqrt(conv.weight[0].numel())
            assert torch.count_nonzero(zero_conv.bias) == 0
            assert torch.equal(conv.weight, zero_conv.weight)
        weights = torch.cat([conv.weight.detach().flatten() for conv, _ in convs])
        assert float(weights.std()) == pytest.approx(0.02, rel=0.05)
    with pytest.raises(ValueError, match="conv_bias_init"):
        DiscriminatorConfig(conv_bias_init="one").validate()

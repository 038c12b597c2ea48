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

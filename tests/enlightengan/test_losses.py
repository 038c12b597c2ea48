import pytest
import torch
from torch import nn

from enlightengan.losses import (
    ExposureControlLoss,
    LeastSquaresGAN,
    RelativisticAverageLSGAN,
    SaturationCapLoss,
    SelfFeaturePreservingLoss,
)
from tests.enlightengan.two_ranks import (
    relativistic_terms,
    relativistic_worker,
    run_on_two_ranks,
    score_maps,
    share,
)


def test_relativistic_losses_match_hand_computation():
    real = torch.tensor([2.0, 0.0])
    fake = torch.tensor([1.0, -1.0])
    loss = RelativisticAverageLSGAN()
    # real - mean(fake) = [2, 0]; fake - mean(real) = [0, -2]
    expected_d = 0.5 * (((2 - 1) ** 2 + (0 - 1) ** 2) / 2 + (0**2 + (-2) ** 2) / 2)
    expected_g = 0.5 * ((2**2 + 0**2) / 2 + ((0 - 1) ** 2 + (-2 - 1) ** 2) / 2)
    assert loss.discriminator_loss(real, fake).item() == pytest.approx(expected_d)
    assert loss.generator_loss(real, fake).item() == pytest.approx(expected_g)


def test_relativistic_discriminator_prefers_real_above_fake():
    loss = RelativisticAverageLSGAN()
    high, low = torch.ones(4), torch.zeros(4)
    assert loss.discriminator_loss(high, low) < loss.discriminator_loss(low, high)
    assert loss.generator_loss(high, low) > loss.generator_loss(low, high)


def test_gathered_relativistic_means_on_two_ranks_equal_one_process_on_the_global_batch(
    tmp_path,
):
    """Each of two gloo ranks holds half of the score maps. Gathered, every rank computes the
    global batch's loss, and its score gradients averaged over the ranks, as DDP averages
    parameter gradients, are the global batch's; local means give another loss."""
    real, fake = score_maps()
    full = relativistic_terms(real, fake, gather=False)
    in_one_process = relativistic_terms(real, fake, gather=True)
    assert all(torch.equal(full[name], in_one_process[name]) for name in full)

    run_on_two_ranks(relativistic_worker, tmp_path)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        gathered, local = result[True], result[False]
        for term in ("d", "g"):
            assert float(gathered[term]) == pytest.approx(float(full[term]), rel=1e-6)
            assert float(local[term]) != pytest.approx(float(full[term]), rel=1e-3)
        for scores in ("real", "fake"):
            torch.testing.assert_close(gathered[scores] / 2, share(full[scores], rank))


def test_least_squares_losses():
    loss = LeastSquaresGAN()
    assert loss.discriminator_loss(torch.ones(3), torch.zeros(3)).item() == 0.0
    assert loss.discriminator_loss(torch.zeros(3), torch.ones(3)).item() == pytest.approx(1.0)
    assert loss.generator_loss(torch.ones(3)).item() == 0.0
    assert loss.generator_loss(torch.full((3,), 3.0)).item() == pytest.approx(4.0)


class ScaledFeatures(nn.Module):
    """A frozen stand-in feature map: the SFP maths does not depend on which network it is."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1).requires_grad_(False)

    def forward(self, images):
        return self.conv(images)


def test_sfp_is_zero_for_identical_images_and_positive_otherwise():
    torch.manual_seed(0)
    sfp = SelfFeaturePreservingLoss(ScaledFeatures())
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert sfp(images, images).item() == pytest.approx(0.0, abs=1e-10)
    assert sfp(images.flip(-1), images).item() > 1e-3


def test_sfp_instance_norm_ignores_global_feature_scale_and_shift():
    torch.manual_seed(0)
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    features = ScaledFeatures()
    with torch.no_grad():
        features.conv.bias.zero_()
    normalised = SelfFeaturePreservingLoss(features, instance_norm=True)
    raw = SelfFeaturePreservingLoss(features, instance_norm=False)
    brighter = images * 2.0  # features scale by 2 per channel without bias
    assert normalised(brighter, images).item() == pytest.approx(0.0, abs=1e-6)
    assert raw(brighter, images).item() > 1e-3


def test_sfp_gradient_reaches_the_enhanced_image_only():
    torch.manual_seed(0)
    sfp = SelfFeaturePreservingLoss(ScaledFeatures())
    enhanced = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    low = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    sfp(enhanced, low).backward()
    assert enhanced.grad is not None and enhanced.grad.abs().sum() > 0
    assert low.grad is None
    assert all(p.grad is None for p in sfp.parameters())


def test_exposure_control_is_mean_patch_distance_to_the_target():
    loss = ExposureControlLoss(target=0.6, patch_size=4)
    grey = torch.full((1, 3, 8, 8), 0.2 * 2 - 1)  # intensity 0.2 everywhere
    assert float(loss(grey)) == pytest.approx(0.4)
    half = grey.clone()
    half[..., :4] = 1.0  # left half white: patches at 1.0 and 0.2
    assert float(loss(half)) == pytest.approx((0.4 + 0.4) / 2)
    dark = torch.full((1, 3, 8, 8), -0.9, requires_grad=True)
    loss(dark).backward()
    assert (dark.grad < 0).all()  # descending the loss brightens a dark image


def test_color_constancy_is_zero_for_grey_and_grows_with_a_cast():
    from enlightengan.losses import ColorConstancyLoss

    loss = ColorConstancyLoss()
    grey = torch.full((2, 3, 8, 8), 0.2)
    assert float(loss(grey)) == pytest.approx(0.0, abs=1e-12)
    green = grey.clone()
    green[:, 1] += 0.4  # [-1, 1] space: +0.2 on the green channel's mean in [0, 1]
    assert float(loss(green)) == pytest.approx(2 * 0.2**2, rel=1e-5)
    stronger = grey.clone()
    stronger[:, 1] += 0.8
    assert float(loss(stronger)) > float(loss(green))
    green.requires_grad_(True)
    loss(green).backward()
    assert green.grad[:, 1].mean() > 0 > green.grad[:, 0].mean()


def test_input_following_exposure_targets_keep_black_dark_and_cap_bright_windows():
    loss = ExposureControlLoss(target=0.6, patch_size=4, input_power=3.0)
    low = torch.full((1, 3, 8, 8), -1.0)  # black left half ...
    low[..., 4:] = 2 * 0.064 - 1  # ... and a dim right half, mean 0.064 -> target 0.4
    perfect = torch.full((1, 3, 8, 8), -1.0)
    perfect[..., 4:] = 2 * 0.4 - 1
    assert float(loss(perfect, low)) == pytest.approx(0.0, abs=1e-6)
    grey = torch.zeros((1, 3, 8, 8))  # 0.5 everywhere: the fixed-target loss's favourite
    assert float(loss(grey, low)) == pytest.approx((0.5 + 0.1) / 2, rel=1e-5)
    bright_low = torch.full((1, 3, 8, 8), 0.0)  # mean 0.5 -> 0.79, capped at 0.6
    assert float(loss(torch.full((1, 3, 8, 8), 0.2), bright_low)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="needs the low-light input"):
        loss(grey)


def test_chroma_term_allows_brightening_but_not_a_new_colour():
    from enlightengan.losses import ChromaPreservingLoss

    loss = ChromaPreservingLoss(patch_size=4)
    low = torch.full((1, 3, 8, 8), -0.9)
    low[:, 0] = -0.8  # a dim, slightly red image
    brighter = (low + 1) * 4 - 1  # four times the light, same hue
    assert float(loss(brighter, low)) < 0.01
    black = torch.full((1, 3, 8, 8), -1.0)
    assert float(loss(torch.full((1, 3, 8, 8), 0.0), black)) < 1e-6  # grey light on black: fine
    blue = torch.full((1, 3, 8, 8), -0.6)
    blue[:, 2] = 0.4
    assert float(loss(blue, black)) > 0.1  # blue light on black: penalised


def test_never_darken_keeps_a_lit_window_at_its_own_brightness():
    low = torch.full((1, 3, 8, 8), -1.0)
    low[..., 4:] = 2 * 0.9 - 1  # a black half beside a lamp at 0.9, above the 0.6 cap
    unchanged = low.clone()
    capped = ExposureControlLoss(target=0.6, patch_size=4, input_power=3.0)
    kept = ExposureControlLoss(target=0.6, patch_size=4, input_power=3.0, never_darken=True)
    assert float(capped(unchanged, low)) == pytest.approx(0.3 / 2, rel=1e-5)  # lamp pulled down
    assert float(kept(unchanged, low)) == pytest.approx(0.0, abs=1e-6)
    darker_lamp = unchanged.clone()
    darker_lamp[..., 4:] = 2 * 0.6 - 1
    assert float(kept(darker_lamp, low)) == pytest.approx(0.3 / 2, rel=1e-5)


def test_saturation_cap_allows_grey_brightening_and_penalises_added_colour():
    loss = SaturationCapLoss(patch_size=4)
    low = torch.full((1, 3, 8, 8), -0.8)
    low[:, 0] = -0.7  # dim, a little red: saturation 0.05 / 0.17
    same_hue_brighter = (low + 1) * 3 - 1
    # eps counts the dim input as a little greyer than its hue: a small, known excess
    expected = 0.15 / (0.45 + 0.02) - 0.05 / (0.15 + 0.02)
    assert float(loss(same_hue_brighter, low)) == pytest.approx(expected, rel=1e-4)
    greyer = torch.full((1, 3, 8, 8), 0.0)
    assert float(loss(greyer, low)) == pytest.approx(0.0, abs=1e-7)
    vivid = torch.full((1, 3, 8, 8), -1.0)
    vivid[:, 0] = 0.6  # pure red at 0.8: saturation 1
    assert float(loss(vivid, low)) > 0.6
    gradient_target = vivid.clone().requires_grad_(True)
    loss(gradient_target, low).backward()
    assert gradient_target.grad.abs().sum() > 0

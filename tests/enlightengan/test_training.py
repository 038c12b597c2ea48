import math

import numpy as np
import pytest
import torch

from enlightengan.augment import make_training_batch, random_darken, to_model_range
from enlightengan.config import AugmentConfig, DiscriminatorConfig, OptimConfig, tiny_config
from enlightengan.training import (
    LOSS_TERMS,
    build_modules,
    build_optimizers,
    learning_rate,
    random_patch_corners,
    reported_terms,
    step_generator,
    training_step,
)
from enlightengan.vgg import build_vgg_features
from tests.enlightengan.two_ranks import global_batch, run_on_two_ranks, train, training_worker
from tests.fixtures.photos import darken, fit_within, wheel_photo


@pytest.fixture(scope="module")
def vgg():
    return build_vgg_features()


@pytest.fixture(scope="module")
def unpaired_photos():
    low = [fit_within(darken(wheel_photo(name)), 80, 80) for name in ("coffee", "chelsea")]
    normal = [fit_within(wheel_photo(name), 80, 80) for name in ("rocket", "flower")]
    return low, normal


def small_config(**overrides):
    settings = {"augment.crop_size": 32, "discriminator.patch_size": 16}
    settings.update(overrides)
    return tiny_config(**settings)


def run_steps(config, vgg, photos, steps, seed=0):
    torch.manual_seed(seed)
    modules = build_modules(config, vgg)
    optimizers = build_optimizers(modules, config.optim)
    rng = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        low, normal = make_training_batch(*photos, config.augment, rng)
        history.append(training_step(modules, optimizers, low, normal, config, rng))
    return modules, history


def test_step_returns_every_finite_loss_term(vgg, unpaired_photos):
    _, history = run_steps(small_config(), vgg, unpaired_photos, steps=1)
    assert set(history[0]) == set(LOSS_TERMS)
    assert all(math.isfinite(value) for value in history[0].values())


def test_exposure_and_color_terms_are_reported_and_added_only_when_enabled(vgg, unpaired_photos):
    config = small_config(**{"loss.exposure": 2.0, "loss.color_constancy": 3.0})
    _, history = run_steps(config, vgg, unpaired_photos, steps=1)
    expected_terms = {*LOSS_TERMS, "g_exposure", "g_color"}
    assert set(history[0]) == set(reported_terms(config)) == expected_terms
    parts = ("g_global_adv", "g_local_adv", "g_sfp", "g_sfp_patches")
    expected = sum(history[0][name] for name in parts)
    expected += 2.0 * history[0]["g_exposure"] + 3.0 * history[0]["g_color"]
    assert history[0]["g_total"] == pytest.approx(expected, rel=1e-5)
    assert reported_terms(small_config()) == LOSS_TERMS


def test_gradients_reach_every_trainable_parameter_and_vgg_stays_frozen(vgg, unpaired_photos):
    config = small_config()
    torch.manual_seed(0)
    modules = build_modules(config, vgg)
    optimizers = build_optimizers(modules, config.optim)
    vgg_before = [p.clone() for p in vgg.parameters()]
    weights_before = {
        name: [p.detach().clone() for p in net.parameters()]
        for name, net in modules.trainable().items()
    }
    low, normal = make_training_batch(*unpaired_photos, config.augment, torch.Generator())
    training_step(modules, optimizers, low, normal, config, torch.Generator().manual_seed(1))
    last_global_bias = list(dict(modules.global_d.named_parameters()))[-1]
    for name, net in modules.trainable().items():
        for (param_name, param), before in zip(
            net.named_parameters(), weights_before[name], strict=True
        ):
            assert param.grad is not None, f"{name}.{param_name} got no gradient"
            if name == "global_d" and param_name == last_global_bias:
                # the relativistic loss only sees score differences: a shared bias cancels
                assert param.grad.abs().max() < 1e-6
                continue
            assert not torch.equal(param.detach(), before), f"{name}.{param_name} did not move"
    assert all(not p.requires_grad and p.grad is None for p in vgg.parameters())
    assert all(torch.equal(p, b) for p, b in zip(vgg.parameters(), vgg_before, strict=True))
    assert not vgg.training


def test_same_seed_same_losses(vgg, unpaired_photos):
    config = small_config()
    _, first = run_steps(config, vgg, unpaired_photos, steps=3, seed=7)
    _, second = run_steps(config, vgg, unpaired_photos, steps=3, seed=7)
    _, other = run_steps(config, vgg, unpaired_photos, steps=3, seed=8)
    assert first == second
    assert first != other


def test_tiny_overfit_discriminators_learn_and_outputs_brighten(vgg, unpaired_photos):
    # Zero conv biases start the generator at (nearly) the identity, so 60 steps show the
    # brightening; the reference's PyTorch-default biases start this tiny net at a random
    # colour offset that 60 steps do not undo. (At 30 steps the brightening was 0.004 on one
    # CPU and above 0.005 on another: floating-point order decides so early.)
    settings = {"optim.lr": 1e-3, "augment.random_darken": False}
    settings |= {"generator.conv_bias_init": "zero", "discriminator.conv_bias_init": "zero"}
    config = small_config(**settings)
    dark = torch.stack([to_model_range(image[:32, :32]) for image in unpaired_photos[0]])
    torch.manual_seed(0)
    untrained = build_modules(config, vgg).generator.eval()
    with torch.no_grad():
        before = untrained(dark).clamp(-1, 1).mean().item()
    modules, history = run_steps(config, vgg, unpaired_photos, steps=60)
    with torch.no_grad():
        after = modules.generator.eval()(dark).clamp(-1, 1).mean().item()

    def mean(term, part):
        return np.mean([step[term] for step in part])

    first, last = history[:5], history[-5:]
    assert mean("d_global", last) < mean("d_global", first)
    assert mean("d_patch", last) < mean("d_patch", first)
    assert after > before + 0.005, f"mean output {before:.4f} -> {after:.4f}"


def test_learning_rate_is_constant_then_decays_linearly():
    optim = OptimConfig(lr=1e-4, epochs_constant=100, epochs_decay=100)
    assert learning_rate(0, optim) == learning_rate(100, optim) == 1e-4
    assert learning_rate(150, optim) == pytest.approx(0.5e-4)
    assert learning_rate(199, optim) == pytest.approx(1e-6)
    assert learning_rate(200, optim) == 0.0
    rates = [learning_rate(epoch, optim) for epoch in range(200)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_random_darken_divides_in_unit_space_within_range():
    config = tiny_config(**{"augment.darken_probability": 1.0}).augment
    low = torch.zeros(64, 3, 2, 2)  # 0.5 in [0, 1] space
    darkened = random_darken(low, config, torch.Generator().manual_seed(0))
    unit = (darkened + 1) / 2
    assert unit.min() >= 0.5 / 4 - 1e-6 and unit.max() <= 0.5 / 2 + 1e-6
    off = tiny_config(**{"augment.random_darken": False}).augment
    assert torch.equal(random_darken(low, off, torch.Generator()), low)


def test_darkening_factors_are_hundredths_as_in_the_reference_or_continuous():
    low = torch.zeros(4000, 3, 1, 1)  # 0.5 in [0, 1] space
    always = {"augment.darken_probability": 1.0}

    def factors(config):
        darkened = random_darken(low, config.augment, torch.Generator().manual_seed(0))
        return (0.5 / ((darkened + 1) / 2)).flatten().double()

    stepped = factors(tiny_config(**always)) * 100
    assert tiny_config().augment.darken_resolution == 100
    assert (stepped - stepped.round()).abs().max() < 1e-3
    assert stepped.round().min() == 200 and stepped.round().max() == 400
    continuous = factors(tiny_config(**always, **{"augment.darken_resolution": None})) * 100
    assert (continuous - continuous.round()).abs().max() > 0.1
    assert 200 <= continuous.min() and continuous.max() <= 400
    with pytest.raises(ValueError, match="darken_resolution"):
        AugmentConfig(darken_range=(2.0, 4.005)).validate()


def test_darkening_on_two_ranks_is_the_global_batch_darkening_split():
    config = tiny_config().augment
    low = torch.rand(6, 3, 2, 2) * 2 - 1
    whole = random_darken(low, config, step_generator(0, 0))
    halves = [
        random_darken(low[3 * r : 3 * r + 3], config, step_generator(0, 0), r, 2) for r in (0, 1)
    ]
    assert torch.equal(torch.cat(halves), whole)
    assert not torch.equal(whole, low)


def test_patch_offsets_skip_the_last_position_as_the_reference_unless_all():
    rng = torch.Generator().manual_seed(0)
    assert DiscriminatorConfig().patch_offsets == "reference"
    reference = random_patch_corners(18, 20, 16, 300, rng)
    assert {top for top, _ in reference} == {0, 1}
    assert {left for _, left in reference} == {0, 1, 2, 3}
    every = random_patch_corners(18, 20, 16, 300, rng, offsets="all")
    assert {top for top, _ in every} == {0, 1, 2}
    assert {left for _, left in every} == {0, 1, 2, 3, 4}
    assert set(random_patch_corners(16, 16, 16, 5, rng)) == {(0, 0)}
    with pytest.raises(ValueError, match="patch_offsets"):
        DiscriminatorConfig(patch_offsets="last").validate()


def test_step_generator_depends_on_seed_and_step_only():
    def draws(seed, step):
        return torch.rand(4, generator=step_generator(seed, step))

    assert torch.equal(draws(3, 10), draws(3, 10))
    assert not torch.equal(draws(3, 10), draws(3, 11))
    assert not torch.equal(draws(3, 10), draws(4, 10))


def _relative_gradient_difference(got: dict, expected: dict) -> float:
    """Largest gradient difference over a network, relative to its largest gradient."""
    difference = max(float((got[key] - value).abs().max()) for key, value in expected.items())
    return difference / max(float(value.abs().max()) for value in expected.values())


def _weights_off_by_more_than(got: dict, expected: dict, tolerance: float) -> tuple[int, int]:
    """(elements differing by more than ``tolerance``, all elements) of a network's weights."""
    differing = sum(
        int(((got[key] - value).abs() > tolerance).sum()) for key, value in expected.items()
    )
    return differing, sum(value.numel() for value in expected.values())


def test_two_ddp_ranks_match_one_process_on_the_global_batch(tmp_path):
    """Two gloo ranks (DDP, half of a global batch of 4 each) and one process on the whole
    batch give the same losses, gradients and weights over two steps: patch corners and
    darkening come from ``step_generator``, the same on both ranks, and the relativistic means
    are gathered. Without gathering, the global terms and the global D's updates differ.

    The generator uses instance norm: BatchNorm's batch statistics are per rank under DDP
    (``sync_batch`` runs on GPUs only), the one intended difference from one process."""
    config = small_config(**{"generator.norm": "instance"})
    steps = 2
    run_on_two_ranks(training_worker, tmp_path, config.to_json(), steps)
    low, normal = global_batch()
    one_process = train(config, low, normal, steps, data_parallel=False)

    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        gathered, local = result[True], result[False]
        for step in range(steps):
            expected = one_process["losses"][step]
            assert gathered["losses"][step] == pytest.approx(expected, rel=1e-5, abs=1e-7)
        for term in ("g_global_adv", "d_global"):
            assert local["losses"][0][term] != pytest.approx(
                one_process["losses"][0][term], rel=1e-5
            )
        for name, expected in one_process["gradients"].items():
            assert _relative_gradient_difference(gathered["gradients"][name], expected) < 1e-5
        assert (
            _relative_gradient_difference(
                local["gradients"]["global_d"], one_process["gradients"]["global_d"]
            )
            > 1e-3
        )
        # Adam moves a weight by about lr whatever the size of its gradient, so the odd
        # element whose gradient is analytically zero (a bias the relativistic loss or an
        # instance norm cancels) moves by float noise scaled up to lr; all others agree.
        for name, expected in one_process["weights"].items():
            differing, elements = _weights_off_by_more_than(
                gathered["weights"][name], expected, 1e-6
            )
            assert differing <= elements // 10_000, name
        differing, elements = _weights_off_by_more_than(
            local["weights"]["global_d"], one_process["weights"]["global_d"], 1e-6
        )
        assert differing > elements // 100


def test_training_batch_crops_and_rejects_mismatched_lists():
    config = tiny_config().augment
    rng = torch.Generator().manual_seed(0)
    images = [np.full((100, 70, 3), 255, np.uint8), np.zeros((50, 40, 3), np.uint8)]
    low, normal = make_training_batch(images, images[::-1], config, rng)
    assert low.shape == normal.shape == (2, 3, config.crop_size, config.crop_size)
    assert low[0].min() == 1.0 and low[1].max() == -1.0
    with pytest.raises(ValueError, match="equal"):
        make_training_batch(images, images[:1], config, rng)
    with pytest.raises(ValueError, match="uint8"):
        to_model_range(np.zeros((4, 4, 3), np.float32))

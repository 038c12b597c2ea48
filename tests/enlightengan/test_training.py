import math

import numpy as np
import pytest
import torch

from enlightengan.augment import make_training_batch, random_darken, to_model_range
from enlightengan.config import OptimConfig, tiny_config
from enlightengan.training import (
    LOSS_TERMS,
    build_modules,
    build_optimizers,
    learning_rate,
    reported_terms,
    training_step,
)
from enlightengan.vgg import build_vgg_features
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


def test_exposure_term_is_reported_and_added_only_when_enabled(vgg, unpaired_photos):
    config = small_config(**{"loss.exposure": 2.0})
    _, history = run_steps(config, vgg, unpaired_photos, steps=1)
    assert set(history[0]) == set(reported_terms(config)) == {*LOSS_TERMS, "g_exposure"}
    parts = ("g_global_adv", "g_local_adv", "g_sfp", "g_sfp_patches")
    expected = sum(history[0][name] for name in parts) + 2.0 * history[0]["g_exposure"]
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
    config = small_config(**{"optim.lr": 1e-3, "augment.random_darken": False})
    dark = torch.stack([to_model_range(image[:32, :32]) for image in unpaired_photos[0]])
    torch.manual_seed(0)
    untrained = build_modules(config, vgg).generator.eval()
    with torch.no_grad():
        before = untrained(dark).clamp(-1, 1).mean().item()
    modules, history = run_steps(config, vgg, unpaired_photos, steps=30)
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

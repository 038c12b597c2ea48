"""Fine-tuning sources (:mod:`enlightengan.finetune`), the starter's among them with its
discriminators: the config rules, the starting weights, loaded or fresh discriminators; tiny models on CPU."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from enlightengan import finetune, shipped_weights
from enlightengan.checkpoint import load_checkpoint, load_generator, save_checkpoint
from enlightengan.config import EnlightenGANConfig, GeneratorConfig, tiny_config
from enlightengan.discriminator import build_discriminators
from enlightengan.generator import Generator
from enlightengan.inference import Enhancer
from enlightengan.official_weights import save_official_generator
from enlightengan.serialization import CheckpointError
from enlightengan.starter import (
    load_starter_generator,
    load_starter_networks,
    starter_checkpoint_path,
)
from enlightengan.training import build_modules
from tests.fixtures.photos import darken, fit_within, wheel_photo

TINY = tiny_config()


@pytest.fixture(scope="module")
def dark_photo() -> np.ndarray:
    return darken(fit_within(wheel_photo("astronaut"), 160, 160))


def _trained_looking(config=TINY, seed: int = 0) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    generator = Generator(config.generator)
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    global_d, patch_d = build_discriminators(config.discriminator)
    return {"generator": generator.eval(), "global_d": global_d, "patch_d": patch_d}


def _fresh_modules(config):
    torch.manual_seed(config.seed)
    return build_modules(config, torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)))


def _same_states(left: torch.nn.Module, right: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(value, right[name]) for name, value in left.state_dict().items())


def test_starter_source_is_the_starter_checkpoint_with_its_discriminators():
    source = finetune.starter_source()
    starter = load_starter_networks()
    index = json.loads((starter_checkpoint_path() / "checkpoint.json").read_text())
    assert (source.kind, source.uri) == ("starter", "starter")
    assert source.model_card == finetune.STARTER_MODEL_CARD
    assert source.config == starter.config
    assert source.generator_sha256 == index["files"]["generator.pt"]["sha256"]
    assert source.discriminators_sha256 == index["files"]["discriminators.pt"]["sha256"]
    ours = {"generator": source.generator_state, **source.discriminator_states}
    assert set(ours) == set(starter.network_states) == {"generator", "global_d", "patch_d"}
    for name, expected in starter.network_states.items():
        assert all(torch.equal(ours[name][key], value) for key, value in expected.items()), name
    assert source.record()["discriminators"] == "loaded"
    assert finetune.discriminator_line(source.record()) == "discriminators: loaded from the source"


def test_a_starter_without_discriminators_gives_fresh_ones_and_the_pin_is_checked(
    tmp_path, monkeypatch
):
    starter = load_starter_networks()
    generator_only = save_checkpoint(
        tmp_path / "starter",
        config=starter.config,
        networks={"generator": load_starter_generator()},
        storage_dtype="float16",
    )
    index = (generator_only / "checkpoint.json").read_bytes()
    monkeypatch.setattr(shipped_weights, "starter_checkpoint_path", lambda: generator_only)
    monkeypatch.setattr(shipped_weights, "STARTER_SHA256", hashlib.sha256(index).hexdigest())
    source = finetune.starter_source()
    assert source.record()["discriminators"] == "fresh"
    assert source.record()["discriminators_sha256"] is None
    assert finetune.discriminator_line(source.record()) == "discriminators: fresh (source has none)"
    monkeypatch.setattr(shipped_weights, "STARTER_SHA256", "0" * 64)
    with pytest.raises(CheckpointError, match="pinned sha256"):
        finetune.starter_source()


def test_config_comes_from_the_source_with_a_lower_default_lr():
    source = finetune.starter_source()
    config = finetune.fine_tune_config(source, {}, {"augment.crop_size": 64})
    assert config.generator == source.config.generator
    assert config.loss == source.config.loss and config.augment.crop_size == 64
    assert config.optim.lr == finetune.FINETUNE_LR
    assert finetune.lr_origin({}, {}).startswith("fine-tuning default")
    given = finetune.fine_tune_config(source, {"optim": {"lr": 3e-4}}, {})
    assert given.optim.lr == 3e-4 and finetune.lr_origin({"optim": {"lr": 3e-4}}, {}) == "given"
    agreeing = {"generator.base_channels": 16, "generator.halve_above_width": 1000}
    same = finetune.fine_tune_config(source, {}, agreeing)
    assert same.generator.halve_above_width == 1000


@pytest.mark.parametrize(
    ("given", "overrides", "field"),
    [
        ({}, {"generator.base_channels": 32}, "generator.base_channels=32"),
        ({"generator": {"norm": "instance"}}, {}, "generator.norm='instance'"),
        ({}, {"generator.attention_skips": False}, "generator.attention_skips=False"),
    ],
)
def test_contradicting_generator_settings_are_one_line_errors(given, overrides, field):
    with pytest.raises(ValueError) as caught:
        finetune.fine_tune_config(finetune.starter_source(), given, overrides)
    message = str(caught.value)
    assert "\n" not in message and field in message and "starter" in message
    assert (
        finetune.fine_tune_config(
            finetune.starter_source(), {}, {"generator.norm": "sync_batch"}
        ).generator.norm
        == "sync_batch"
    )


def test_checkpoint_source_starts_from_its_generator_and_discriminators(tmp_path, dark_photo):
    networks = _trained_looking(seed=3)
    directory = save_checkpoint(tmp_path / "source", config=TINY, networks=networks)
    checkpoint = load_checkpoint(directory)
    index = json.loads((directory / "checkpoint.json").read_text())
    source = finetune.checkpoint_source(checkpoint, str(directory), index)
    assert source.has_discriminators
    assert (
        source.generator_sha256
        == hashlib.sha256((directory / "generator.pt").read_bytes()).hexdigest()
    )
    with pytest.raises(ValueError, match="discriminator.base_channels=4"):
        finetune.fine_tune_config(source, {}, {"discriminator.base_channels": 4})
    config = finetune.fine_tune_config(source, {}, {})
    start = finetune.save_init_checkpoint(tmp_path / "init", config, source)
    assert load_checkpoint(start).step == 0
    modules = _fresh_modules(config)
    assert finetune.apply_init_checkpoint(modules, load_checkpoint(start)) == [
        "generator",
        "global_d",
        "patch_d",
    ]
    for name in ("global_d", "patch_d"):
        assert _same_states(modules.trainable()[name], networks[name].state_dict())
    expected = Enhancer(networks["generator"])([dark_photo])[0]
    np.testing.assert_array_equal(Enhancer(modules.generator.eval())([dark_photo])[0], expected)


def test_official_layout_source_starts_from_its_generator_with_fresh_discriminators(
    tmp_path, dark_photo
):
    torch.manual_seed(5)
    reference = Generator(GeneratorConfig()).eval()
    path = save_official_generator(reference, tmp_path / "200_net_G_A.pth")
    source = finetune.official_source(path.read_bytes(), str(path))
    assert source.record()["discriminators"] == "fresh" and source.config is None
    assert source.generator_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    config = finetune.fine_tune_config(source, {}, {"discriminator.base_channels": 8})
    assert config.generator == EnlightenGANConfig().generator
    with pytest.raises(ValueError, match="generator.base_channels=8"):
        finetune.fine_tune_config(source, {}, {"generator.base_channels": 8})
    start = finetune.save_init_checkpoint(tmp_path / "init", config, source)
    modules = _fresh_modules(config)
    fresh_d = {k: v.clone() for k, v in modules.global_d.state_dict().items()}
    assert finetune.apply_init_checkpoint(modules, load_checkpoint(start)) == ["generator"]
    assert _same_states(modules.global_d, fresh_d)
    expected = Enhancer(reference)([dark_photo])[0]
    np.testing.assert_array_equal(Enhancer(load_generator(start))([dark_photo])[0], expected)

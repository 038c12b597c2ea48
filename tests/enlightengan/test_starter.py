"""The starter weights file: round trip, storage precision, refusal of damaged or foreign files,
and the shipped model itself (loads by name, brightens a dark photo, beats gamma on it)."""

from __future__ import annotations

import hashlib
import io
import pickle

import numpy as np
import pytest
import torch

from enlightengan.baselines import gamma_correction
from enlightengan.config import tiny_config
from enlightengan.generator import Generator
from enlightengan.inference import Enhancer
from enlightengan.metrics import psnr
from enlightengan.serialization import CheckpointError
from enlightengan.starter import (
    STARTER_SHA256,
    load_starter,
    load_weights,
    model_card_path,
    save_weights,
    starter_weights_path,
    weights_from_bytes,
    write_starter_checkpoint,
)
from tests.fixtures.photos import darken, fit_within, wheel_photo


def _trained_looking_generator() -> Generator:
    torch.manual_seed(0)
    generator = Generator(tiny_config().generator)
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return generator.eval()


@pytest.fixture(scope="module")
def dark_coffee() -> np.ndarray:
    return darken(fit_within(wheel_photo("coffee"), 300, 200))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_keeps_config_and_outputs(tmp_path, dark_coffee, dtype):
    generator, config = _trained_looking_generator(), tiny_config()
    digest = save_weights(tmp_path / "w.pt", generator, config, storage_dtype=dtype)
    assert digest == hashlib.sha256((tmp_path / "w.pt").read_bytes()).hexdigest()
    loaded, loaded_config = load_weights(tmp_path / "w.pt", expected_sha256=digest)
    assert loaded_config == config and not loaded.training
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    expected, got = Enhancer(generator)([dark_coffee])[0], Enhancer(loaded)([dark_coffee])[0]
    if dtype == "float32":
        np.testing.assert_array_equal(got, expected)
    else:
        assert psnr(got, expected) > 40


def test_damaged_foreign_and_pickled_files_are_refused(tmp_path):
    generator, config = _trained_looking_generator(), tiny_config()
    digest = save_weights(tmp_path / "w.pt", generator, config)
    data = bytearray((tmp_path / "w.pt").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "damaged.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="pinned sha256"):
        load_weights(tmp_path / "damaged.pt", expected_sha256=digest)
    buffer = io.BytesIO()
    torch.save({"format": "something-else", "state_dict": {}}, buffer)
    with pytest.raises(CheckpointError, match="not an EnlightenGAN starter"):
        weights_from_bytes(buffer.getvalue())

    class Payload:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    with pytest.raises(pickle.UnpicklingError):
        weights_from_bytes(pickle.dumps(Payload()))


def test_shipped_starter_loads_with_its_pinned_hash_and_model_card():
    path = starter_weights_path()
    assert path.is_file() and path.stat().st_size <= 20 * 1024 * 1024
    assert hashlib.sha256(path.read_bytes()).hexdigest() == STARTER_SHA256
    card = model_card_path().read_text()
    for section in ("Data", "Command", "Scores", "Licence", "Limitations"):
        assert f"## {section}" in card
    generator, config = load_starter()
    assert generator.config == config.generator and not generator.training


def test_shipped_starter_brightens_and_beats_gamma_on_a_darkened_photo():
    original = fit_within(wheel_photo("coffee"), 600, 400)
    dark = darken(original)
    enhanced = Enhancer.from_pretrained("starter")([dark])[0]
    assert enhanced.shape == dark.shape and enhanced.dtype == np.uint8
    assert enhanced.mean() > 3 * dark.mean()
    assert psnr(enhanced, original) > psnr(gamma_correction(dark), original)


def test_starter_as_a_native_checkpoint_directory(tmp_path):
    from enlightengan.checkpoint import load_generator

    directory = write_starter_checkpoint(tmp_path / "starter")
    generator = load_generator(directory)
    reference, _ = load_starter()
    for name, value in reference.state_dict().items():
        assert torch.equal(generator.state_dict()[name], value)

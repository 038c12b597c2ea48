"""The shipped starter model: an ordinary checkpoint pinned by its index's sha256, refused when
changed, loaded by name, and it brightens a dark photo better than gamma."""

from __future__ import annotations

import hashlib
import re
import shutil

import numpy as np
import pytest
import torch

from enlightengan import shipped_weights
from enlightengan.baselines import gamma_correction
from enlightengan.checkpoint import is_complete_checkpoint, load_generator, load_networks
from enlightengan.inference import Enhancer
from enlightengan.metrics import psnr
from enlightengan.serialization import CheckpointError
from enlightengan.starter import (
    STARTER_SHA256,
    load_starter_generator,
    load_starter_networks,
    model_card_path,
    starter_checkpoint_path,
)
from tests.fixtures.photos import darken, fit_within, wheel_photo


@pytest.fixture
def starter_copy(tmp_path, monkeypatch):
    """A copy of the shipped starter that the package loads as its own."""
    copy = tmp_path / "starter"
    shutil.copytree(starter_checkpoint_path(), copy)
    monkeypatch.setattr(shipped_weights, "starter_checkpoint_path", lambda: copy)
    return copy


def test_the_starter_is_an_ordinary_complete_checkpoint_pinned_by_its_index():
    directory = starter_checkpoint_path()
    assert is_complete_checkpoint(directory, verify_hashes=True)
    index = directory / "checkpoint.json"
    assert hashlib.sha256(index.read_bytes()).hexdigest() == STARTER_SHA256
    sizes = sum(path.stat().st_size for path in directory.iterdir())
    assert sizes <= 20 * 1024 * 1024
    # Half precision on disk, float32 once loaded.
    stored = torch.load(directory / "generator.pt", weights_only=True)
    assert stored["conv1_1.weight"].dtype == torch.float16
    generator = load_generator(directory)
    assert not generator.training
    assert all(value.dtype == torch.float32 for value in generator.parameters())
    networks = load_networks(directory)
    assert set(networks.network_states) == {"generator", "global_d", "patch_d"}


def test_the_starter_has_its_model_card_and_its_tone_transfer_config():
    card = model_card_path().read_text()
    for section in ("Data", "Command", "Scores", "Licence", "Limitations"):
        assert f"## {section}" in card
    starter = load_starter_networks()
    shipped = {
        "strength": 0.82,
        "dark_strength": 1.4,
        "dark_luma": 20,
        "bright_luma": 40,
        "denoise": 1.0,
        "noise_low": 1.0,
        "noise_high": 3.0,
        "colour": 0.5,
        "dark_colour": 0.8,
    }
    for name, value in shipped.items():
        assert getattr(starter.config.generator, f"tone_transfer_{name}") == value
        # The card's command line ships these very settings.
        shown = re.search(rf"tone_transfer_{name}={value:g}(?![\d.])", card)
        assert shown or name in ("strength", "dark_strength")
    generator = load_starter_generator()
    assert generator.config == starter.config.generator and not generator.training


def test_a_tampered_weights_file_in_the_starter_is_refused(starter_copy):
    data = bytearray((starter_copy / "generator.pt").read_bytes())
    data[-100] ^= 0xFF
    (starter_copy / "generator.pt").write_bytes(bytes(data))
    assert not is_complete_checkpoint(starter_copy, verify_hashes=True)
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        Enhancer.from_pretrained("starter")
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        load_starter_generator()


def test_a_replaced_starter_index_is_refused_by_the_pin(starter_copy):
    """Even a consistent checkpoint (index re-hashed) is not the starter this release pinned."""
    index = starter_copy / "checkpoint.json"
    index.write_bytes(index.read_bytes().replace(b'"format_version": 1', b'"format_version":  1'))
    assert is_complete_checkpoint(starter_copy, verify_hashes=True)
    with pytest.raises(CheckpointError, match="pinned sha256"):
        Enhancer.from_pretrained("starter")
    shutil.rmtree(starter_copy)
    with pytest.raises(CheckpointError, match="missing from the installation"):
        load_starter_networks()


def test_shipped_starter_brightens_and_beats_gamma_on_a_darkened_photo():
    original = fit_within(wheel_photo("coffee"), 600, 400)
    dark = darken(original)
    enhancer = Enhancer.from_pretrained("starter")
    assert enhancer.description.startswith("the shipped starter model")
    enhanced = enhancer([dark])[0]
    assert enhanced.shape == dark.shape and enhanced.dtype == np.uint8
    assert enhanced.mean() > 3 * dark.mean()
    assert psnr(enhanced, original) > psnr(gamma_correction(dark), original)

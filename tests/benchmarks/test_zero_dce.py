"""benchmarks/zero_dce.py: both weight layouts load into the same network, the curve is the
authors' quadratic, and a file of another shape is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import zero_dce  # noqa: E402


def _random_network(seed: int, neuro_low_light: bool = False) -> zero_dce.ZeroDCE:
    torch.manual_seed(seed)
    return zero_dce.ZeroDCE(neuro_low_light=neuro_low_light).eval()


def test_authors_layout_loads_and_enhances_like_the_network(tmp_path):
    network = _random_network(0)
    authors = {
        f"e_conv{i + 1}.{part}": getattr(conv, part).detach().clone()
        for i, conv in enumerate(network.convs)
        for part in ("weight", "bias")
    }
    torch.save(authors, tmp_path / "Epoch99.pth")
    loaded = zero_dce.load_zero_dce(tmp_path / "Epoch99.pth")
    assert not loaded.neuro_low_light
    photo = np.random.default_rng(0).integers(0, 80, size=(24, 32, 3), dtype=np.uint8)
    (ours,) = zero_dce.enhance(loaded, [photo])
    x = torch.from_numpy(photo.astype(np.float32)).permute(2, 0, 1)[None] / 255
    with torch.no_grad():
        curves = network.curves(x)
        for r in torch.split(curves, 3, dim=1):
            x = x + r * (x * x - x)
    expected = np.round(x.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert ours.shape == photo.shape
    np.testing.assert_array_equal(ours, expected)


def test_neuro_low_light_layout_is_recognised(tmp_path):
    network = _random_network(1, neuro_low_light=True)
    state = {
        f"dce_net.conv{i + 1}.{part}": getattr(conv, part).detach().clone()
        for i, conv in enumerate(network.convs)
        for part in ("weight", "bias")
    }
    torch.save({"model_state_dict": state}, tmp_path / "best_model.pth")
    loaded = zero_dce.load_zero_dce(tmp_path / "best_model.pth")
    assert loaded.neuro_low_light
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network(x))


def test_other_weights_are_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a Zero-DCE weights file"):
        zero_dce.load_zero_dce(tmp_path / "other.pth")

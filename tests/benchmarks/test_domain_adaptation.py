"""benchmarks/domain_adaptation.py: the split is deterministic, disjoint and complete; the
camera domain's degradation is seeded and has the cast and read noise it claims; a run of a
second finishes and prints its table, for both domains; 'shipped' without shipped
discriminators is one clear error."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import domain_adaptation  # noqa: E402

from pipelines.starter.corpus import srgb_to_linear  # noqa: E402
from tests.fixtures.photos import darken, wheel_photo  # noqa: E402

# scikit-image's photos (quick to load): three target photos (two to fine-tune on, one held
# out), two normal-light ones.
TARGET, NORMAL = ("astronaut", "coffee", "rocket"), ("chelsea", "motorcycle")
TINY = ["--minutes", "0.01", "--longest-side", "160", "optim.batch_size=1", "augment.crop_size=64"]


def test_split_is_deterministic_disjoint_and_complete():
    names = [f"{number:02d}.jpg" for number in range(1, 65)]
    tune, held = domain_adaptation.split_names(names)
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    assert domain_adaptation.split_names(shuffled) == (tune, held)
    assert set(tune).isdisjoint(held)
    assert sorted(tune + held) == names
    assert (len(tune), len(held)) == (43, 21)
    for count in (2, 3, 5):
        tune, held = domain_adaptation.split_names(names[:count])
        assert tune and held and len(tune) + len(held) == count
    with pytest.raises(ValueError, match="at least 2"):
        domain_adaptation.split_names(["only.jpg"])
    with pytest.raises(ValueError, match="unique"):
        domain_adaptation.split_names(["a.jpg", "a.jpg"])


def _linear(rgb: np.ndarray) -> np.ndarray:
    return srgb_to_linear(rgb.astype(np.float64) / 255.0)


def test_camera_degradation_is_seeded_with_its_cast_and_strong_read_noise():
    import bench_quality

    photo = wheel_photo("coffee")[:128, :128]
    first = domain_adaptation.darken_camera_strong(photo, "coffee.png")
    np.testing.assert_array_equal(
        first, domain_adaptation.darken_camera_strong(photo, "coffee.png")
    )
    assert not np.array_equal(first, domain_adaptation.darken_camera_strong(photo, "other.png"))
    assert not np.array_equal(first, domain_adaptation.darken_camera_strong(photo, "coffee.png", 1))

    red, blue = domain_adaptation.CAST_GAINS
    low, high = domain_adaptation.STRONG_READ_NOISE
    white = np.full((96, 96, 3), 255, np.uint8)
    black = np.zeros((96, 96, 3), np.uint8)
    for key in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        # A white frame: the channel ratios in linear light are the fixed cast's gains.
        means = _linear(domain_adaptation.darken_camera_strong(white, key)).mean(axis=(0, 1))
        assert means[0] / means[1] == pytest.approx(red, abs=0.03)
        assert means[2] / means[1] == pytest.approx(blue, abs=0.03)
        # A black frame holds read noise only, clipped at 0: its linear mean is about 0.36 of
        # the noise's standard deviation, above anything the mild camera set can draw.
        strong = _linear(domain_adaptation.darken_camera_strong(black, key)).mean()
        mild = _linear(bench_quality.darken_like_camera(black, key)).mean()
        assert 0.3 * low <= strong <= 0.45 * high
        assert strong > 1.5 * mild


def _write(folder: Path, photos: dict[str, np.ndarray]) -> Path:
    folder.mkdir()
    for name, rgb in photos.items():
        Image.fromarray(rgb).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def normal_folder(tmp_path) -> Path:
    return _write(tmp_path / "normal", {name: wheel_photo(name) for name in NORMAL})


def test_camera_run_with_a_discriminators_file_prints_its_table(tmp_path, normal_folder, capsys):
    from enlightengan.checkpoint import save_checkpoint
    from enlightengan.discriminator import build_discriminators
    from enlightengan.starter import load_starter_generator, load_starter_networks

    config = load_starter_networks().config
    torch.manual_seed(0)
    global_d, patch_d = build_discriminators(config.discriminator)
    file = save_checkpoint(
        tmp_path / "candidate",
        config=config,
        networks={"generator": load_starter_generator(), "global_d": global_d, "patch_d": patch_d},
        storage_dtype="float16",
    )
    sheet = tmp_path / "sheet.png"
    photos = _write(tmp_path / "photos", {name: wheel_photo(name) for name in TARGET})
    means = domain_adaptation.main(
        ["--domain", "camera", "--photos", str(photos), "--normal", str(normal_folder)]
        + ["--discriminators-file", str(file), "--sheet", str(sheet)]
        + TINY
    )
    out = capsys.readouterr().out
    tuned = f"fine-tuned ({file.name} D)"
    assert list(means) == ["input", "starter", tuned, "original"]
    assert "split: 2 photos to fine-tune on, 1 held out" in out
    assert "s/step)" in out and f"| {tuned} |" in out and "| original |" in out
    assert np.isfinite(means[tuned]["psnr"]) and np.isfinite(means["starter"]["ssim"])
    with Image.open(sheet) as image:
        assert image.width == 4 * 240  # input | starter | fine-tuned | original


def test_real_run_with_fresh_discriminators_prints_its_table(tmp_path, normal_folder, capsys):
    dark = {name: darken(wheel_photo(name)) for name in TARGET}
    photos = _write(tmp_path / "dark", dark)
    means = domain_adaptation.main(
        ["--domain", "real", "--photos", str(photos), "--normal", str(normal_folder)]
        + ["--discriminators", "fresh"]
        + TINY
    )
    out = capsys.readouterr().out
    assert list(means) == ["input", "starter", "fine-tuned (fresh D)"]
    assert "discriminators: fresh" in out and "| fine-tuned (fresh D) |" in out
    assert np.isnan(means["starter"]["psnr"]) and np.isfinite(means["starter"]["luma"])


def test_shipped_discriminators_missing_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    from enlightengan.finetune import starter_source

    def generator_only_starter():
        return replace(starter_source(), discriminator_states=None, discriminators_sha256=None)

    monkeypatch.setattr(domain_adaptation, "starter_source", generator_only_starter)
    with pytest.raises(SystemExit, match="ships no starter discriminators") as raised:
        domain_adaptation.main(
            ["--domain", "real", "--photos", str(tmp_path), "--normal", str(tmp_path)]
        )
    assert "\n" not in str(raised.value)

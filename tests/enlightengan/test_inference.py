"""Enhancer: sizes, batching, tiling, precision and input validation, on CPU with real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from enlightengan.checkpoint import CheckpointError, save_checkpoint, save_official_generator
from enlightengan.config import GeneratorConfig, tiny_config
from enlightengan.inference import Enhancer, EnhancerSettings, blend_window, tile_starts
from tests.enlightengan.textured_generator import darken, psnr, textured_generator

UNTILED = EnhancerSettings(tile_size=None)


@pytest.fixture(scope="module")
def generator():
    return textured_generator(tiny_config().generator)


@pytest.fixture(scope="module")
def dark_coffee() -> np.ndarray:
    return darken(data.coffee())  # 400 x 600 x 3


@pytest.fixture(scope="module")
def untiled_coffee(generator, dark_coffee) -> np.ndarray:
    return Enhancer(generator, UNTILED)([dark_coffee])[0]


def record_forward_shapes(generator) -> tuple[list[tuple[int, ...]], object]:
    shapes: list[tuple[int, ...]] = []
    handle = generator.register_forward_pre_hook(lambda _, args: shapes.append(args[0].shape))
    return shapes, handle


def test_odd_sizes_keep_their_shape(generator, dark_coffee, untiled_coffee):
    crop = np.ascontiguousarray(dark_coffee[:37, :53])
    outputs = Enhancer(generator)([crop, dark_coffee])
    assert [out.shape for out in outputs] == [(37, 53, 3), (400, 600, 3)]
    assert all(out.dtype == np.uint8 for out in outputs)
    assert np.array_equal(outputs[1], untiled_coffee)
    assert psnr(untiled_coffee, dark_coffee) < 20  # the model changes the picture a lot

    single = Enhancer(generator)(crop)
    assert len(single) == 1 and np.array_equal(single[0], outputs[0])
    assert Enhancer(generator)([]) == []


def test_default_architecture_odd_size_matches_the_generator():
    reference = textured_generator(GeneratorConfig(), seed=2)
    image = darken(data.astronaut()[100:137, 200:253])
    enhancer = Enhancer(reference)
    (output,) = enhancer([image])
    assert output.shape == (37, 53, 3)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    with torch.no_grad():
        direct = reference(tensor)
    assert torch.equal(enhancer.enhance_tensor(tensor), direct)
    expected = ((direct + 1) / 2 * 255).clamp(0, 255).round().to(torch.uint8)
    assert np.array_equal(output, expected[0].permute(1, 2, 0).numpy())


def test_mixed_sizes_batched_equal_one_by_one(generator, dark_coffee):
    sizes = [(37, 53), (64, 80), (37, 53), (120, 90), (64, 80), (37, 53)]
    images = [
        np.ascontiguousarray(dark_coffee[7 * i : 7 * i + h, 11 * i : 11 * i + w])
        for i, (h, w) in enumerate(sizes)
    ]
    shapes, handle = record_forward_shapes(generator)
    try:
        batched = Enhancer(generator, EnhancerSettings(batch_size=2))(images)
    finally:
        handle.remove()
    assert sorted(shape[0] for shape in shapes) == [1, 1, 2, 2]
    one_by_one = [Enhancer(generator, EnhancerSettings(batch_size=1))([im])[0] for im in images]
    for image, together, alone in zip(images, batched, one_by_one, strict=True):
        assert together.shape == image.shape
        assert np.abs(together.astype(int) - alone.astype(int)).max() <= 1


def test_tiled_agrees_with_untiled_and_bounds_forward_size(generator, dark_coffee, untiled_coffee):
    settings = EnhancerSettings(tile_size=256, tile_overlap=64, batch_size=2)
    shapes, handle = record_forward_shapes(generator)
    try:
        tiled = Enhancer(generator, settings)([dark_coffee])[0]
    finally:
        handle.remove()
    assert tiled.shape == dark_coffee.shape
    assert shapes and all(h <= 256 and w <= 256 and b <= 2 for b, _, h, w in shapes)
    assert all(h % 16 == 0 and w % 16 == 0 for _, _, h, w in shapes)
    tiled_psnr = psnr(tiled, untiled_coffee)
    assert tiled_psnr > 35.0, tiled_psnr  # 36.7 dB measured with this random-weight model

    seams = Enhancer(generator, EnhancerSettings(tile_size=256, tile_overlap=0))([dark_coffee])[0]
    assert psnr(seams, untiled_coffee) < tiled_psnr - 3.0  # blending is what makes it close


def test_wide_images_are_halved_once_as_the_reference_does():
    config = tiny_config(**{"generator.halve_above_width": 128}).generator
    halving = textured_generator(config, seed=3)
    image = darken(data.rocket()[:96, :300])
    untiled = Enhancer(halving, UNTILED)([image])[0]  # the generator halves it itself
    shapes, handle = record_forward_shapes(halving)
    try:
        tiled = Enhancer(halving, EnhancerSettings(tile_size=128, tile_overlap=32))([image])[0]
    finally:
        handle.remove()
    assert tiled.shape == image.shape
    assert all(shape[-2] <= 64 and shape[-1] <= 128 for shape in shapes)  # halved, then tiled
    assert psnr(tiled, untiled) > 35.0


def test_bf16_autocast_on_cpu_stays_within_45_db_of_fp32(dark_coffee):
    """With the input layer in float32 (the default), bf16 autocast keeps 45 dB; rounding the
    image itself to bf16 in that layer is what costs the most."""
    reference = Enhancer(textured_generator(tiny_config().generator), UNTILED)([dark_coffee])[0]
    results = {}
    for kept in (True, False):
        settings = EnhancerSettings(tile_size=None, precision="bf16", float32_input_layer=kept)
        generator = textured_generator(tiny_config().generator)
        results[kept] = psnr(Enhancer(generator, settings)([dark_coffee])[0], reference)
    assert results[True] >= 45.0
    assert results[False] < results[True]


def test_fp16_autocast_runs(generator, dark_coffee):
    crop = np.ascontiguousarray(dark_coffee[:64, :96])
    full = Enhancer(generator, UNTILED)([crop])[0]
    half = Enhancer(generator, EnhancerSettings(tile_size=None, precision="fp16"))([crop])[0]
    assert psnr(half, full) > 30.0


def test_truncation_matches_the_reference_conversion(generator, dark_coffee):
    crop = np.ascontiguousarray(dark_coffee[:48, :48])
    rounded = Enhancer(generator)([crop])[0].astype(int)
    truncated = Enhancer(generator, EnhancerSettings(pixel_rounding="truncate"))([crop])[0]
    difference = rounded - truncated.astype(int)
    assert difference.min() >= 0 and difference.max() == 1
    tensor = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1
    raw = Enhancer(generator).enhance_tensor(tensor)[0].permute(1, 2, 0).numpy()
    reference = np.minimum(np.maximum((raw + 1) / 2.0 * 255.0, 0), 255).astype(np.uint8)
    assert np.array_equal(truncated, reference)


def test_from_pretrained_accepts_a_run_directory(tmp_path, generator, dark_coffee):
    config = tiny_config()
    other = textured_generator(config.generator, seed=9)
    for step, network in ((10, other), (30, generator)):
        save_checkpoint(
            tmp_path / "run" / f"checkpoint_{step:03d}",
            config=config,
            networks={"generator": network},
            trainer_state={"step": step},
        )
    crop = np.ascontiguousarray(dark_coffee[:40, :64])
    from_run = Enhancer.from_pretrained(tmp_path)([crop])[0]
    assert np.array_equal(from_run, Enhancer(generator)([crop])[0])
    from_dir = Enhancer.from_pretrained(tmp_path / "run" / "checkpoint_010")([crop])[0]
    assert not np.array_equal(from_dir, from_run)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        Enhancer.from_pretrained(tmp_path / "run" / "missing")


def test_from_pretrained_loads_the_authors_file_and_refuses_uris(tmp_path, dark_coffee):
    reference = textured_generator(GeneratorConfig(), seed=3)
    path = save_official_generator(reference, tmp_path / "200_net_G_A.pth")
    crop = np.ascontiguousarray(dark_coffee[:32, :48])
    loaded = Enhancer.from_pretrained(path, UNTILED)
    assert "authors" in loaded.description
    assert np.array_equal(loaded([crop])[0], Enhancer(reference, UNTILED)([crop])[0])
    with pytest.raises(CheckpointError, match="load_enhancer"):
        Enhancer.from_pretrained("s3://bucket/runs/exp1")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((8, 8, 3), np.float32), "dtype float32"),
        (np.zeros((8, 8), np.uint8), "grayscale"),
        (np.zeros((8, 8, 4), np.uint8), "RGBA"),
        (np.zeros((8, 8, 2), np.uint8), "not RGB"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        ([[1, 2, 3]], "numpy array"),
        ("image.png", "expected numpy images"),
    ],
)
def test_bad_images_raise_value_error(generator, bad, message):
    with pytest.raises(ValueError, match=message):
        Enhancer(generator)(bad)


def test_bad_tensors_and_settings_raise_value_error(generator):
    enhancer = Enhancer(generator)
    nan_batch = torch.zeros(1, 3, 16, 16)
    nan_batch[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        enhancer.enhance_tensor(nan_batch)
    with pytest.raises(ValueError, match="RGB batch"):
        enhancer.enhance_tensor(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="float"):
        enhancer.enhance_tensor(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    for settings in (
        EnhancerSettings(precision="int8"),
        EnhancerSettings(tile_size=32),
        EnhancerSettings(tile_size=256, tile_overlap=100),
        EnhancerSettings(batch_size=0),
        EnhancerSettings(device="abacus"),
    ):
        with pytest.raises(ValueError):
            Enhancer(generator, settings)


def test_tiles_cover_the_image_with_positive_weights():
    starts = tile_starts(608, 256, 64, multiple=16)
    assert starts == [0, 192, 352] and all(start % 16 == 0 for start in starts)
    coverage = torch.zeros(608)
    for start in starts:
        coverage[start : start + 256] += blend_window(start, 256, 608, 64)
    assert coverage.min() > 0.5
    assert torch.allclose(coverage[192:256], torch.ones(64))  # cosine ramps sum to one
    assert tile_starts(100, 256, 64) == [0]

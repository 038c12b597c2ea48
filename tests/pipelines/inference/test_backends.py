"""Inference backends on a real (tiny, textured) checkpoint and real photos: every backend's
pixels against fp32 torch, tiling, halving and odd sizes through the ONNX session, the export
cache, the automatic choice, and ``enlightengan enhance --backend`` on real Ray."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enlightengan.checkpoint import save_checkpoint
from enlightengan.config import tiny_config
from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.inference.backends import CACHE_ENV, checkpoint_digest, choose_backend
from pipelines.inference.checkpoints import CHECKPOINT_FILES_FOR_INFERENCE
from pipelines.inference.stages import InferenceSettings, build_enhancer
from tests.enlightengan.textured_generator import psnr, textured_generator
from tests.fixtures.photos import darken, encode, fit_within, wheel_photo

MIN_PSNR_DB = 45.0


def write_checkpoint(directory: Path, seed: int = 0, **generator_overrides) -> Path:
    config = tiny_config(**{f"generator.{k}": v for k, v in generator_overrides.items()})
    return save_checkpoint(
        directory,
        config=config,
        networks={"generator": textured_generator(config.generator, seed=seed)},
        trainer_state={"step": 1, "epoch": 0},
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint_000001")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """The darkened coffee photo at 600x400, as the benchmarks use it."""
    return darken(fit_within(wheel_photo("coffee"), 600, 400))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


def enhanced(checkpoint: Path, images, **settings) -> list[np.ndarray]:
    return build_enhancer(checkpoint, InferenceSettings(**settings))(images)


def fp32_torch(checkpoint: Path, images, **settings) -> list[np.ndarray]:
    return enhanced(
        checkpoint, images, backend="torch", precision="fp32", channels_last=False, **settings
    )


@pytest.mark.parametrize(
    ("backend", "precision", "channels_last"),
    [("torch", "fp32", True), ("onnxruntime", "fp32", False), ("auto", "fp32", True)],
)
def test_every_backend_is_within_45_db_of_fp32_torch(
    checkpoint, photo, backend, precision, channels_last
):
    reference = fp32_torch(checkpoint, [photo])[0]
    assert psnr(reference, photo) < 25, "the model must move pixels for the check to mean much"
    output = enhanced(
        checkpoint, [photo], backend=backend, precision=precision, channels_last=channels_last
    )[0]
    assert output.shape == photo.shape and output.dtype == np.uint8
    assert psnr(output, reference) >= MIN_PSNR_DB


def test_the_default_path_is_within_45_db_of_fp32_torch(checkpoint, photo):
    """``auto``/``auto`` on this machine (torch bf16 on AMX CPUs, onnxruntime fp32 on others)."""
    reference = fp32_torch(checkpoint, [photo])[0]
    output = enhanced(checkpoint, [photo], backend="auto", precision="auto", channels_last=True)[0]
    assert psnr(output, reference) >= MIN_PSNR_DB


def test_onnxruntime_tiles_blend_like_torch_tiles(checkpoint, photo):
    tiling = {"tile_size": 128, "tile_overlap": 32}
    reference = fp32_torch(checkpoint, [photo], **tiling)[0]
    tiled = enhanced(checkpoint, [photo], backend="onnxruntime", **tiling)[0]
    whole = enhanced(checkpoint, [photo], backend="onnxruntime")[0]
    assert psnr(tiled, reference) >= MIN_PSNR_DB
    assert psnr(tiled, whole) < psnr(tiled, reference), "the tiles really were run"


def test_onnxruntime_halves_wide_images_and_takes_any_size(tmp_path):
    """Dynamic height and width in one session: a wide image the generator halves, a batch
    of two, an image smaller than the 16-pixel padding multiple."""
    checkpoint = write_checkpoint(tmp_path / "halving", halve_above_width=256)
    rocket = darken(wheel_photo("rocket"))
    images = [
        fit_within(rocket, 320, 200),
        rocket[:97, :131],
        rocket[100:197, :131],
        rocket[:9, :13],
    ]
    reference = fp32_torch(checkpoint, images, tile_size=None, batch_size=2)
    outputs = enhanced(checkpoint, images, backend="onnxruntime", tile_size=None, batch_size=2)
    for expected, output in zip(reference, outputs, strict=True):
        assert output.shape == expected.shape
        assert psnr(output, expected) >= MIN_PSNR_DB


def test_export_is_cached_by_checkpoint_content(checkpoint, photo, tmp_path, private_cache):
    first = enhanced(checkpoint, [photo], backend="onnxruntime")[0]
    (exported,) = (private_cache / "onnx").glob("*.onnx")
    assert exported.name.startswith(checkpoint_digest(checkpoint, CHECKPOINT_FILES_FOR_INFERENCE))
    written = exported.stat().st_mtime_ns
    again = enhanced(checkpoint, [photo], backend="onnxruntime")[0]
    assert exported.stat().st_mtime_ns == written, "a restart must load, not export again"
    np.testing.assert_array_equal(again, first)

    other = write_checkpoint(tmp_path / "other", seed=5)
    enhanced(other, [photo[:64, :64]], backend="onnxruntime")
    assert len(list((private_cache / "onnx").glob("*.onnx"))) == 2

    exported.write_bytes(b"not an onnx model")
    repaired = enhanced(checkpoint, [photo], backend="onnxruntime")[0]
    np.testing.assert_array_equal(repaired, first)
    assert exported.read_bytes()[:4] != b"not "


def test_unusable_cache_folder_falls_back_to_the_temp_folder(
    checkpoint, photo, tmp_path, monkeypatch
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv(CACHE_ENV, str(blocker))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)
    output = enhanced(checkpoint, [photo[:64, :96]], backend="onnxruntime")[0]
    assert output.shape == (64, 96, 3)
    assert len(list((tmp_path / "tmp" / "enlightengan-onnx").glob("*.onnx"))) == 1


@pytest.mark.parametrize(
    ("flags", "backend", "precision", "device", "expected"),
    [
        ({"avx2"}, "auto", "auto", "cpu", ("onnxruntime", "fp32")),
        ({"avx2", "avx512f", "avx512_bf16"}, "auto", "auto", "cpu", ("onnxruntime", "fp32")),
        ({"avx512_bf16", "amx_bf16", "amx_tile"}, "auto", "auto", "cpu", ("torch", "bf16")),
        ({"avx512_bf16", "amx_bf16"}, "auto", "fp32", "cpu", ("onnxruntime", "fp32")),
        ({"avx2"}, "auto", "bf16", "cpu", ("torch", "bf16")),
        ({"avx2"}, "torch", "auto", "cpu", ("torch", "fp32")),
        ({"amx_bf16"}, "torch", "auto", "cpu", ("torch", "bf16")),
        ({"amx_bf16"}, "onnxruntime", "auto", "cpu", ("onnxruntime", "fp32")),
        (set(), "auto", "auto", "cuda", ("torch", "bf16")),
        (set(), "torch", "fp16", "cuda:1", ("torch", "fp16")),
    ],
)
def test_auto_choice_follows_the_cpu(flags, backend, precision, device, expected):
    choice = choose_backend(backend, precision, device, flags)
    assert (choice.backend, choice.precision) == expected
    assert choice.reason


@pytest.mark.parametrize(
    ("backend", "precision", "device", "message"),
    [
        ("onnxruntime", "bf16", "cpu", "fp32 only"),
        ("onnxruntime", "auto", "cuda", "runs on the CPU"),
        ("tensorrt", "auto", "cpu", "--backend must be one of"),
    ],
)
def test_impossible_choices_are_user_errors(backend, precision, device, message):
    with pytest.raises(UserError, match=message):
        choose_backend(backend, precision, device, set())


def test_enhance_cli_runs_the_onnxruntime_backend(ray_local, checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    photos = {"coffee.png": "coffee", "rocket.png": "rocket"}
    for name, source in photos.items():
        (inputs / name).write_bytes(
            encode(darken(fit_within(wheel_photo(source), 300, 200)), "PNG")
        )
    output = tmp_path / "out"
    argv = ["enhance", "--checkpoint", str(checkpoint), "--input", str(inputs),
            "--output", str(output), "--backend", "onnxruntime", "--batch-size", "1"]  # fmt: skip
    assert main(argv) == 0
    assert "enhanced: 2" in capsys.readouterr().out
    direct = build_enhancer(checkpoint, InferenceSettings(backend="onnxruntime", batch_size=1))
    reference = build_enhancer(
        checkpoint, InferenceSettings(backend="torch", precision="fp32", batch_size=1)
    )
    for name in photos:
        source = np.asarray(Image.open(inputs / name).convert("RGB"))
        written = np.asarray(Image.open(io.BytesIO((output / name).read_bytes())).convert("RGB"))
        np.testing.assert_array_equal(written, direct([source])[0])
        assert psnr(written, reference([source])[0]) >= MIN_PSNR_DB


def test_enhance_cli_refuses_onnxruntime_in_bf16_before_any_work(checkpoint, tmp_path, capsys):
    argv = ["enhance", "--checkpoint", str(checkpoint), "--input", str(tmp_path),
            "--output", str(tmp_path / "out"), "--backend", "onnxruntime",
            "--precision", "bf16"]  # fmt: skip
    assert main(argv) != 0
    error = capsys.readouterr().err.strip()
    assert "fp32 only" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_inference_settings_default_like_the_enhancer_settings():
    """The Ray layer's settings carry EnhancerSettings' fields with the same defaults."""
    import dataclasses

    from enlightengan.inference import EnhancerSettings

    ours = {field.name: field.default for field in dataclasses.fields(InferenceSettings)}
    model = {field.name: field.default for field in dataclasses.fields(EnhancerSettings)}
    shared = set(ours) & set(model)
    assert shared >= {"device", "precision", "channels_last", "batch_size", "tile_size"}
    assert {name: ours[name] for name in shared} == {name: model[name] for name in shared}


@pytest.mark.parametrize(
    ("workers", "total", "node", "threads"),
    [(1, 2, 2, 2), (2, 2, 2, 1), (1, 64, 16, 16), (8, 64, 16, 8), (3, 2, 2, 1)],
)
def test_cpu_actor_threads_share_the_cluster_and_stay_within_a_node(workers, total, node, threads):
    from pipelines.enhance.job import inference_settings
    from pipelines.enhance.spec import EnhanceJob

    job = EnhanceJob(input="in", output="out", workers=workers)
    assert inference_settings(job, total, node).torch_threads == threads
    assert inference_settings(job, total, node).device == "cpu"
    explicit = EnhanceJob(input="in", output="out", workers=workers, threads_per_worker=3)
    assert inference_settings(explicit, total, node).torch_threads == 3
    on_gpus = EnhanceJob(input="in", output="out", workers=workers, gpus_per_worker=1)
    assert inference_settings(on_gpus, total, node).torch_threads is None

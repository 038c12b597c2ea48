"""``enlightengan enhance`` end to end: real Ray (local), real SeaweedFS, real photos, a real
(tiny) checkpoint. The pipeline's outputs are compared with the Enhancer run directly."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
from PIL import Image, ImageCms

from enlightengan.checkpoint import save_checkpoint
from enlightengan.config import tiny_config
from enlightengan.generator import Generator
from pipelines.cli import main
from pipelines.demo.sample_photos import build_photo_dataset
from pipelines.enhance.sink import read_manifest
from pipelines.inference.darkness import DEFAULT_DARK_THRESHOLD
from pipelines.inference.stages import InferenceSettings, build_enhancer
from pipelines.io.images import decode_image
from pipelines.io.storage import resolve
from tests.fixtures.bad_files import build_bad_files, write_corpus
from tests.fixtures.photos import darken, encode, fit_within, upload_folder, wheel_photo

UNSAFE_KEYS = ("%2e%2e/escape.png", "\u2024\u2024/escape.png")


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory) -> Path:
    """A training-run-shaped folder: ``<run>/<name>/checkpoint_*/`` (Ray Train layout)."""
    torch.manual_seed(7)
    config = tiny_config()
    run = tmp_path_factory.mktemp("run")
    for step in (3, 9):
        generator = Generator(config.generator)
        save_checkpoint(
            run / "exp" / f"checkpoint_00000{step}",
            config=config,
            networks={"generator": generator},
            trainer_state={"step": step},
        )
    return run


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Mixed sizes and formats, a portrait, an EXIF-rotated JPEG, an ICC-tagged PNG, the bad-file
    corpus, and keys that would escape the output prefix once decoded."""
    root = tmp_path_factory.mktemp("inputs")
    photos = {
        "low/coffee.jpg": ("coffee", (600, 400), "JPEG"),
        "low/portrait/grace hopper.png": ("grace_hopper", (300, 400), "PNG"),
        "low/travel/china.jpeg": ("china", (500, 333), "JPEG"),
        "low/rocket.png": ("rocket", (420, 280), "PNG"),
    }
    for key, (photo, box, fmt) in photos.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(darken(fit_within(wheel_photo(photo), *box)), fmt, quality=92))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    chelsea = darken(fit_within(wheel_photo("chelsea"), 320, 240))
    (root / "low/icc.png").write_bytes(encode(chelsea, "PNG", icc_profile=srgb))
    write_corpus(root / "bad", build_bad_files())
    for key in UNSAFE_KEYS:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(encode(chelsea, "PNG"))
    return root


def enhance(*argv: str) -> int:
    return main(["enhance", *argv])


def manifest_rows(output_uri: str) -> list[dict]:
    location = resolve(output_uri)
    return read_manifest(location.filesystem, f"{location.path}/_manifest").to_pylist()


def latest_status(rows: list[dict]) -> dict[str, dict]:
    """Per key, the most informative row (enhanced/failed beat skipped)."""
    by_key: dict[str, dict] = {}
    for row in rows:
        if row["key"] not in by_key or row["status"] != "skipped":
            by_key[row["key"]] = row
    return by_key


def expected_outcomes(inputs: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """(valid key -> (width, height) as displayed, bad key -> reason)."""
    valid, bad = {}, {}
    corpus = {f"bad/{entry.key}": entry for entry in build_bad_files()}
    for path in sorted(p for p in inputs.rglob("*") if p.is_file()):
        key = path.relative_to(inputs).as_posix()
        if key in UNSAFE_KEYS:
            bad[key] = "unsafe-key"
        elif key in corpus and corpus[key].expected_reason not in (None, "too-small"):
            bad[key] = corpus[key].expected_reason
        elif not key.endswith(".gif"):
            with Image.open(path) as image:
                decoded = decode_image(path.read_bytes())
                valid[key] = (decoded.array.shape[1], decoded.array.shape[0])
                assert image.size in (valid[key], valid[key][::-1])
    return valid, bad


def test_local_to_local_every_valid_image_once_same_size_and_equal_to_enhancer(
    ray_local, checkpoint_run, inputs, tmp_path, capsys
):
    output = tmp_path / "out"
    # fp32: `--precision auto` picks bf16 on CPUs with native bf16, one level off here and there
    code = enhance(
        "--checkpoint", str(checkpoint_run), "--input", str(inputs), "--output", str(output),
        "--batch-size", "1", "--precision", "fp32",
    )  # fmt: skip
    assert code == 0
    summary = capsys.readouterr().out
    valid, bad = expected_outcomes(inputs)
    assert f"enhanced: {len(valid)}" in summary and f"failed: {len(bad)}" in summary

    written = sorted(
        p.relative_to(output).as_posix()
        for p in output.rglob("*")
        if p.is_file() and not {"_manifest", "_report"} & set(p.parts)
    )
    assert written == sorted(valid)
    rows = latest_status(manifest_rows(str(output)))
    assert {k: r["reason"] for k, r in rows.items() if r["status"] == "failed"} == bad
    assert all(rows[key]["status"] == "enhanced" for key in valid)

    enhancer = build_enhancer(
        checkpoint_run / "exp" / "checkpoint_000009", InferenceSettings(batch_size=1)
    )
    for key, (width, height) in valid.items():
        data = (output / key).read_bytes()
        assert rows[key]["output_bytes"] == len(data)
        assert (rows[key]["width"], rows[key]["height"]) == (width, height)
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (width, height), key
            assert image.format == ("PNG" if key.endswith(".png") else "JPEG")
            assert image.getexif().get(0x0112, 1) == 1
            icc = image.info.get("icc_profile")
            written_pixels = np.asarray(image.convert("RGB"))
        expected = enhancer([decode_image((inputs / key).read_bytes()).array])[0]
        if key.endswith(".png"):
            np.testing.assert_array_equal(written_pixels, expected, err_msg=key)
        else:
            difference = np.abs(written_pixels.astype(np.int16) - expected.astype(np.int16))
            assert difference.mean() < 2.0, key
        if key == "low/icc.png":
            assert icc == Image.open(inputs / key).info["icc_profile"]
    rotated = next(entry for entry in build_bad_files() if entry.key == "odd/rotated.jpg")
    assert valid["bad/odd/rotated.jpg"] == rotated.expected_size
    assert not [p for p in tmp_path.rglob("escape.png")]


def test_resume_after_limit_and_partial_output_redoes_only_missing(
    ray_local, checkpoint_run, inputs, tmp_path, capsys
):
    source = tmp_path / "in"
    shutil.copytree(inputs / "low", source)
    output = tmp_path / "out"
    common = ("--checkpoint", str(checkpoint_run), "--input", str(source), "--output", str(output))
    assert enhance(*common, "--limit", "2") == 0
    first = manifest_rows(str(output))
    done_first = {row["key"] for row in first if row["status"] == "enhanced"}
    assert len(done_first) == 2
    assert "(--limit 2 reached: rerun to go on)" in capsys.readouterr().out

    # A crash mid-write: one finished object cut short (manifest says otherwise), and one object
    # written with no manifest row at all. Neither may count as done.
    cut = sorted(done_first)[0]
    (output / cut).write_bytes((output / cut).read_bytes()[:100])
    orphan = sorted({p.relative_to(source).as_posix() for p in source.rglob("*.*")} - done_first)[0]
    (output / orphan).parent.mkdir(parents=True, exist_ok=True)
    (output / orphan).write_bytes(b"\x89PNG half")
    mtime_kept = (output / sorted(done_first)[1]).stat().st_mtime_ns

    assert enhance(*common, "--dry-run") == 0
    assert "would enhance: 4" in capsys.readouterr().out
    assert enhance(*common, "--batch-size", "2") == 0
    second_summary = capsys.readouterr().out
    assert "enhanced: 4  skipped: 1  failed: 0" in second_summary
    # Start-up apart from the steady state: the first output, then the rate after batch one.
    paced = re.search(
        r"images/s over ([\d.]+) s \(first output ([\d.]+) s after the start, "
        r"then ([\d.]+) images/s\)",
        second_summary,
    )
    assert paced and 0 < float(paced[2]) and float(paced[3]) > 0, second_summary
    assert (output / sorted(done_first)[1]).stat().st_mtime_ns == mtime_kept
    rows = manifest_rows(str(output))
    second_run = [row for row in rows if row not in first]
    enhanced_again = sorted(row["key"] for row in second_run if row["status"] == "enhanced")
    assert cut in enhanced_again and orphan in enhanced_again and len(enhanced_again) == 4
    stamps = [row["written_at"] for row in second_run if row["status"] == "enhanced"]
    assert all(time.time() - 600 < stamp <= time.time() for stamp in stamps)
    assert [row["written_at"] for row in second_run if row["status"] == "skipped"] == [0.0]
    # Bytes written counts this run's objects, not the size of the one it skipped.
    written = sum(row["output_bytes"] for row in second_run if row["status"] == "enhanced")
    assert f", {written} bytes written" in second_summary
    for path in source.rglob("*.*"):
        key = path.relative_to(source).as_posix()
        size = decode_image(path.read_bytes()).array.shape[:2]
        assert decode_image((output / key).read_bytes()).array.shape[:2] == size

    assert enhance(*common) == 0
    all_skipped = capsys.readouterr().out
    assert (
        "enhanced: 0  skipped: 5  failed: 0" in all_skipped and ", 0 bytes written" in all_skipped
    )
    assert enhance(*common, "--overwrite", "--image-format", "png", "--limit", "1") == 0
    assert "enhanced: 1" in capsys.readouterr().out
    assert len([p for p in output.rglob("*.png") if "_manifest" not in p.parts]) >= 3


def test_s3_to_local_and_local_to_s3(ray_local, s3_env, checkpoint_run, inputs, tmp_path, capsys):
    bucket = s3_env.make_bucket("enhance")
    filesystem = s3_env.filesystem()
    upload_folder(inputs / "low", filesystem, f"{bucket}/in")
    upload_folder(checkpoint_run, filesystem, f"{bucket}/runs/r1")
    local_out = tmp_path / "from-s3"
    assert (
        enhance(
            "--checkpoint",
            f"s3://{bucket}/runs/r1",
            "--input",
            f"s3://{bucket}/in",
            "--output",
            str(local_out),
            "--image-format",
            "png",
        )  # fmt: skip
        == 0
    )
    out = capsys.readouterr()
    assert "enhanced: 5  skipped: 0  failed: 0" in out.out
    assert "checkpoint_000009 (step 9)" in out.err
    assert s3_env.secret_key not in out.out + out.err
    written = sorted(
        p.relative_to(local_out).as_posix()
        for p in local_out.rglob("*")
        if p.is_file() and not {"_manifest", "_report"} & set(p.parts)
    )
    assert written == [
        "coffee.png", "icc.png", "portrait/grace hopper.png", "rocket.png", "travel/china.png"
    ]  # fmt: skip

    assert (
        enhance(
            "--checkpoint",
            str(checkpoint_run / "exp" / "checkpoint_000003"),
            "--input",
            str(inputs / "low"),
            "--output",
            f"s3://{bucket}/out",
        )  # fmt: skip
        == 0
    )
    assert "enhanced: 5" in capsys.readouterr().out
    with filesystem.open_input_file(f"{bucket}/out/coffee.jpg") as stream:
        assert Image.open(io.BytesIO(stream.read())).size == (600, 400)
    rows = manifest_rows_s3(filesystem, f"{bucket}/out/_manifest")
    assert sorted(r["status"] for r in rows) == ["enhanced"] * 5
    assert all(s3_env.secret_key not in json.dumps(r) for r in rows)


def manifest_rows_s3(filesystem, path: str) -> list[dict]:
    return read_manifest(filesystem, path).to_pylist()


def _wrong_architecture_checkpoint(directory: Path) -> Path:
    """A checkpoint whose generator weights come from a different width than its config."""
    config = tiny_config()
    save_checkpoint(directory, config=config, networks={"generator": Generator(config.generator)})
    other = tiny_config(**{"generator.base_channels": 8})
    donor = save_checkpoint(
        directory.parent / "donor", config=other, networks={"generator": Generator(other.generator)}
    )
    shutil.copy(donor / "generator.pt", directory / "generator.pt")
    index = json.loads((directory / "checkpoint.json").read_text())
    donor_index = json.loads((donor / "checkpoint.json").read_text())
    index["files"]["generator.pt"] = donor_index["files"]["generator.pt"]
    (directory / "checkpoint.json").write_text(json.dumps(index))
    return directory


def test_output_equal_to_input_is_refused_before_any_work(checkpoint_run, inputs, tmp_path, capsys):
    source = tmp_path / "in"
    shutil.copytree(inputs / "low", source)
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    common = ("--checkpoint", str(checkpoint_run), "--input", str(source))
    assert enhance(*common, "--output", str(source)) == 2
    assert "replace the originals" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("kind", ["missing", "not-a-checkpoint", "wrong-architecture"])
def test_bad_checkpoint_is_one_clear_error_before_any_work(inputs, tmp_path, capsys, kind):
    if kind == "wrong-architecture":
        checkpoint = _wrong_architecture_checkpoint(tmp_path / "ckpt")
    else:
        checkpoint = tmp_path / "nowhere" if kind == "missing" else inputs / "low"
    output = tmp_path / "out"
    ray_before = ray.is_initialized()
    code = enhance("--checkpoint", str(checkpoint), "--input", str(inputs), "--output", str(output))
    assert code == 2
    error = capsys.readouterr().err
    assert error.count("error:") == 1 and "checkpoint" in error
    if kind == "wrong-architecture":
        assert "do not fit the architecture" in error
    assert not output.exists()
    # The check runs while Ray starts; a refused run leaves no Ray of its own behind.
    assert ray.is_initialized() == ray_before


def test_bad_s3_checkpoint_is_a_clear_error(s3_env, inputs, tmp_path, capsys):
    bucket = s3_env.make_bucket("empty")
    code = enhance(
        "--checkpoint", f"s3://{bucket}/runs", "--input", str(inputs), "--output", str(tmp_path)
    )
    assert code == 2
    assert "no complete EnlightenGAN checkpoint" in capsys.readouterr().err


def test_pace_counts_the_first_batch_as_start_up():
    from pipelines.enhance.sink import pace

    # Written at 100.0 and 100.1 (the first batch of 2), then one every 2 s; 0: not written.
    stamps = np.array([102.1, 100.0, 0.0, 100.1, 106.1, 104.1])
    assert pace(stamps, first_batch=2) == {
        "first_written_at": 100.0,
        "steady_images_per_s": pytest.approx(3 / 6.0),
    }
    assert pace(stamps, first_batch=1)["steady_images_per_s"] == pytest.approx(4 / 6.1)
    assert pace(stamps[1:4], first_batch=2)["steady_images_per_s"] is None
    assert pace(np.zeros(3), first_batch=4) == {
        "first_written_at": None,
        "steady_images_per_s": None,
    }


def test_manifest_parts_are_parquet_with_the_documented_columns(tmp_path):
    from pipelines.enhance.sink import MANIFEST_SCHEMA, manifest_row, write_manifest_part

    location = resolve(tmp_path)
    write_manifest_part(
        location.filesystem, f"{location.path}/_manifest", "run-x-1.parquet",
        [manifest_row("a.jpg", "a.jpg", "failed", "truncated", input_bytes=5)],
    )  # fmt: skip
    table = pq.read_table(tmp_path / "_manifest" / "run-x-1.parquet")
    assert table.schema.names == MANIFEST_SCHEMA.names
    assert {"key", "status", "reason", "input_bytes", "output_bytes", "width", "height"} <= set(
        table.schema.names
    )
    assert table.to_pylist()[0]["reason"] == "truncated"


def test_without_checkpoint_the_shipped_starter_model_enhances(ray_local, tmp_path, capsys):
    from enlightengan.starter import starter_checkpoint

    photos = tmp_path / "photos"
    photos.mkdir()
    dark = darken(fit_within(wheel_photo("coffee"), 240, 160))
    (photos / "coffee.png").write_bytes(encode(dark, "PNG"))
    output = tmp_path / "out"
    assert enhance("--input", str(photos), "--output", str(output)) == 0
    assert "enhance: checkpoint the shipped starter model" in capsys.readouterr().err
    with Image.open(output / "coffee.png") as image:
        written = np.asarray(image.convert("RGB"))
    starter = build_enhancer(starter_checkpoint(), InferenceSettings())
    expected = starter([dark])[0]
    assert written.mean() > 2 * dark.mean()
    # --precision auto may pick bf16 on this CPU; the reference here is fp32
    assert np.abs(written.astype(np.int16) - expected.astype(np.int16)).mean() < 3.0


def test_only_dark_skip_then_copy_then_every_image_with_resume_and_dry_run(
    ray_local, checkpoint_run, tmp_path, capsys
):
    """Six dark photos (the five darkened ones and the Hubble deep field) and three day ones."""
    build_photo_dataset(tmp_path / "in", longest_side=200)
    day = ["normal/animals/chelsea.png", "normal/flower.png", "normal/street/motorcycle.jpg"]
    output = tmp_path / "out"
    common = ("--checkpoint", str(checkpoint_run), "--input", str(tmp_path / "in"))
    common += ("--output", str(output), "--report-samples", "2")

    assert enhance(*common, "--only-dark", "skip", "--dry-run") == 0
    printed = capsys.readouterr().out
    assert f"would enhance: 6 (dark: darkness >= {DEFAULT_DARK_THRESHOLD})" in printed
    assert "would leave out (not dark): 3" in printed and not output.exists()

    assert enhance(*common, "--only-dark", "skip") == 0
    assert "enhanced: 6  skipped: 0  failed: 0  not-dark: 3" in capsys.readouterr().out
    assert not any((output / key).exists() for key in day)
    rows = manifest_rows(str(output))
    assert all(0 <= row["darkness"] <= 1 and row["luma_p50"] <= row["luma_p95"] for row in rows)
    assert {row["key"] for row in rows if row["status"] == "not-dark"} == set(day)

    assert enhance(*common, "--only-dark", "skip") == 0
    assert "enhanced: 0  skipped: 6  failed: 0  not-dark: 3" in capsys.readouterr().out
    assert enhance(*common, "--only-dark", "copy", "--dry-run") == 0
    printed = capsys.readouterr().out
    assert (
        "already done (skipped): 6" in printed and "would copy unchanged (not dark): 3" in printed
    )

    assert enhance(*common, "--only-dark", "copy") == 0
    assert "enhanced: 0  skipped: 6  failed: 0  copied: 3" in capsys.readouterr().out
    for key in day:
        assert (output / key).read_bytes() == (tmp_path / "in" / key).read_bytes()
    assert enhance(*common, "--only-dark", "copy") == 0
    assert "enhanced: 0  skipped: 9  failed: 0" in capsys.readouterr().out

    # Without the rule the copies are not the enhanced images a run writes: redone.
    assert enhance(*common) == 0
    assert "enhanced: 3  skipped: 6  failed: 0" in capsys.readouterr().out
    for key in day:
        assert (output / key).read_bytes() != (tmp_path / "in" / key).read_bytes()
    assert len(list((output / "_report").iterdir())) == 5


def test_only_dark_copy_with_another_format_is_refused(checkpoint_run, inputs, tmp_path, capsys):
    code = enhance(
        "--checkpoint", str(checkpoint_run), "--input", str(inputs), "--output", str(tmp_path),
        "--only-dark", "copy", "--image-format", "png",
    )  # fmt: skip
    assert code == 2 and "--image-format same" in capsys.readouterr().err


def test_enhance_job_output_has_no_actor_arguments_line_from_ray(checkpoint_run, tmp_path):
    """A fresh ``enlightengan enhance`` process (a job's driver) says nothing of Ray's
    "constructor arguments in the object store" line, which Ray Data's actor pool would make it
    print at error level; Ray did log it once, for the driver's own notice actor."""
    source = tmp_path / "photos"
    source.mkdir()
    for name in ("coffee", "rocket"):
        pixels = darken(fit_within(wheel_photo(name), 160, 120))
        (source / f"{name}.png").write_bytes(encode(pixels, "PNG"))
    ray_dir = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))  # Ray's socket paths are short
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    environment.update(ENLIGHTENGAN_RAY_TMPDIR=str(ray_dir), RAY_AUTH_MODE="disabled")
    completed = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "enhance", "--checkpoint", str(checkpoint_run),
         "--input", str(source), "--output", str(tmp_path / "out"), "--num-cpus", "2"],
        cwd=Path(__file__).resolve().parents[3], env=environment, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "enhanced: 2  skipped: 0  failed: 0" in output
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {"coffee.png", "rocket.png"}
    assert "MapBatches(EnhanceActor)" in output  # the job did run an actor pool
    assert "constructor arguments in the object store" not in output
    # Output to a pipe, not a terminal: no colour codes around Ray's worker-line prefixes.
    assert "(MapWorker(MapBatches(EnhanceActor)) pid=" in output and "\x1b[" not in output
    logged = [
        line
        for log in ray_dir.glob("session_2*/logs/python-core-driver-*.log")  # not session_latest
        for line in log.read_text().splitlines()
        if "constructor arguments in the object store" in line
    ]
    shutil.rmtree(ray_dir, ignore_errors=True)
    assert len(logged) == 1 and "'RayDataActorArgumentsNotice'" in logged[0], "\n".join(logged)

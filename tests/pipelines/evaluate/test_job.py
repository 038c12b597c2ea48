"""``enlightengan evaluate`` end to end on real Ray (local), real photos and a tiny checkpoint:
the scores it writes equal NIQE computed directly on the same pixels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from enlightengan.baselines import gamma_correction, histogram_equalization
from enlightengan.checkpoint import save_checkpoint
from enlightengan.config import tiny_config
from enlightengan.generator import Generator
from enlightengan.inference import Enhancer, EnhancerSettings
from enlightengan.metrics import niqe
from pipelines.cli import main
from pipelines.inference.stages import InferenceSettings, build_enhancer
from pipelines.io.images import decode_image
from tests.fixtures.photos import darken, encode, fit_within, wheel_photo


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    config = tiny_config()
    directory = tmp_path_factory.mktemp("ckpt") / "checkpoint_000001"
    save_checkpoint(directory, config=config, networks={"generator": Generator(config.generator)})
    return directory


@pytest.fixture(scope="module")
def lime_folder(tmp_path_factory) -> Path:
    """A folder named like one of the paper's test sets, with real photos and two oddities."""
    root = tmp_path_factory.mktemp("sets") / "LIME"
    root.mkdir()
    for name, box in (("coffee", (240, 160)), ("chelsea", (200, 150)), ("rocket", (180, 240))):
        (root / f"{name}.png").write_bytes(
            encode(darken(fit_within(wheel_photo(name), *box)), "PNG")
        )
    (root / "tiny.png").write_bytes(
        encode(darken(fit_within(wheel_photo("astronaut"), 64, 64)), "PNG")
    )
    (root / "broken.jpg").write_bytes(b"<html>not a photo</html>")
    return root


def test_evaluate_writes_scores_equal_to_direct_niqe(
    ray_local, checkpoint, lime_folder, tmp_path, capsys
):
    output = tmp_path / "evaluation"
    code = main(
        [
            "evaluate",
            "--precision",
            "fp32",
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(lime_folder),
            "--output",
            str(output),
            "--samples",
            "2",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "this set is **LIME**" in printed

    table = {row["key"]: row for row in pq.read_table(output / "scores.parquet").to_pylist()}
    assert sorted(table) == ["broken.jpg", "chelsea.png", "coffee.png", "rocket.png", "tiny.png"]
    assert table["broken.jpg"]["status"] == "failed" and table["broken.jpg"]["reason"]
    assert math.isnan(table["tiny.png"]["niqe_input"])  # smaller than one 96x96 NIQE block

    enhancer = build_enhancer(checkpoint, InferenceSettings(backend="torch", batch_size=1))
    for key in ("coffee.png", "rocket.png"):
        pixels = decode_image((lime_folder / key).read_bytes()).array
        row = table[key]
        assert (row["height"], row["width"]) == pixels.shape[:2]
        assert row["niqe_input"] == pytest.approx(niqe(pixels), abs=1e-6)
        assert row["niqe_gamma"] == pytest.approx(niqe(gamma_correction(pixels, 1 / 2.2)), abs=1e-6)
        assert row["niqe_histeq"] == pytest.approx(niqe(histogram_equalization(pixels)), abs=1e-6)
        assert row["niqe_enhanced"] == pytest.approx(niqe(enhancer([pixels])[0]), abs=1e-4)
        assert row["luma_gamma"] > 2 * row["luma_input"]

    csv_lines = (output / "scores.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(table) and "niqe_enhanced" in csv_lines[0]
    markdown = (output / "summary.md").read_text()
    scored = [
        r for r in table.values() if r["status"] != "failed" and not math.isnan(r["niqe_input"])
    ]
    mean_input = np.mean([r["niqe_input"] for r in scored])
    assert f"| input | {mean_input:.3f} |" in markdown
    assert "| LIME | 3.719 | 4.155" in markdown
    with Image.open(output / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 800 and sheet.height > 300


def test_evaluate_bad_settings_are_one_line_errors(checkpoint, lime_folder, tmp_path, capsys):
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "nope"),
                "--input",
                str(lime_folder),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--input",
                str(lime_folder),
                "--output",
                str(tmp_path / "o"),
                "--paper-set",
                "XYZ",
            ]
        )
        == 2
    )
    assert "--paper-set" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--input",
                str(empty),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no images" in capsys.readouterr().err


def test_compare_scores_the_shipped_starter_model_in_its_own_column(
    ray_local, checkpoint, lime_folder, tmp_path, capsys
):
    from enlightengan.starter import load_starter_generator

    output = tmp_path / "evaluation"
    argv = [
        "evaluate",
        "--precision",
        "fp32",
        "--checkpoint",
        str(checkpoint),
        "--compare",
        "starter",
    ]
    argv += ["--input", str(lime_folder), "--output", str(output), "--samples", "2"]
    assert main(argv) == 0
    assert "compared with the shipped starter model" in capsys.readouterr().err
    table = {row["key"]: row for row in pq.read_table(output / "scores.parquet").to_pylist()}
    starter = Enhancer(load_starter_generator(), EnhancerSettings(batch_size=1))
    tiny = build_enhancer(checkpoint, InferenceSettings(backend="torch", batch_size=1))
    for key in ("coffee.png", "chelsea.png"):
        pixels = decode_image((lime_folder / key).read_bytes()).array
        row = table[key]
        # each model saw the input pixels, not the other model's output
        assert row["niqe_compared"] == pytest.approx(niqe(starter([pixels])[0]), abs=1e-4)
        assert row["niqe_enhanced"] == pytest.approx(niqe(tiny([pixels])[0]), abs=1e-4)
    summary = (output / "summary.md").read_text()
    assert "| compared |" in summary and "shipped starter model" in summary
    # baselines first, then the model compared with, then the one evaluated
    columns = json.loads((output / "summary.json").read_text())["contact_sheet_columns"]
    assert list(columns.values()) == [
        "input",
        "gamma",
        "histogram equalisation",
        "starter",
        "EnlightenGAN",
    ]
    with Image.open(output / "contact_sheet.png") as sheet:
        assert sheet.width > 5 * 200  # five columns


def test_no_checkpoint_means_the_shipped_starter_model(ray_local, lime_folder, tmp_path, capsys):
    output = tmp_path / "evaluation"
    argv = ["evaluate", "--input", str(lime_folder), "--output", str(output), "--limit", "2"]
    assert main(argv) == 0
    assert "checkpoint the shipped starter model" in capsys.readouterr().err

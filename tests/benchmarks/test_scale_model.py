"""benchmarks/scale_model.py: the arithmetic of the scale plan, and that it takes a GPU check's
results and overrides."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import scale_model  # noqa: E402


def test_processed_pixels_follow_the_enhancer_halving_padding_and_tiling():
    inputs = scale_model.Inputs()
    assert scale_model.processed_pixels(600, 400, inputs) == 608 * 400
    # 4000x3000 is halved (wider than 2200) to 2000x1500, padded to 2000x1504, then cut into
    # 1024-pixel tiles overlapping by >= 64: 2 rows x 3 columns.
    assert scale_model.processed_pixels(4000, 3000, inputs) == 6 * 1024 * 1024
    whole = dataclasses.replace(inputs, tile_size=2048)
    assert scale_model.processed_pixels(4000, 3000, whole) == 2000 * 1504


def test_requests_cost_and_manifest_of_100_million_photos():
    inputs = scale_model.Inputs()
    size = inputs.sizes[0]
    row = scale_model.scenario(size, 8, inputs)
    parts = 390_625  # 100 M / 256 rows per part
    assert row["manifest_parts"] == parts
    assert row["requests_millions"] == pytest.approx(
        {"LIST": 0.1, "GET+HEAD": 200.0, "PUT": 100.0 + parts / 1e6}
    )
    expected = (100_000 + 100e6 + parts) * 0.005 / 1000 + 200e6 * 0.0004 / 1000
    assert row["cost_usd"] == pytest.approx(expected)
    assert row["manifest_gb"] == pytest.approx(100e6 * 55.6 / 1e9)
    assert row["wall_hours"] == pytest.approx(100e6 / row["images_per_s"] / 3600)


def test_the_bound_moves_from_the_gpu_to_the_single_listing_task():
    inputs = dataclasses.replace(scale_model.Inputs(), gpu_images_per_s=1000.0)
    size = inputs.sizes[0]
    few = scale_model.scenario(size, 8, inputs)
    many = scale_model.scenario(size, 128, inputs)
    assert few["bound"] == "GPU" and few["images_per_s"] == pytest.approx(8000)
    assert many["bound"] == "listing (one task)"
    assert many["images_per_s"] == pytest.approx(1000 / inputs.s3_list_page_seconds)
    assert many["gpu_busy"] < 0.1
    slow_cpu = dataclasses.replace(inputs, cores_per_node=3)
    assert scale_model.scenario(size, 8, slow_cpu)["bound"] == "CPU decode+encode"


def test_gpu_check_results_and_overrides_feed_the_model(tmp_path):
    check = {
        "summary": {"best_enhance_images_per_s": 1234.0},
        "codec": {
            "result": {
                "rows": [
                    {
                        "width": 600,
                        "height": 400,
                        "decode_cpu_s": {"median": 0.003},
                        "encode_cpu_s": {"median": 0.004},
                    }
                ]
            }
        },
    }
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps(check))
    inputs = scale_model.from_gpu_check(path, scale_model.Inputs())
    assert inputs.gpu_images_per_s == 1234.0
    assert (inputs.sizes[0].decode_cpu_s, inputs.sizes[0].encode_cpu_s) == (0.003, 0.004)
    assert inputs.sizes[1] == scale_model.Inputs().sizes[1]
    changed = scale_model.with_overrides(inputs, {"cores_per_node": "32", "photos": "1e6"})
    assert (changed.cores_per_node, changed.photos) == (32, 1e6)
    with pytest.raises(SystemExit, match="unknown inputs"):
        scale_model.with_overrides(inputs, {"gpu_speed": 1})


def test_main_prints_one_table_per_size(capsys):
    assert scale_model.main(["--gpu-rate", "500", "--nodes", "8,32"]) == 0
    printed = capsys.readouterr().out
    assert "one GPU: 500 images/s" in printed
    assert printed.count("| 8 |") == 2 and printed.count("| 32 |") == 2

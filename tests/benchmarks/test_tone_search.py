"""benchmarks/tone_search.py: settings are applied to the network's cached outputs and scored
against goals with signed, relative margins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import tone_search  # noqa: E402

from enlightengan.tone import ToneTransfer  # noqa: E402


def test_margins_are_relative_to_the_bound_and_negative_when_missed():
    means = {"psnr": 15.0, "niqe": 4.0, "luma": 120.0}
    goals = [["psnr", ">", 16.0], ["niqe", "<", 5.0], ["luma", "in", [100.0, 115.0]]]
    found = tone_search.margins(means, goals)
    assert found["psnr"] == (15.0 - 16.0) / 16.0
    assert found["niqe"] == (5.0 - 4.0) / 5.0
    assert found["luma"] == (115.0 - 120.0) / 115.0
    assert tone_search.margins({"luma": 90.0}, [["luma", "in", [100.0, 115.0]]]) == {
        "luma": (90.0 - 100.0) / 100.0
    }


def test_transferred_matches_the_tone_transfer_on_a_batch():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, size=(40, 48, 3), dtype=np.uint8)
    output = np.clip(image.astype(int) * 3, 0, 255).astype(np.uint8)
    tone = ToneTransfer(strength=0.7)
    expected = tone(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(),
        torch.from_numpy(output).permute(2, 0, 1)[None].float(),
    )[0].permute(1, 2, 0)
    result = tone_search.transferred(tone, image, output)
    assert result.dtype == np.uint8
    assert np.abs(result.astype(float) - expected.numpy()).max() <= 0.5 + 1e-4
    assert np.array_equal(tone_search.transferred(ToneTransfer(strength=0.0), image, output), image)


def test_a_search_scores_each_setting_on_each_set_and_reuses_the_network_outputs(tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"none": {"strength": 0.0}, "full": {"strength": 1.0}}))
    goals = tmp_path / "goals.json"
    goals.write_text(json.dumps({"demo": [["luma", ">", 30.0]]}))
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "tone_search.py"),
        "--sets",
        "demo",
        "--settings",
        str(settings),
        "--goals",
        str(goals),
        "--output",
        str(tmp_path / "search"),
    ]
    first = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = [line.split(" | ") for line in first.splitlines()]
    by_setting = {(row[0], row[1]): row[-1] for row in rows if len(row) == 4}
    # strength 0 returns the dark input, far below the goal; strength 1 brightens past it.
    assert by_setting[("none", "demo")].startswith("luma -")
    assert by_setting[("full", "demo")] == "all goals met"
    worst = {row[0]: row[1] for row in rows if len(row) == 2}
    assert worst["none"].startswith("worst margin -") and worst["none"].endswith("(demo luma)")
    assert worst["full"].startswith("worst margin +")
    cached = list((tmp_path / "search" / "outputs").glob("demo-*.npz"))
    assert tone_search.generator_identity("starter") in cached[0].name
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    second = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert second == first
    assert cached[0].stat().st_mtime_ns == stamp


def test_the_shipped_settings_and_goals_files_are_valid_and_hold_the_starters_settings():
    from enlightengan.starter import load_starter_generator

    settings = json.loads((ROOT / "benchmarks" / "tone_search_ablation.json").read_text())
    for keywords in settings.values():
        ToneTransfer(**keywords).validate()
    config = load_starter_generator().config
    assert {f"tone_transfer_{name}": value for name, value in settings["chosen"].items()} == {
        f"tone_transfer_{name}": getattr(config, f"tone_transfer_{name}")
        for name in settings["chosen"]
    }
    goals = json.loads((ROOT / "benchmarks" / "tone_search_goals.json").read_text())
    for set_goals in goals.values():
        means = dict.fromkeys(("niqe", "psnr", "ssim", "luma", "saturation"), 100.0)
        assert set(tone_search.margins(means, set_goals)) == {goal[0] for goal in set_goals}

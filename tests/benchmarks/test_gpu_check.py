"""benchmarks/gpu_check.py proved on the CPU: ``--cpu --tiny`` runs every section for real (tiny
model, small real photo, a few iterations) and writes one JSON with sane numbers; a section
that fails is recorded and the others still run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ("codec", "enhance", "cuda_graphs", "enhancer", "pipeline", "training", "compile")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(out.read_text()), completed.stdout


def test_every_section_is_recorded_and_runs(tiny_run):
    results, stdout = tiny_run
    assert set(SECTIONS) <= set(results)
    statuses = {name: results[name]["status"] for name in SECTIONS}
    assert statuses == {name: "ok" for name in SECTIONS} | {"cuda_graphs": "skipped"}
    assert results["cuda_graphs"]["result"]["skipped"] == "CUDA graphs need a CUDA device"
    for name in SECTIONS:
        assert f"[{name}]" in stdout
        assert 0 <= results[name]["seconds"] <= results[name]["budget_s"] + 120
    assert results["mode"] == {"cpu": True, "tiny": True}
    assert results["environment"]["device"] == "cpu"
    assert results["environment"]["vgg_weights"] == "pretrained" or results["environment"][
        "vgg_weights"
    ].startswith("random weights")


def test_enhance_rates_cover_both_half_precisions_and_every_batch(tiny_run):
    enhance = tiny_run[0]["enhance"]["result"]
    timed = {(row["precision"], row["memory_format"], row["batch"]): row for row in enhance["rows"]}
    for precision in ("bf16", "fp16"):
        for batch in (1, 2):
            assert (precision, "channels_last", batch) in timed
    assert ("fp32", "channels_last", 2) in timed and ("bf16", "nchw", 2) in timed
    for row in enhance["rows"]:
        assert row["images_per_s"] > 0
        assert row["forward_ms_per_batch"] > 0 and row["h2d_ms_per_batch"] > 0
        assert row["d2h_ms_per_batch"] > 0
        assert row["images_per_s"] == pytest.approx(
            row["batch"] / row["forward_ms_per_batch"] * 1e3
        )
    assert enhance["best"]["images_per_s"] == max(row["images_per_s"] for row in enhance["rows"])
    assert (enhance["width"], enhance["height"]) == (96, 64)
    assert tiny_run[0]["enhancer"]["result"]["images_per_s"] > 0


def test_pipeline_split_and_codec_are_positive_and_consistent(tiny_run):
    results = tiny_run[0]
    pipeline = results["pipeline"]["result"]
    parts = pipeline["per_image_ms"]
    assert set(parts) == {"decode_cpu", "h2d", "forward", "d2h", "encode_cpu"}
    assert all(value > 0 for value in parts.values())
    assert sum(pipeline["share_of_serial_time"].values()) == pytest.approx(1.0)
    assert pipeline["cpu_cores_to_feed_one_device"] == pytest.approx(
        (parts["decode_cpu"] + parts["encode_cpu"])
        / (parts["h2d"] + parts["forward"] + parts["d2h"])
    )
    codec = results["codec"]["result"]["rows"]
    assert [(row["width"], row["height"]) for row in codec] == [(96, 64), (400, 300)]
    for row in codec:
        assert 0 < row["decode_cpu_s"]["min"] <= row["decode_cpu_s"]["median"]
        assert row["decode_cpu_s"]["median"] <= row["decode_cpu_s"]["max"] < 5
        assert row["input_jpeg_bytes"] > 0 and row["output_jpeg_bytes"] > 0
    # A 400x300 photo has about 20x the pixels of a 96x64 one: decoding it costs more.
    assert codec[1]["decode_cpu_s"]["median"] > codec[0]["decode_cpu_s"]["median"]


def test_training_and_compile_rates_and_summary(tiny_run):
    results = tiny_run[0]
    training = results["training"]["result"]
    assert (training["batch"], training["crop"]) == (2, 64)
    rows = {row["precision"]: row for row in training["rows"]}
    assert set(rows) == {"fp32", "bf16"}
    for row in rows.values():
        assert row["samples_per_s"] > 0 and row["steps_timed"] >= 2
        assert row["paper_recipe_hours_on_this_device"] > 0
    assert training["paper_samples_per_s"] == pytest.approx(200 * 1016 / 10800)
    compiled = results["compile"]["result"]["rows"][0]
    assert compiled["compile_s"] > 0 and compiled["images_per_s"] > 0 and "error" not in compiled
    summary = results["summary"]
    assert (
        summary["best_enhance_images_per_s"] >= results["enhance"]["result"]["best"]["images_per_s"]
    )
    assert summary["enhance_vs_goal_1000_per_h100"] == pytest.approx(
        summary["best_enhance_images_per_s"] / 1000
    )
    assert set(summary["training_samples_per_s"]) == {"fp32", "bf16"}


def test_a_failing_section_is_recorded_and_the_json_is_written(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    out = tmp_path / "partial.json"
    results: dict = {}
    gpu_check.run_section(results, "broken", 5.0, lambda deadline: {"x": 1 / 0}, out)
    gpu_check.run_section(results, "fine", 5.0, lambda deadline: {"rate": 1.0}, out)
    written = json.loads(out.read_text())
    assert written["broken"]["status"] == "error"
    assert written["broken"]["error"] == "ZeroDivisionError: division by zero"
    assert written["fine"] == {
        "budget_s": 5.0,
        "status": "ok",
        "result": {"rate": 1.0},
        "seconds": written["fine"]["seconds"],
    }
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.default_out() == tmp_path / "gpu_check.json"


def running(status: Path) -> bool:
    """Whether the process of ``/proc/<pid>/status`` exists and is not a zombie."""
    try:
        return "\tZ" not in next(
            line for line in status.read_text().splitlines() if line.startswith("State:")
        )
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_child_past_its_time_is_killed_with_its_own_children(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import pathlib, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    outcome = gpu_check.run_child([sys.executable, "-c", script], timeout=5.0)
    assert outcome == "killed after 5 s (section budget)"
    grandchild = Path(f"/proc/{int(pid_file.read_text())}/status")
    for _ in range(50):
        if not running(grandchild):
            break
        time.sleep(0.1)
    assert not running(grandchild)
    assert gpu_check.run_child([sys.executable, "-c", "raise SystemExit('boom')"], 60) == "boom\n"
    assert gpu_check.run_child([sys.executable, "-c", "pass"], 60) is None

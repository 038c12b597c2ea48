"""``enlightengan demo``: the README's first command, end to end on wheel photos."""

from __future__ import annotations

import json
import math
import os

import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.ops.local_services import process_mentions


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def test_demo_smallest_settings_runs_every_job_and_a_rerun_reuses(ray_local, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    for step in ("[demo 1/5]", "[demo 2/5]", "[demo 3/5]", "[demo 4/5]", "[demo 5/5]"):
        assert step in printed
    (run,) = out.glob("run-2-steps-*")
    for path in (out / "evaluation/contact_sheet.png", out / "evaluation/summary.md"):
        assert str(path) in printed and path.is_file()
    assert str(run / "loss_curve.png") in printed and (run / "loss_curve.png").is_file()
    low = _files(out / "photos" / "low")
    enhanced = [p for p in _files(out / "enhanced") if p.parts[0] not in ("_manifest", "_report")]
    assert [p.with_suffix("") for p in enhanced] == [p.with_suffix("") for p in low]
    assert len(list((out / "enhanced" / "_report").glob("*/index.html"))) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(low)
    variants = ("input", "enhanced", "gamma", "histeq", "compared")
    assert all(math.isfinite(summary["niqe"][v]) for v in variants)
    assert "shipped starter model" in printed
    with Image.open(out / "evaluation" / "contact_sheet.png") as sheet:
        assert sheet.width > 5 * 200  # input, quick model, gamma, histeq, starter model

    assert main(["demo", "--output", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "reusing photos" in printed and "reusing shards" in printed
    assert "enhanced: 0  skipped: 5" in printed


@pytest.mark.heavy
def test_demo_s3_runs_every_job_through_a_local_bucket_and_stops_the_server(
    ray_local, tmp_path, capsys
):
    out = tmp_path / "demo-s3"

    def aws_variables():
        return {name: value for name, value in os.environ.items() if name.startswith("AWS_")}

    before = aws_variables()
    assert main(["demo", "--output", str(out), "--steps", "2", "--s3"]) == 0
    assert aws_variables() == before  # the store's credentials do not outlive the demo
    printed = capsys.readouterr().out
    assert "s3://enlightengan-demo/shards" in printed and "[demo 5/5]" in printed
    data = out / "s3" / "data"
    assert data.is_dir() and any(data.rglob("*"))
    assert not any(process_mentions(pid, str(out / "s3")) for pid in _pids())
    low = _files(out / "photos" / "low")
    enhanced = [p for p in _files(out / "enhanced") if p.parts[0] not in ("_manifest", "_report")]
    assert [p.with_suffix("") for p in enhanced] == [p.with_suffix("") for p in low]
    assert len(list((out / "enhanced" / "_report").glob("*/index.html"))) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(low)
    assert (out / "evaluation" / "contact_sheet.png").is_file()
    identity = json.loads((out / "s3" / "s3.json").read_text())["identities"][0]
    assert identity["credentials"][0]["secretKey"] not in printed


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


@pytest.mark.heavy
def test_demo_default_settings_visibly_brighten_the_photos(ray_local, tmp_path):
    """The README's first command as it stands (400 steps, about 2 minutes on 2 cores)."""
    # The faithful losses alone barely move the tiny model in 400 steps (14.5 -> 20.7 measured
    # in a plain loop); the demo's exposure term is what this checks, with margin: 109.6 here.
    out = tmp_path / "demo-default"
    assert main(["demo", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_mean_luma"] < 20
    assert summary["enhanced_mean_luma"] > 3 * summary["input_mean_luma"]
    assert math.isfinite(summary["niqe"]["enhanced"])
    # the shipped starter model, in the contact sheet's last column
    assert summary["starter_mean_luma"] > 3 * summary["input_mean_luma"]
    assert summary["niqe"]["compared"] < summary["niqe"]["input"]

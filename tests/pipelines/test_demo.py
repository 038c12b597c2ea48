"""``enlightengan demo``: the README's first command, end to end on wheel photos."""

from __future__ import annotations

import json
import math
import os

import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.local_services import process_mentions


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def test_demo_smallest_settings_runs_every_job_and_a_rerun_reuses(ray_local, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    for step in ("[demo 1/5]", "[demo 2/5]", "[demo 3/5]", "[demo 4/5]", "[demo 5/5]"):
        assert step in printed
    for path in ("evaluation/contact_sheet.png", "evaluation/summary.md", "run/loss_curve.png"):
        assert str(out / path) in printed and (out / path).is_file()
    low = _files(out / "photos" / "low")
    enhanced = [p for p in _files(out / "enhanced") if p.parts[0] != "_manifest"]
    assert [p.with_suffix("") for p in enhanced] == [p.with_suffix("") for p in low]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(low)
    assert all(math.isfinite(summary["niqe"][v]) for v in ("input", "enhanced", "gamma"))
    with Image.open(out / "evaluation" / "contact_sheet.png") as sheet:
        assert sheet.width > 800

    assert main(["demo", "--out", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "reusing photos" in printed and "reusing shards" in printed
    assert "enhanced: 0  skipped: 5" in printed


@pytest.mark.slow
def test_demo_s3_runs_every_job_through_a_local_bucket_and_stops_the_server(
    ray_local, tmp_path, capsys
):
    out = tmp_path / "demo-s3"
    def aws_variables():
        return {name: value for name, value in os.environ.items() if name.startswith("AWS_")}

    before = aws_variables()
    assert main(["demo", "--out", str(out), "--steps", "2", "--s3"]) == 0
    assert aws_variables() == before  # the store's credentials do not outlive the demo
    printed = capsys.readouterr().out
    assert "s3://enlightengan-demo/shards" in printed and "[demo 5/5]" in printed
    data = out / "s3" / "data"
    assert data.is_dir() and any(data.rglob("*"))
    assert not any(process_mentions(pid, str(out / "s3")) for pid in _pids())
    low = _files(out / "photos" / "low")
    enhanced = [p for p in _files(out / "enhanced") if p.parts[0] != "_manifest"]
    assert [p.with_suffix("") for p in enhanced] == [p.with_suffix("") for p in low]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(low)
    assert (out / "evaluation" / "contact_sheet.png").is_file()
    identity = json.loads((out / "s3" / "s3.json").read_text())["identities"][0]
    assert identity["credentials"][0]["secretKey"] not in printed


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]

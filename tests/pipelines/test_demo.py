"""``enlightengan demo``: the README's first command, end to end on wheel photos."""

from __future__ import annotations

import json
import math

from PIL import Image

from pipelines.cli import main


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

"""``enlightengan demo``: the README's first command, end to end on wheel photos."""

from __future__ import annotations

import json
import math
import os

import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.demo.spec import FINETUNE_STEPS
from pipelines.ops.local_services import process_mentions

FINETUNE_COLUMNS = [
    "input",
    "gamma",
    "histogram equalisation",
    "starter",
    "starter fine-tuned on these photos",
]


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def _enhanced(out, run_name):
    folder = out / "enhanced" / run_name
    return [p for p in _files(folder) if p.parts[0] not in ("_manifest", "_report")]


def test_demo_fine_tunes_the_starter_and_a_rerun_reuses_everything(ray_local, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    for step in ("[demo 1/5]", "[demo 2/5]", "[demo 3/5]", "[demo 4/5]", "[demo 5/5]"):
        assert step in printed
    assert "fine-tune the shipped starter model on these photos, 2 steps" in printed
    assert "train: initialised from starter (sha256 " in printed
    (run,) = out.glob("finetune-2-steps-*")
    started = json.loads((run / "config.json").read_text())["job"]["init_from"]
    assert started["source"] == "starter" and started["kind"] == "starter"
    for path in (out / "evaluation/contact_sheet.png", out / "evaluation/summary.md"):
        assert str(path) in printed and path.is_file()
    assert str(run / "loss_curve.png") in printed and (run / "loss_curve.png").is_file()
    low = _files(out / "photos" / "low")
    enhanced = _enhanced(out, run.name)
    assert [p.with_suffix("") for p in enhanced] == [p.with_suffix("") for p in low]
    assert len(list((out / "enhanced" / run.name / "_report").glob("*/index.html"))) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(low) and summary["mode"] == "fine-tuned from the starter"
    # The columns, left to right, and their titles; no column of this run is "EnlightenGAN".
    assert summary["contact_sheet_columns"] == FINETUNE_COLUMNS
    assert f"({' | '.join(FINETUNE_COLUMNS)})" in printed
    variants = ("input", "enhanced", "gamma", "histeq", "compared")
    assert all(math.isfinite(summary["niqe"][v]) for v in variants)
    with Image.open(out / "evaluation" / "contact_sheet.png") as sheet:
        assert sheet.width > 5 * 200  # five columns

    assert main(["demo", "--output", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "reusing photos" in printed and "reusing shards" in printed
    assert "train: resuming a run initialised from starter" in printed
    assert "enhanced: 0  skipped: 5" in printed


@pytest.mark.heavy
def test_demo_from_scratch_s3_runs_every_job_through_a_local_bucket_and_stops_the_server(
    ray_local, tmp_path, capsys
):
    """The from-scratch mode (the pipeline with a tiny model from random weights), through S3."""
    out = tmp_path / "demo-s3"

    def aws_variables():
        return {name: value for name, value in os.environ.items() if name.startswith("AWS_")}

    before = aws_variables()
    argv = ["demo", "--output", str(out), "--steps", "2", "--s3", "--from-scratch"]
    assert main(argv) == 0
    assert aws_variables() == before  # the store's credentials do not outlive the demo
    printed = capsys.readouterr().out
    assert "s3://enlightengan-demo/shards" in printed and "[demo 5/5]" in printed
    assert "2 steps of a tiny model from random weights" in printed
    assert "initialised from" not in printed
    data = out / "s3" / "data"
    assert data.is_dir() and any(data.rglob("*"))
    assert not any(process_mentions(pid, str(out / "s3")) for pid in _pids())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"].startswith("s3://enlightengan-demo/scratch-2-steps-")
    low = _files(out / "photos" / "low")
    run_name = summary["run"].rsplit("/", 1)[1]
    enhanced = _enhanced(out, run_name)
    assert [p.with_suffix("") for p in enhanced] == [p.with_suffix("") for p in low]
    assert len(list((out / "enhanced" / run_name / "_report").glob("*/index.html"))) == 1
    assert summary["images"] == len(low) and summary["mode"] == "from scratch"
    assert summary["contact_sheet_columns"] == [*FINETUNE_COLUMNS[:4], "2-step model from scratch"]
    assert (out / "evaluation" / "contact_sheet.png").is_file()
    identity = json.loads((out / "s3" / "s3.json").read_text())["identities"][0]
    assert identity["credentials"][0]["secretKey"] not in printed
    # The steps reached the store through an owner-only credentials file, not the environment.
    assert (out / "s3" / "credentials").stat().st_mode & 0o777 == 0o600
    assert identity["credentials"][0]["secretKey"] not in (out / "summary.json").read_text()


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


@pytest.mark.heavy
def test_demo_default_settings_fine_tune_the_starter_and_brighten_the_photos(ray_local, tmp_path):
    """The README's first command as it stands (the default fine-tune of the starter)."""
    out = tmp_path / "demo-default"
    assert main(["demo", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == FINETUNE_STEPS
    assert summary["input_mean_luma"] < 20
    # the starter, and the starter fine-tuned on these photos, in the last two columns
    for luma, niqe in (("starter_mean_luma", "compared"), ("enhanced_mean_luma", "enhanced")):
        assert summary[luma] > 3 * summary["input_mean_luma"]
        assert summary["niqe"][niqe] < summary["niqe"]["input"]

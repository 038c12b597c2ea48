"""Training logs a person can read: no colour codes in a file, none of Ray Train's per-report
lines unless ``-v``, and a first progress line that promises nothing from the start-up step."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from enlightengan.config import tiny_config
from pipelines.prepare.job import prepare
from pipelines.train.worker import ETA_AFTER_STEPS, ProgressLine, format_duration

REPO = Path(__file__).resolve().parents[3]
ESCAPE = "\x1b["
REPORT_LINE = "Reporting training result"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(step: int) -> dict:
    return {"step": step, "epoch": 0, "lr": 1e-4, "g_total": 1.0, "d_global": 0.5}


def test_the_first_progress_line_promises_no_time_from_the_start_up_step(caplog):
    """A first step of 100 s (start-up), then steps of 1 s: the first line says what the first
    step took and no time left; once 3 steps after it are timed, the time left is theirs (a
    1,000-step run has 995 s left after step 5, not 995 x 100 s)."""
    clock = Clock()
    progress = ProgressLine(1000, 0, interval=0, clock=clock)
    caplog.set_level(logging.INFO, logger="pipelines.train.worker")
    clock.now = 100.0
    progress.update(_record(1))
    for step in range(2, 6):
        clock.now += 1.0
        progress.update(_record(step))
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 5
    assert lines[0].startswith("train: step 1/1000 (0%)")
    assert "first step 100.0 s (start-up)" in lines[0]
    assert f"time left once {ETA_AFTER_STEPS} more steps are timed" in lines[0]
    assert " h left" not in lines[0] and "steps/s" not in lines[0]
    assert "steps/s" not in lines[2]  # two steps timed after the first: still no estimate
    assert lines[3].endswith("1.00 steps/s, 17 min left")  # 996 steps at 1 s
    assert lines[4].endswith("1.00 steps/s, 17 min left")


def test_the_speed_is_a_moving_average_over_recent_steps(caplog):
    clock = Clock()
    progress = ProgressLine(10_000, 0, interval=0, window=10, clock=clock)
    caplog.set_level(logging.INFO, logger="pipelines.train.worker")
    for step in range(1, 52):
        clock.now += 30.0 if step == 1 else (2.0 if step <= 30 else 0.5)
        progress.update(_record(step))
    last = caplog.records[-1].getMessage()
    assert last.endswith("2.00 steps/s, 83 min left")  # the last 10 steps only: 0.5 s each
    assert [format_duration(s) for s in (42, 1020, 11520)] == ["42 s", "17 min", "3.2 h"]


@pytest.fixture(scope="module")
def local_shards(ray_local, photo_dataset, tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("logs") / "data"
    prepare(str(photo_dataset.low_dir), str(photo_dataset.normal_dir), str(data))
    return data


def _train_into_file(data: Path, folder: Path, *extra: str) -> tuple[int, str]:
    """``enlightengan train`` in a new process, stdout and stderr into a file: 3 steps of the
    tiny model, a report at every step and a checkpoint at step 2."""
    sets = []
    for section, fields in tiny_config().to_dict().items():
        for name, value in fields.items() if isinstance(fields, dict) else [(None, fields)]:
            key = f"{section}.{name}" if name else section
            sets += ["--set", f"{key}={json.dumps(value)}"]
    argv = ["train", "--data", str(data), "--run", str(folder / "run"), "--precision", "fp32"]
    argv += [*sets, "--steps", "3", "--report-every", "1", "--checkpoint-every", "2"]
    argv += ["--sample-every", "0", "--num-cpus", "2", *extra]
    environment = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    environment.pop("RAY_COLOR_PREFIX", None)
    environment.update(
        ENLIGHTENGAN_RAY_TMPDIR=tempfile.mkdtemp(prefix="rl-", dir="/tmp"),
        RAY_AUTH_MODE="disabled",
    )
    log = folder / "train.log"
    with open(log, "wb") as output:
        code = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", *argv],
            cwd=REPO,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=600,
        ).returncode
    return code, log.read_text(errors="replace")


def test_a_training_log_file_is_plain_text_without_report_lines(local_shards, tmp_path):
    code, text = _train_into_file(local_shards, tmp_path)
    assert code == 0, text[-3000:]
    assert ESCAPE not in text
    assert REPORT_LINE not in text
    assert "train: step 3/3 (100%)" in text
    assert "train: finished at step 3 of 3" in text
    # Ray Train's worker lines are there (prefixed, uncoloured): its workers' output reaches
    # the file, so the escapes and report lines would have shown.
    assert "(RayTrainWorker pid=" in text


@pytest.mark.heavy
def test_verbose_training_shows_ray_trains_report_lines(local_shards, tmp_path):
    code, text = _train_into_file(local_shards, tmp_path, "-v")
    assert code == 0, text[-3000:]
    assert text.count(REPORT_LINE) == 3  # one per report: steps 1, 2 (checkpoint) and 3
    assert ESCAPE not in text

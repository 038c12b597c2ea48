"""The ``enlightengan`` command's parser: a job's command imports that job only."""

from __future__ import annotations

import json
import subprocess
import sys

from pipelines.cli import JOBS, build_parser, chosen_job

PROBE = """
import json, sys
from pipelines.cli import build_parser
args = build_parser(sys.argv[1:]).parse_args(sys.argv[1:])
print(json.dumps({
    "command": args.command,
    "input": getattr(args, "input", None),
    "handler": args.handler.__module__,
    "loaded": sorted(m for m in sys.modules if m.startswith(("pipelines.", "ray.train", "torch"))),
}))
"""


def _probe(*argv: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def test_enhance_command_imports_neither_other_jobs_nor_ray_train_nor_torch():
    seen = _probe("-v", "enhance", "--input", "in", "--output", "out")
    assert seen["command"] == "enhance" and seen["input"] == "in"
    assert seen["handler"] == "pipelines.enhance.job"
    other_jobs = {module for name, (module, _) in JOBS.items() if name != "enhance"}
    loaded = set(seen["loaded"])
    assert not loaded & other_jobs
    assert not any(name.startswith(("ray.train", "torch")) for name in loaded)


def test_every_job_is_listed_and_each_parses_its_own_arguments():
    parser = build_parser()
    help_text = parser.format_help()
    assert all(name in help_text for name in JOBS)
    args = build_parser(["prepare"]).parse_args(
        ["prepare", "--low", "a", "--normal", "b", "--out", "c"]
    )
    assert args.command == "prepare" and args.handler.__module__ == "pipelines.prepare.job"


def test_chosen_job_is_the_first_word_after_the_top_level_flags():
    assert chosen_job(["--verbose", "train", "--help"]) == "train"
    assert chosen_job(["--help"]) is None
    assert chosen_job(["enhanc"]) is None
    assert chosen_job([]) is None

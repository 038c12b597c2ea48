"""The command line as a whole: one vocabulary across jobs, help without heavy imports, -v and
-q on either side of the sub-command, --json for scripts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipelines.cli import COMMANDS, build_parser, main, parse, resolve

HEAVY_MODULES = ("torch", "ray", "pyarrow", "PIL", "onnx", "onnxruntime", "botocore", "s3fs")
JOBS_WITH_WORKERS = ("train", "enhance", "evaluate")


def test_help_of_every_command_loads_no_heavy_module():
    """`enlightengan [COMMAND] --help` imports neither torch, Ray nor pyarrow: it answers at
    once (the guard is on imports, not on a wall clock)."""
    script = (
        "import sys\n"
        "from pipelines.cli import COMMANDS, main\n"
        "for argv in [[], *([name] for name in COMMANDS), ['submit', 'enhance']]:\n"
        "    try:\n"
        "        main([*argv, '--help'])\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, (argv, done.code)\n"
        f"print(sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def _options(name: str) -> dict[str, object]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[name]
    return {option: action for action in sub._actions for option in action.option_strings}


@pytest.mark.parametrize("name", JOBS_WITH_WORKERS)
def test_jobs_that_run_models_share_one_vocabulary(name):
    options = _options(name)
    for flag in (
        "--output",
        "--workers",
        "--gpus-per-worker",
        "--cpus-per-worker",
        "--threads-per-worker",
        "--precision",
        "--address",
        "--config",
        "--json",
        "--dry-run",
        "-v",
        "-q",
    ):
        assert flag in options, (name, flag)
    precision = options["--precision"]
    assert precision.default == "auto" and set(precision.choices) >= {"auto", "fp32", "bf16"}


@pytest.mark.parametrize("name", [name for name, c in COMMANDS.items() if c.spec])
def test_every_job_has_config_json_and_output(name):
    options = _options(name)
    assert {"--config", "--json", "--output", "--dry-run"} <= set(options)


def test_formats_are_named_apart():
    assert "--image-format" in _options("enhance")
    assert "--export-format" in _options("export")


def test_verbosity_goes_before_or_after_the_command():
    for argv in (["-q", "enhance"], ["enhance", "-q"]):
        _, args = parse([*argv, "--input", "a", "--output", "b"])
        assert args.quiet is True and args.verbose is False
    _, args = parse(["jobs", "list", "-v"])
    assert args.verbose is True


def test_old_spellings_still_parse_with_a_warning(capsys):
    _, args = parse(["prepare", "--low", "a", "--normal", "b", "--out", "c"])
    assert resolve(args).output == "c"
    _, args = parse(["train", "--data", "d", "--run", "r", "--gpus", "--torch-threads", "3"])
    spec = resolve(args)
    assert (spec.output, spec.gpus_per_worker, spec.threads_per_worker) == ("r", 1.0, 3)
    _, args = parse(["export", "--checkpoint", "c", "--format", "onnx", "--out", "x.onnx"])
    assert resolve(args).export_format == "onnx"
    warnings = capsys.readouterr().err
    for old in ("--out", "--gpus", "--torch-threads", "--format"):
        assert f"{old} is deprecated" in warnings


def test_a_model_config_given_as_config_says_where_it_belongs(tmp_path, capsys):
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"optim": {"lr": 2e-4}}))
    code = main(["train", "--config", str(model), "--data", "d", "--output", "r"])
    assert code == 2
    assert "pass it as --model-config" in capsys.readouterr().err


def test_a_missing_required_setting_is_one_line_with_exit_2(capsys):
    assert main(["prepare", "--low", "a", "--normal", "b"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "enlightengan prepare: error: prepare needs --output (or `output:` in a --config file)"
    )


def _photo_folders(tmp_path) -> list[str]:
    """Flags of a prepare dry run over one (unread) photo per domain."""
    for domain in ("low", "normal"):
        (tmp_path / domain).mkdir()
        (tmp_path / domain / f"{domain}.png").write_bytes(b"listed, never read by a dry run")
    return ["--low", str(tmp_path / "low"), "--normal", str(tmp_path / "normal")]


def test_a_job_called_from_python_prints_nothing_and_returns_its_summary(tmp_path, capsys):
    from pipelines.prepare.job import run_prepare
    from pipelines.prepare.spec import PrepareJob

    _photo_folders(tmp_path)
    job = PrepareJob(
        low=str(tmp_path / "low"),
        normal=str(tmp_path / "normal"),
        output=str(tmp_path / "out"),
        dry_run=True,
    )
    summary = run_prepare(job)
    assert capsys.readouterr().out == ""
    assert summary.exit_code == 0 and summary.data == {"dry_run": True, "low": 1, "normal": 1}
    assert "low: 1 images under" in summary.text and "would write shards" in summary.text


def test_the_cli_prints_the_job_result_as_text_or_as_json(tmp_path, capsys):
    argv = ["prepare", *_photo_folders(tmp_path), "--output", str(tmp_path / "out"), "--dry-run"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "low: 1 images under" in printed and "normal: 1 images under" in printed
    assert "would write shards" in printed

    assert main([*argv, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["job"] == "prepare" and document["exit_code"] == 0
    assert document["summary"] == {"dry_run": True, "low": 1, "normal": 1}
    assert document["spec"]["dry_run"] is True and "text" not in document

"""EnhanceJob: the enhance command line resolved into one validated spec."""

from __future__ import annotations

import json

import pytest

from pipelines.cli import main, parse, resolve
from pipelines.enhance.spec import EnhanceJob
from pipelines.errors import UserError
from pipelines.inference.darkness import DEFAULT_DARK_THRESHOLD, DarkPolicy


def job(*argv: str) -> EnhanceJob:
    _, args = parse(["enhance", "--input", "in", "--output", "out", *argv])
    return resolve(args)


def test_flags_become_a_frozen_spec():
    spec = job("--workers", "2", "--image-format", "png", "--no-channels-last")
    assert isinstance(spec, EnhanceJob)
    assert (spec.input, spec.output, spec.workers, spec.image_format) == ("in", "out", 2, "png")
    assert spec.channels_last is False and spec.precision == "auto" and spec.backend == "auto"
    assert job("--tone-dark-strength", "1.2").tone_dark_strength == 1.2
    assert job("--tone-denoise", "0").tone_denoise == 0.0
    with pytest.raises(AttributeError):
        spec.workers = 3


def test_the_dark_policy_comes_from_the_flags():
    assert job().dark_policy is None
    assert job("--only-dark", "skip").dark_policy == DarkPolicy("skip", DEFAULT_DARK_THRESHOLD)
    policy = job("--only-dark", "copy", "--dark-threshold", "0.5").dark_policy
    assert policy == DarkPolicy("copy", 0.5)
    assert policy.is_dark(0.5) and not policy.is_dark(0.49)
    assert job("--only-dark", "skip", "--image-format", "png").dark_policy.mode == "skip"


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--only-dark", "copy", "--image-format", "png"), "--image-format same"),
        (("--only-dark", "skip", "--dark-threshold", "1.5"), "between 0 and 1"),
        (("--dark-threshold", "-0.1"), "between 0 and 1"),
        (("--workers", "0"), "--workers"),
        (("--tile-size", "32"), "--tile-size"),
        (("--jpeg-quality", "0"), "--jpeg-quality"),
        (("--tone-dark-strength", "-1"), "--tone-dark-strength"),
        (("--tone-dark-strength", "3"), "--tone-dark-strength"),
        (("--tone-denoise", "-1"), "--tone-denoise"),
    ],
)
def test_bad_settings_are_one_clear_error(argv, message):
    with pytest.raises(UserError, match=message):
        job(*argv)


def test_a_missing_input_names_the_flag_and_the_config_key():
    _, args = parse(["enhance", "--output", "out"])
    with pytest.raises(UserError, match=r"--input \(or `input:` in a --config file\)"):
        resolve(args)


def test_the_old_format_flag_still_works_with_a_warning(capsys):
    assert job("--format", "jpeg").image_format == "jpeg"
    assert "--format is deprecated" in capsys.readouterr().err


def test_a_config_file_supplies_settings_and_flags_override_it(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("input: photos\noutput: enhanced\nbatch_size: 8\nworkers: 3\n")
    _, args = parse(["enhance", "--config", str(config), "--workers", "2"])
    spec = resolve(args)
    assert (spec.input, spec.output, spec.batch_size, spec.workers) == (
        "photos",
        "enhanced",
        8,
        2,
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"input": "a", "output": "b", "batchsize": 8}))
    with pytest.raises(UserError, match="unknown settings batchsize"):
        parse(["enhance", "--config", str(bad)])


def test_the_printed_spec_feeds_back_in(tmp_path, capsys):
    """--json --dry-run prints the resolved spec; that document is a valid --config."""
    source = tmp_path / "photos"
    source.mkdir()
    assert (
        main(
            [
                "enhance",
                "--input",
                str(source),
                "--output",
                str(tmp_path / "out"),
                "--dry-run",
                "--json",
                "--batch-size",
                "2",
                "--num-cpus",
                "1",
            ]
        )
        == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert document["spec"]["batch_size"] == 2 and document["summary"]["dry_run"] is True
    saved = tmp_path / "spec.json"
    saved.write_text(json.dumps(document))
    _, args = parse(["enhance", "--config", str(saved)])
    assert resolve(args) == EnhanceJob(**document["spec"])

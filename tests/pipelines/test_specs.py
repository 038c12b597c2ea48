"""Spec validation: one rule for a field's type and choices, whether the value comes from a
flag, a --config file or Python; errors name the field (Python) or the flag (the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.cli import _subparser, main, parse, resolve
from pipelines.enhance.spec import EnhanceJob
from pipelines.errors import UserError
from pipelines.export.spec import ExportJob
from pipelines.prepare.spec import PrepareJob
from pipelines.specs import Spec, SpecError, choice
from pipelines.train.spec import TrainJob


@dataclass(frozen=True)
class Toy(Spec):
    count: int = 1
    share: float = 0.5
    flag: bool = False
    name: str | None = None
    mode: str = choice(("a", "b"), "a")
    names: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.count < 1:
            raise SpecError("{count} must be >= 1, not {value}", value=self.count)


def test_values_are_converted_as_flags_convert_them():
    toy = Toy(count="3", share=2, names=["x", "y"])
    assert (toy.count, toy.share, toy.names) == (3, 2.0, ("x", "y"))
    assert type(toy.share) is float and Toy(share="0.25").share == 0.25
    assert Toy(name=None).name is None and Toy(name="n").name == "n"
    assert Toy(name=Path("a") / "b").name == str(Path("a") / "b")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"count": 2.5}, r"^count must be a whole number, got 2.5$"),
        ({"count": True}, "count must be a whole number"),
        ({"count": "2.5"}, "count must be a whole number"),
        ({"share": "half"}, "share must be a number"),
        ({"flag": "yes"}, "flag must be true or false"),
        ({"name": 3}, "name must be a string"),
        ({"mode": "c"}, r"^mode must be one of a, b, got 'c'$"),
        ({"names": "x"}, "names must be a list of strings"),
        ({"count": 0}, r"^count must be >= 1, not 0$"),
    ],
)
def test_bad_values_name_the_field(settings, message):
    with pytest.raises(UserError, match=message) as raised:
        Toy(**settings)
    assert raised.value.render(lambda field: "--" + field).startswith("--")


def test_an_error_renders_with_the_callers_spelling():
    error = SpecError("{workers} must be between 1 and {min_workers} ({n})", n=4)
    assert str(error) == "workers must be between 1 and min_workers (4)"
    assert error.fields == ("workers", "min_workers")
    flags = error.render(lambda field: "--" + field.replace("_", "-"))
    assert flags == "--workers must be between 1 and --min-workers (4)"


def test_python_callers_get_field_names():
    with pytest.raises(UserError, match=r"^backend must be one of auto, torch, onnxruntime"):
        EnhanceJob(input="in", output="out", backend="nope")
    with pytest.raises(UserError, match=r"^precision must be one of"):
        EnhanceJob(input="in", output="out", precision="fp8")
    with pytest.raises(UserError, match=r"^workers and batch_size must be >= 1$"):
        EnhanceJob(input="in", output="out", workers=0)
    with pytest.raises(UserError, match=r"^workers must be a whole number, got 2.5$"):
        TrainJob(data="d", output="r", workers=2.5)
    with pytest.raises(UserError, match=r"^export_format must be one of"):
        ExportJob(checkpoint="c", export_format="gif", output="x")
    with pytest.raises(UserError, match=r"^small must be one of reject, upscale"):
        PrepareJob(low="l", normal="n", output="o", small="grow")


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_config_value_of_the_wrong_type_is_refused_naming_the_flag(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text("input: a\noutput: b\nworkers: 2.5\n")
    assert main(["enhance", "--config", str(config)]) == 2
    assert _error(capsys) == (
        "enlightengan enhance: error: --workers must be a whole number, got 2.5"
    )


def test_a_config_choice_is_checked_as_the_flag_is(tmp_path, capsys):
    config = tmp_path / "job.json"
    config.write_text('{"input": "a", "output": "b", "backend": "nope"}')
    assert main(["enhance", "--config", str(config)]) == 2
    assert _error(capsys) == (
        "enlightengan enhance: error: --backend must be one of auto, torch, onnxruntime, got 'nope'"
    )
    assert main(["enhance", "--input", "a", "--output", "b", "--backend", "nope"]) == 2
    assert _error(capsys) == (
        "enlightengan enhance: error: --backend must be one of auto, torch, onnxruntime, got 'nope'"
    )


def test_a_flag_is_converted_and_refused_by_the_spec_as_a_config_value_is(capsys):
    assert main(["enhance", "--input", "a", "--output", "b", "--workers", "2.5"]) == 2
    assert _error(capsys) == (
        "enlightengan enhance: error: --workers must be a whole number, got '2.5'"
    )
    assert main(["export", "--checkpoint", "c", "--output", "o", "--export-format", "gif"]) == 2
    assert _error(capsys) == (
        "enlightengan export: error: --export-format must be one of onnx, torchscript, "
        "official, got 'gif'"
    )
    parser, args = parse(["enhance", "--input", "a", "--output", "b", "--workers", "3"])
    assert resolve(args).workers == 3
    assert "--backend {auto,torch,onnxruntime}" in _subparser(parser, "enhance").format_help()


def test_the_cli_names_flags_whose_name_differs_from_the_field(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("data: d\noutput: r\noverrides: 3\n")
    assert main(["train", "--config", str(config)]) == 2
    assert _error(capsys) == "enlightengan train: error: --set must be a list of strings, got 3"
    assert main(["train", "--data", "d", "--output", "r", "--min-workers", "2"]) == 2
    assert _error(capsys) == (
        "enlightengan train: error: --min-workers must be between 1 and --workers (1)"
    )

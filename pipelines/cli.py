"""The ``enlightengan`` command: one sub-command per job, plus the tools around them.

A job's sub-command parses its flags (and an optional ``--config`` file) into the job's frozen
spec, then calls the job's plain function, ``run_<job>(spec) -> Summary``, which Python callers
use directly. Parsing imports only the light spec modules; torch, Ray and pyarrow load when a
job runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
import types
import typing

from pipelines.errors import UserError
from pipelines.ops.plain_text import plain_text_without_terminal
from pipelines.ops.ray_internals import keep_local_ray_on_loopback
from pipelines.options import (
    DeprecatedAlias,
    HelpFormatter,
    Summary,
    add_verbosity_arguments,
    default_flag,
    load_config_file,
    spec_from_args,
)


@dataclasses.dataclass(frozen=True)
class Command:
    """A sub-command: the light module that defines its flags, and what it runs.

    A job names its spec type in that module and its runner, ``"module:function"``, taking the
    spec and returning a :class:`~pipelines.options.Summary`. A tool (``submit``, ``jobs``,
    ``dev``) names a function of the module taking the parsed arguments and returning the
    exit code."""

    module: str
    help: str
    adder: str = "add_arguments"
    spec: str | None = None
    runner: str | None = None
    tool: str | None = None


def _job(name: str, help_text: str, spec: str, package: str | None = None) -> Command:
    package = package or name
    return Command(
        f"pipelines.{package}.spec",
        help_text,
        spec=spec,
        runner=f"pipelines.{package}.job:run_{name.replace('-', '_')}",
        adder=f"add_{name.replace('-', '_')}_arguments",
    )


COMMANDS: dict[str, Command] = {
    "prepare": _job("prepare", "ingest unpaired low/normal photos into shards", "PrepareJob"),
    "train": _job("train", "train EnlightenGAN with Ray Train on prepared shards", "TrainJob"),
    "enhance": _job("enhance", "bulk-enhance an image prefix with a generator", "EnhanceJob"),
    "evaluate": _job("evaluate", "NIQE of inputs, enhanced outputs and baselines", "EvaluateJob"),
    "export": _job("export", "a checkpoint as ONNX / TorchScript / official .pth", "ExportJob"),
    "import-official": _job(
        "import-official",
        "the authors' released generator weights as a checkpoint",
        "ImportOfficialJob",
        package="export",
    ),
    "demo": _job("demo", "end-to-end run on photos inside installed wheels", "DemoJob"),
    "submit": Command(
        "pipelines.ops.submit", "submit a job to a Ray cluster as a Ray Job", tool="run"
    ),
    "jobs": Command(
        "pipelines.ops.submit",
        "list, follow or stop submitted Ray Jobs",
        adder="add_jobs_arguments",
        tool="run_jobs",
    ),
    "dev": Command(
        "pipelines.ops.devstack", "start/stop a local Ray head and S3 server", tool="run"
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enlightengan",
        description="EnlightenGAN (unsupervised low-light enhancement) at scale on Ray.",
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(verbose=False, quiet=False)
    add_verbosity_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        module = importlib.import_module(command.module)
        job_parser = sub.add_parser(
            name,
            help=command.help,
            description=command.help,
            formatter_class=HelpFormatter,
        )
        getattr(module, command.adder)(job_parser)
        if command.spec is None:
            add_verbosity_arguments(job_parser)
        else:
            leave_checks_to_spec(job_parser, getattr(module, command.spec))
        job_parser.set_defaults(command=name)
    return parser


def leave_checks_to_spec(parser: argparse.ArgumentParser, spec_type: type) -> None:
    """Drop argparse's own ``type=int/float`` and ``choices`` from the flags that set a field
    of ``spec_type``: the spec converts and checks them (:mod:`pipelines.specs`), so a value is
    accepted, converted and refused in the same words whether it came from a flag, a
    ``--config`` file or Python. ``--help`` still lists each flag's choices."""
    fields = {field.name: field for field in dataclasses.fields(spec_type)}
    hints = typing.get_type_hints(spec_type)
    for action in parser._actions:
        field = fields.get(action.dest)
        if field is None:
            continue
        if action.type in (int, float) and _converted_kind(hints.get(field.name)) is action.type:
            action.type = None
        if action.choices is not None and field.metadata.get("choices") is not None:
            action.choices = ListedChoices(action.choices)


class ListedChoices(tuple):
    """A flag's choices as ``--help`` lists them, checked by the spec instead of argparse
    (which refuses a value ``not in`` the choices before the spec sees it)."""

    def __contains__(self, value: object) -> bool:
        return True


def _converted_kind(hint) -> type | None:
    """int or float when the spec converts a field of type ``hint`` to it: ``int``, ``float``
    or either ``| None``; never a container such as ``list[int]`` (its items stay argparse's)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)]
    else:
        kinds = [hint]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (int, float) else None


def parse(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse ``argv``; with ``--config FILE`` the file's settings become the sub-command's
    defaults and the command line is parsed again, so flags given there win."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = getattr(args, "config", None)
    if config:
        settings = load_config_file(config)
        spec_type = spec_type_of(args.command)
        known = {field.name for field in dataclasses.fields(spec_type)} if spec_type else set()
        unknown = sorted(set(settings) - known)
        if unknown:
            explain = getattr(
                importlib.import_module(COMMANDS[args.command].module),
                "explain_unknown_settings",
                lambda names: None,
            )
            hint = explain(set(unknown))
            raise UserError(
                f"--config {config}: unknown settings {', '.join(unknown)}"
                + (f"; {hint}" if hint else "")
            )
        subparser = _subparser(parser, args.command)
        subparser.set_defaults(**settings)
        args = parser.parse_args(argv)
    return parser, args


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def spec_type_of(name: str) -> type | None:
    command = COMMANDS[name]
    if command.spec is None:
        return None
    return getattr(importlib.import_module(command.module), command.spec)


def resolve(args: argparse.Namespace):
    """The sub-command's validated spec (a job) or None (a tool); a bad setting, from a flag or
    the ``--config`` file, is an error naming the flag."""
    spec_type = spec_type_of(args.command)
    if spec_type is None:
        return None
    flags = flags_of(args.command)
    return spec_from_args(
        spec_type, args, args.command, lambda field: flags.get(field) or default_flag(field)
    )


def flags_of(name: str) -> dict[str, str]:
    """The flag that sets each destination of the sub-command ``name`` (``overrides``:
    ``--set``), deprecated spellings left out."""
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(add_help=False)
    getattr(importlib.import_module(command.module), command.adder)(parser)
    flags: dict[str, str] = {}
    for action in parser._actions:
        spellings = [option for option in action.option_strings if option.startswith("--")]
        if spellings and not isinstance(action, DeprecatedAlias):
            flags.setdefault(action.dest, spellings[0])
    return flags


def run_job(name: str, spec) -> Summary:
    """Run the job ``name`` on its spec (imports the job's heavy modules now, Ray among them:
    a job without an address has it start on loopback only)."""
    keep_local_ray_on_loopback(getattr(spec, "address", None))
    module_name, function = COMMANDS[name].runner.split(":")
    return getattr(importlib.import_module(module_name), function)(spec)


def main(argv: list[str] | None = None) -> int:
    command = "enlightengan"
    try:
        parser, args = parse(argv)
        command = f"enlightengan {args.command}"
        logging.basicConfig(
            level=logging.DEBUG
            if args.verbose
            else (logging.WARNING if args.quiet else logging.INFO),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        spec = resolve(args)
        with plain_text_without_terminal():
            return _run(command, args, spec)
    except UserError as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


def _run(command: str, args, spec) -> int:
    """Run a tool (``spec`` None) or a job, then print the job's result on stdout: its text,
    or with --json the spec and the summary as JSON (the job itself prints only progress, on
    stderr, so stdout holds the result alone)."""
    if spec is None:
        tool = COMMANDS[args.command]
        return int(getattr(importlib.import_module(tool.module), tool.tool)(args) or 0)
    as_json = getattr(args, "json", False)
    if args.verbose and not as_json:
        print(f"{command}: {_settings_line(spec)}", file=sys.stderr)
    summary = run_job(args.command, spec)
    print_result(summary, spec, as_json=as_json)
    return summary.exit_code


def print_result(summary: Summary, spec, *, as_json: bool) -> None:
    """A job's result on stdout: ``summary.text``, or the spec and summary as JSON."""
    if as_json:
        print(summary.as_json(spec))
    elif summary.text:
        print(summary.text)


def _settings_line(spec) -> str:
    """The spec's settings that differ from their defaults, as ``name=value`` pairs."""
    parts = []
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if field.default is not dataclasses.MISSING and value == field.default:
            continue
        parts.append(f"{field.name}={value}")
    return "settings " + (", ".join(parts) or "all defaults")


if __name__ == "__main__":
    sys.exit(main())

"""The ``enlightengan`` command: one sub-command per job.

Each job module exposes ``add_arguments(parser)`` and ``run(args) -> int`` so the same argument
definitions serve the local command and ``enlightengan submit`` (no duplicated flags).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipelines.errors import UserError

JOBS: dict[str, tuple[str, str]] = {
    "prepare": (
        "pipelines.prepare.job",
        "ingest unpaired low/normal photos into Parquet shards",
    ),
    "train": ("pipelines.train.job", "train EnlightenGAN with Ray Train on prepared shards"),
    "enhance": (
        "pipelines.enhance.job",
        "bulk-enhance an image prefix with a trained generator",
    ),
    "evaluate": ("pipelines.evaluate", "NIQE of inputs, enhanced outputs and baselines"),
    "export": ("pipelines.export", "export a checkpoint to ONNX / TorchScript / official layout"),
    "import-official": ("pipelines.export", "import the authors' released generator weights"),
    "submit": ("pipelines.ops.submit", "submit prepare/train/enhance as a Ray Job to a cluster"),
    "jobs": ("pipelines.ops.submit", "list, follow or stop submitted Ray Jobs"),
    "dev": ("pipelines.ops.devstack", "start/stop a local Ray head and S3 server on loopback"),
    "demo": ("pipelines.demo.run", "end-to-end run on photos shipped inside installed wheels"),
}


def available_jobs(names=None) -> dict[str, object]:
    """Import every job module in ``names`` (default: all) that exists; a job whose module is
    not there is left out."""
    modules = {}
    for name in JOBS if names is None else names:
        module_name = JOBS[name][0]
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
    return modules


def chosen_job(argv: list[str] | None) -> str | None:
    """The job that ``argv`` (the command's words) names first after the top-level flags."""
    for token in argv or ():
        if token in ("-v", "--verbose"):
            continue
        return token if token in JOBS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every job; when ``argv`` (the command's words) names a job, only that
    job's module is imported (the other jobs' imports, Ray Train's among them, would add
    seconds to every command's start) and the others stay listed by name."""
    parser = argparse.ArgumentParser(
        prog="enlightengan",
        description="EnlightenGAN (unsupervised low-light enhancement) at scale on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = chosen_job(argv)
    modules = available_jobs(None if chosen is None else [chosen])
    for name, (_, help_text) in JOBS.items():
        if chosen is not None and name != chosen:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        if name not in modules:
            continue
        module = modules[name]
        job_parser = sub.add_parser(name, help=help_text, description=help_text)
        adder = getattr(module, f"add_{name.replace('-', '_')}_arguments", None)
        (adder or module.add_arguments)(job_parser)
        runner = getattr(module, f"run_{name.replace('-', '_')}", None)
        job_parser.set_defaults(handler=runner or module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except UserError as error:
        print(f"enlightengan {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"enlightengan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

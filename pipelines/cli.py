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


def available_jobs() -> dict[str, object]:
    """Import every job module that exists; a job whose module is not there is left out."""
    modules = {}
    for name, (module_name, _) in JOBS.items():
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enlightengan",
        description="EnlightenGAN (unsupervised low-light enhancement) at scale on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in available_jobs().items():
        help_text = JOBS[name][1]
        job_parser = sub.add_parser(name, help=help_text, description=help_text)
        adder = getattr(module, f"add_{name.replace('-', '_')}_arguments", None)
        (adder or module.add_arguments)(job_parser)
        runner = getattr(module, f"run_{name.replace('-', '_')}", None)
        job_parser.set_defaults(handler=runner or module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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

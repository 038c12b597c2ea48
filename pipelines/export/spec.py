"""The settings of ``enlightengan export`` and ``import-official`` and their flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipelines.io.formats import (
    DEFAULT_ONNX_OPSET,
    EXPORT_FORMATS,
    GRAPH_NOTE,
    ONNX_EXPORTERS,
)
from pipelines.options import (
    StorageFields,
    add_common_arguments,
    add_output_argument,
    add_storage_arguments,
    deprecated_flag,
)
from pipelines.specs import Spec, choice


@dataclass(frozen=True)
class ExportJob(StorageFields):
    """Write the generator of ``checkpoint`` to the local file ``output`` in ``export_format``.

    Field names are the flags' names with underscores; see ``enlightengan export --help``.
    """

    checkpoint: str
    export_format: str = choice(EXPORT_FORMATS)
    output: str
    opset: int = DEFAULT_ONNX_OPSET
    exporter: str = choice(ONNX_EXPORTERS, "dynamo")
    check: bool = True
    overwrite: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class ImportOfficialJob(Spec):
    """Turn the authors' released generator file ``weights`` into a checkpoint at ``output``."""

    weights: str
    output: str
    check: bool = True
    overwrite: bool = False
    dry_run: bool = False


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint directory, training run folder (latest complete checkpoint), s3:// "
        "or starter (the model shipped in the package) (required)",
    )
    parser.add_argument(
        "--export-format",
        choices=EXPORT_FORMATS,
        default=None,
        help="onnx / torchscript: dynamic batch, height and width; " + GRAPH_NOTE + ". "
        "official: the authors' generator .pth layout (reference architecture only) (required)",
    )
    deprecated_flag(parser, "--format", "--export-format", "export_format", choices=EXPORT_FORMATS)
    add_output_argument(parser, "file to write (a local path)", old=("--out",))
    parser.add_argument("--opset", type=int, default=DEFAULT_ONNX_OPSET, help="ONNX opset")
    parser.add_argument(
        "--exporter",
        choices=ONNX_EXPORTERS,
        default="dynamo",
        help="ONNX exporter: dynamo (torch.export) or legacy (TorchScript-based, deprecated "
        "upstream, much faster)",
    )
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the export on two sizes and compare with PyTorch",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    add_common_arguments(parser, dry_run="find and load the checkpoint; write nothing")
    add_storage_arguments(parser)


def add_import_official_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        default=None,
        help="the authors' generator .pth (e.g. 200_net_G_A.pth) (required)",
    )
    add_output_argument(parser, "checkpoint directory to write", old=("--out",))
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reload the written checkpoint and compare its output with the imported weights",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output")
    add_common_arguments(parser, dry_run="check the weights file; write nothing")

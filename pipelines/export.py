"""``enlightengan export`` and ``enlightengan import-official``: the generator in other formats.

``export`` reads a checkpoint (local directory, training run root or ``s3://``, found exactly as
``enlightengan enhance`` finds it) and writes one file plus a JSON sidecar (``<file>.json``):

* ``onnx``: input ``images`` (B, 3, H, W) float32 RGB in [-1, 1], output ``enhanced`` of the
  same shape; batch, height and width are dynamic. The reflection padding to a multiple of 16
  (the four max-pools of the U-Net) and the crop back happen inside the graph.
* ``torchscript``: the same computation as a ``torch.jit`` module (``torch.jit.load``).
* ``official``: the authors' generator ``.pth`` layout (``module.``-prefixed state dict),
  only for the reference architecture.

The ONNX and TorchScript graphs never halve very wide inputs (``halve_above_width`` in the
generator config, 2200 in the reference): that branch depends on the input's width and a
static graph cannot hold it. Downscale such images before running the graph; the sidecar
records the threshold. Both graphs need sides of at least ``pad_multiple`` pixels (reflection
padding must be narrower than the image).

``import-official`` is the reverse of ``official``: the authors' released weights become a
native checkpoint that ``enlightengan enhance --checkpoint`` uses.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from enlightengan.checkpoint import load_official_generator
from enlightengan.generator import Generator, attention_map
from pipelines.errors import UserError
from pipelines.io.storage import StorageOptions, add_storage_arguments, display_uri

FORMATS = ("onnx", "torchscript", "official")
EXPORTERS = ("dynamo", "legacy")
INPUT_NAME = "images"
OUTPUT_NAME = "enhanced"
DEFAULT_OPSET = 18
# Batch sizes and sides that are not multiples of 16, so the check exercises the in-graph
# padding and every dynamic axis.
CHECK_SHAPES = ((2, 3, 40, 60), (1, 3, 45, 70))
CHECK_TOLERANCE = 1e-4
TRACE_SHAPE = (1, 3, 64, 96)
# Their INFO lines (one per graph pass) would flood the CLI output.
NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")
INSTALL_HINT = "pip install 'enlightengan-ray[export]' (onnx, onnxruntime, onnxscript)"
GRAPH_NOTE = (
    "pads to a multiple of pad_multiple inside the graph; never halves inputs wider than "
    "halve_above_width (downscale those first); sides must be >= pad_multiple"
)


class _ResidualNetwork(nn.Module):
    """The generator's U-Net on an already padded batch: returns the residual A * r."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, padded: torch.Tensor) -> torch.Tensor:
        # The attention map is per pixel, so the map of the padded batch equals the padded map
        # that Generator.forward builds.
        return self.generator._residual(padded, attention_map(padded))


class PaddedGenerator(nn.Module):
    """``Generator.forward`` without the width-dependent halving, written with shape arithmetic
    only (no Python branches on sizes), so exporters keep height and width symbolic.

    output = images + crop(A * r(pad(images))), as in the paper's Eq. for the attention-guided
    residual (Sec. III-A)."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.residual_network = _ResidualNetwork(generator)
        self.pad_multiple = int(generator.config.pad_multiple)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2], images.shape[-1]
        multiple = self.pad_multiple
        pad_height = (multiple - height % multiple) % multiple
        pad_width = (multiple - width % multiple) % multiple
        top, left = pad_height // 2, pad_width // 2
        padding = [left, pad_width - left, top, pad_height - top]
        latent = self.residual_network(F.pad(images, padding, mode="reflect"))
        return images + latent[:, :, top : top + height, left : left + width]


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint directory, training run folder (latest complete checkpoint), s3:// "
        "or starter (the model shipped in the package)",
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="onnx / torchscript: dynamic batch, height and width; " + GRAPH_NOTE + ". "
        "official: the authors' generator .pth layout (reference architecture only)",
    )
    parser.add_argument("--out", required=True, help="file to write (a local path)")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="dynamo",
        help="ONNX exporter: dynamo (torch.export, default) or legacy (TorchScript-based, "
        "deprecated upstream, much faster)",
    )
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"run the export on {len(CHECK_SHAPES)} sizes and compare with PyTorch "
        f"(max abs diff < {CHECK_TOLERANCE}; default on)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_storage_arguments(parser)


def run_export(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser().absolute()
    _check_output_file(out, args.overwrite)
    generator, resolved = load_source_generator(args.checkpoint, StorageOptions.from_args(args))
    partial = out.parent / f".{out.stem}.partial{out.suffix}"
    differences: dict[str, float] | None = None
    print(f"exporting {display_uri(resolved)} to {args.format}...", flush=True)
    try:
        if args.format == "onnx":
            export_onnx(generator, partial, args.opset, args.exporter)
            candidate = onnx_runner(partial) if args.check else None
        elif args.format == "torchscript":
            export_torchscript(generator, partial)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=FutureWarning)
                candidate = torch.jit.load(str(partial), map_location="cpu")
        else:
            export_official(generator, partial)
            candidate = load_official_generator(partial, generator.config)
        if args.check and candidate is not None:
            label = "onnxruntime" if args.format == "onnx" else args.format
            differences = check_against(candidate, generator, label)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    metadata = {
        "created_by": "enlightengan export",
        "format": args.format,
        "file": out.name,
        "bytes": out.stat().st_size,
        "sha256": sha256_of(out),
        "source_checkpoint": display_uri(str(args.checkpoint)),
        "resolved_checkpoint": display_uri(resolved),
        "generator_config": dataclasses.asdict(generator.config),
        "opset": args.opset if args.format == "onnx" else None,
        "exporter": args.exporter if args.format == "onnx" else None,
        "torch_version": torch.__version__,
        "input": _tensor_spec(INPUT_NAME),
        "output": _tensor_spec(OUTPUT_NAME),
        "graph": None if args.format == "official" else GRAPH_NOTE,
        "check_max_abs_diff": differences,
    }
    sidecar = out.with_name(out.name + ".json")
    sidecar.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out} ({metadata['bytes']} bytes, sha256 {metadata['sha256'][:12]}...)")
    print(f"wrote {sidecar}")
    return 0


def add_import_official_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights", required=True, help="the authors' generator .pth (e.g. 200_net_G_A.pth)"
    )
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reload the written checkpoint and compare its output with the imported weights",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")


def run_import_official(args: argparse.Namespace) -> int:
    from enlightengan.checkpoint import CheckpointError, load_generator, save_checkpoint
    from enlightengan.config import EnlightenGANConfig

    weights = Path(args.weights).expanduser()
    out = Path(args.out).expanduser().absolute()
    if not weights.is_file():
        raise UserError(f"no weights file at {weights}: pass the authors' generator .pth")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a directory for the checkpoint")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} exists and is not empty: choose a new directory or --overwrite")
    config = EnlightenGANConfig()
    try:
        generator = load_official_generator(weights, config.generator)
    except CheckpointError as error:
        raise UserError(f"cannot import {weights}: {_first_line(error)}") from None
    save_checkpoint(
        out,
        config=config,
        networks={"generator": generator},
        trainer_state={
            "step": 0,
            "epoch": 0,
            "imported_from": {
                "layout": "official",
                "file": weights.name,
                "sha256": sha256_of(weights),
            },
        },
    )
    if args.check:
        check_against(load_generator(out), generator, "checkpoint")
    print(f"wrote checkpoint {out}: use it with `enlightengan enhance --checkpoint {out}`")
    return 0


def load_source_generator(uri: str, options: StorageOptions) -> tuple[Generator, str]:
    """The generator of the checkpoint at ``uri`` and where it was found (safe to print)."""
    from enlightengan.checkpoint import load_generator
    from pipelines.inference.stages import load_checkpoint_files, stage_checkpoint

    found = load_checkpoint_files(uri, options)
    directory = stage_checkpoint(found.files)
    try:
        generator = load_generator(directory, map_location="cpu")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return generator.eval(), found.description


def export_onnx(generator: Generator, path: Path, opset: int, exporter: str) -> None:
    """Write the :class:`PaddedGenerator` graph with dynamic batch, height and width."""
    _require_module("onnx")
    if exporter == "dynamo":
        _require_module("onnxscript")
        dynamic = {index: torch.export.Dim.DYNAMIC for index in (0, 2, 3)}
        options = {
            "dynamic_shapes": {INPUT_NAME: dynamic},
            "external_data": False,
            "verbose": False,
        }
    else:
        axes = {0: "batch", 2: "height", 3: "width"}
        options = {"dynamic_axes": {INPUT_NAME: axes, OUTPUT_NAME: axes}}
    model = PaddedGenerator(generator).eval()
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_loggers(*NOISY_LOGGERS):
            warnings.simplefilter("ignore", category=DeprecationWarning)
            torch.onnx.export(
                model,
                (check_batch(TRACE_SHAPE),),
                str(path),
                dynamo=exporter == "dynamo",
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                **options,
            )
    except Exception as error:
        summary = _first_line(error)[:200]
        other = "legacy" if exporter == "dynamo" else "dynamo"
        raise UserError(
            f"the {exporter} ONNX exporter failed ({type(error).__name__}: {summary}): "
            f"try --exporter {other} or another --opset"
        ) from None
    _name_dynamic_axes(path)


def _name_dynamic_axes(path: Path) -> None:
    """Give the input and output axes readable names (the dynamo exporter writes s0, s1...)."""
    import onnx

    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for index, name in ((0, "batch"), (2, "height"), (3, "width")):
            if len(dims) == 4 and not dims[index].HasField("dim_value"):
                dims[index].dim_param = name
    onnx.save(model, str(path))


def onnx_runner(path: Path):
    """``onnx.checker`` on the file, then a callable running it in onnxruntime (None, with a
    note, when onnxruntime is not installed: only the graph's validity is checked)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    print("onnx.checker: the graph is a valid ONNX model")
    try:
        import onnxruntime
    except ImportError:
        print(f"onnxruntime is not installed: outputs not compared ({INSTALL_HINT})")
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run_session(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0])

    return run_session


def export_torchscript(generator: Generator, path: Path) -> None:
    """Trace the fully convolutional core (its shapes follow the input) and script the padding
    around it, so the saved module keeps height and width dynamic."""
    model = PaddedGenerator(generator).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        model.residual_network = torch.jit.trace(
            model.residual_network, check_batch(TRACE_SHAPE), check_trace=False
        )
        torch.jit.save(torch.jit.script(model), str(path))


def export_official(generator: Generator, path: Path) -> None:
    from enlightengan.checkpoint import CheckpointError, save_official_generator

    try:
        save_official_generator(generator, path)
    except CheckpointError:
        config = generator.config
        raise UserError(
            "--format official needs the reference generator (base_channels 32, batch norm); "
            f"this one has base_channels {config.base_channels}, norm {config.norm}: "
            "use --format onnx or torchscript"
        ) from None


def check_against(candidate, generator: Generator, label: str = "export") -> dict[str, float]:
    """Max abs difference of ``candidate(batch)`` and ``generator(batch)`` on each of
    :data:`CHECK_SHAPES`; a difference above :data:`CHECK_TOLERANCE` is an error."""
    differences = {}
    for shape in CHECK_SHAPES:
        batch = check_batch(shape)
        with torch.no_grad():
            expected = generator(batch)
            got = candidate(batch)
        size = "x".join(str(side) for side in shape)
        if tuple(got.shape) != tuple(expected.shape):
            raise UserError(f"{label} returned shape {tuple(got.shape)} for input {size}")
        difference = float((got - expected).abs().max())
        differences[size] = difference
        print(f"check {size}: max |{label} - torch| = {difference:.3g}")
        if not difference < CHECK_TOLERANCE:
            raise UserError(
                f"the {label} output differs from PyTorch by {difference:.3g} at {size} "
                f"(tolerance {CHECK_TOLERANCE}): nothing was written; please report it"
            )
    return differences


def check_batch(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A reproducible low-light batch in [-1, 1]: a smooth gradient plus noise."""
    generator = torch.Generator().manual_seed(seed)
    height, width = shape[-2:]
    ramp = torch.linspace(0.0, 0.3, width).expand(height, width)
    noise = torch.rand(shape, generator=generator) * 0.2
    return (ramp + noise) * 2.0 - 1.0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tensor_spec(name: str) -> dict:
    # The generator does not clamp its output (see Generator): consumers clamp to [-1, 1].
    value_range = "[-1, 1]" if name == INPUT_NAME else "about [-1, 1], not clamped"
    return {
        "name": name,
        "shape": ["batch", 3, "height", "width"],
        "dtype": "float32",
        "channels": "RGB",
        "range": value_range,
    }


def _check_output_file(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise UserError(f"--out {out} is a directory: pass a file path, e.g. {out}/generator.onnx")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists: choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Raise these loggers to WARNING for the block (the CLI logs at INFO)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _first_line(error: Exception) -> str:
    """The error's first line, without a parenthesis that a quoted library message left open."""
    line = (str(error).strip().splitlines() or [""])[0]
    if line.count("(") > line.count(")"):
        line = line[: line.rindex("(")].rstrip()
    return line


def _require_module(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        raise UserError(f"{name} is not installed: {INSTALL_HINT}") from None

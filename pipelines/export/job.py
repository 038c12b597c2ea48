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

import dataclasses
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import torch

from enlightengan.checkpoint import load_official_generator
from enlightengan.generator import Generator
from pipelines.errors import UserError
from pipelines.export.spec import ExportJob, ImportOfficialJob
from pipelines.inference.graphs import (
    INPUT_NAME,
    OUTPUT_NAME,
    check_against,
    check_lines,
    export_onnx,
    export_torchscript,
    first_line,
    onnx_runner,
)
from pipelines.io.formats import GRAPH_NOTE
from pipelines.io.storage import StorageOptions, display_uri
from pipelines.options import Summary, storage_of

logger = logging.getLogger(__name__)


def run_export(job: ExportJob) -> Summary:
    """Write the export and its JSON sidecar; returns the sidecar's contents."""
    out = Path(job.output).expanduser().absolute()
    _check_output_file(out, job.overwrite)
    generator, resolved = load_source_generator(job.checkpoint, storage_of(job))
    if job.dry_run:
        return Summary(
            "export",
            {"dry_run": True, "checkpoint": display_uri(resolved)},
            text=f"dry run: would export {display_uri(resolved)} to {job.export_format} at {out}",
        )
    partial = out.parent / f".{out.stem}.partial{out.suffix}"
    differences: dict[str, float] | None = None
    lines: list[str] = []
    logger.info("exporting %s to %s...", display_uri(resolved), job.export_format)
    try:
        if job.export_format == "onnx":
            export_onnx(generator, partial, job.opset, job.exporter)
            candidate = onnx_runner(partial) if job.check else None
        elif job.export_format == "torchscript":
            export_torchscript(generator, partial)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=FutureWarning)
                candidate = torch.jit.load(str(partial), map_location="cpu")
        else:
            export_official(generator, partial)
            candidate = load_official_generator(partial, generator.config)
        if job.check and candidate is not None:
            label = "onnxruntime" if job.export_format == "onnx" else job.export_format
            differences = check_against(candidate, generator, label)
            lines += check_lines(differences, label)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    metadata = _sidecar(job, out, generator, resolved, differences)
    sidecar = out.with_name(out.name + ".json")
    sidecar.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    lines.append(f"wrote {out} ({metadata['bytes']} bytes, sha256 {metadata['sha256'][:12]}...)")
    lines.append(f"wrote {sidecar}")
    return Summary(
        "export", {"file": str(out), "sidecar": str(sidecar), **metadata}, text="\n".join(lines)
    )


def _sidecar(job: ExportJob, out: Path, generator, resolved: str, differences) -> dict:
    """The export's JSON sidecar: the file, its source, its generator, its inputs and outputs
    and the check's differences."""
    return {
        "created_by": "enlightengan export",
        "format": job.export_format,
        "file": out.name,
        "bytes": out.stat().st_size,
        "sha256": sha256_of(out),
        "source_checkpoint": display_uri(str(job.checkpoint)),
        "resolved_checkpoint": display_uri(resolved),
        "generator_config": dataclasses.asdict(generator.config),
        "opset": job.opset if job.export_format == "onnx" else None,
        "exporter": job.exporter if job.export_format == "onnx" else None,
        "torch_version": torch.__version__,
        "input": _tensor_spec(INPUT_NAME),
        "output": _tensor_spec(OUTPUT_NAME),
        "graph": None if job.export_format == "official" else GRAPH_NOTE,
        "check_max_abs_diff": differences,
    }


def run_import_official(job: ImportOfficialJob) -> Summary:
    """Write the authors' generator weights as a native checkpoint."""
    from enlightengan.checkpoint import CheckpointError, load_generator, save_checkpoint
    from enlightengan.config import EnlightenGANConfig

    weights = Path(job.weights).expanduser()
    out = Path(job.output).expanduser().absolute()
    if not weights.is_file():
        raise UserError(f"no weights file at {weights}: pass the authors' generator .pth")
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file: pass a directory for the checkpoint")
    if out.exists() and any(out.iterdir()) and not job.overwrite:
        raise UserError(f"{out} exists and is not empty: choose a new directory or --overwrite")
    config = EnlightenGANConfig()
    try:
        generator = load_official_generator(weights, config.generator)
    except CheckpointError as error:
        raise UserError(f"cannot import {weights}: {first_line(error)}") from None
    if job.dry_run:
        return Summary(
            "import-official",
            {"dry_run": True, "weights": str(weights)},
            text=f"dry run: {weights} holds the reference generator; would write {out}",
        )
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
    lines = []
    if job.check:
        differences = check_against(load_generator(out), generator, "checkpoint")
        lines += check_lines(differences, "checkpoint")
    lines.append(f"wrote checkpoint {out}: use it with `enlightengan enhance --checkpoint {out}`")
    return Summary(
        "import-official",
        {"checkpoint": str(out), "weights_sha256": sha256_of(weights)},
        text="\n".join(lines),
    )


def load_source_generator(uri: str, options: StorageOptions) -> tuple[Generator, str]:
    """The generator of the checkpoint at ``uri`` and where it was found (safe to print)."""
    from enlightengan.checkpoint import load_generator
    from pipelines.inference.checkpoints import load_checkpoint_files, staged_checkpoint

    found = load_checkpoint_files(uri, options)
    with staged_checkpoint(found.files) as directory:
        generator = load_generator(directory, map_location="cpu")
    return generator.eval(), found.description


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
        raise UserError(
            f"--output {out} is a directory: pass a file path, e.g. {out}/generator.onnx"
        )
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists: choose another --output or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)

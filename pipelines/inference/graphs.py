"""The generator as a static graph with dynamic batch, height and width: the module that
``enlightengan export`` writes as ONNX or TorchScript, the onnxruntime inference backend runs,
and the check that compares any such graph with PyTorch.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from enlightengan.generator import Generator, attention_map
from pipelines.errors import UserError

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "enhanced"
# Batch sizes and sides that are not multiples of 16, so the check exercises the in-graph
# padding and every dynamic axis.
CHECK_SHAPES = ((2, 3, 40, 60), (1, 3, 45, 70))
CHECK_TOLERANCE = 1e-4
TRACE_SHAPE = (1, 3, 64, 96)
# Their INFO lines (one per graph pass) would flood the CLI output.
NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")
INSTALL_HINT = "pip install 'enlightengan-ray[export]' (onnx, onnxruntime, onnxscript)"


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


def export_onnx(generator: Generator, path: Path, opset: int, exporter: str) -> None:
    """Write the :class:`PaddedGenerator` graph with dynamic batch, height and width."""
    require_module("onnx")
    if exporter == "dynamo":
        require_module("onnxscript")
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
        with torch.no_grad(), warnings.catch_warnings(), quiet_loggers(*NOISY_LOGGERS):
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
        summary = first_line(error)[:200]
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
    logger.info("onnx.checker: the graph is a valid ONNX model")
    try:
        import onnxruntime
    except ImportError:
        logger.warning("onnxruntime is not installed: outputs not compared (%s)", INSTALL_HINT)
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


def check_against(candidate, generator: Generator, label: str = "export") -> dict[str, float]:
    """Max abs difference of ``candidate(batch)`` and ``generator(batch)`` on each of
    :data:`CHECK_SHAPES` (see :func:`check_lines`); a difference above
    :data:`CHECK_TOLERANCE` is an error."""
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
        if not difference < CHECK_TOLERANCE:
            raise UserError(
                f"the {label} output differs from PyTorch by {difference:.3g} at {size} "
                f"(tolerance {CHECK_TOLERANCE}): nothing was written; please report it"
            )
    return differences


def check_lines(differences: dict[str, float], label: str) -> list[str]:
    """One line per checked size of :func:`check_against`'s differences."""
    return [
        f"check {size}: max |{label} - torch| = {difference:.3g}"
        for size, difference in differences.items()
    ]


def check_batch(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A reproducible low-light batch in [-1, 1]: a smooth gradient plus noise."""
    generator = torch.Generator().manual_seed(seed)
    height, width = shape[-2:]
    ramp = torch.linspace(0.0, 0.3, width).expand(height, width)
    noise = torch.rand(shape, generator=generator) * 0.2
    return (ramp + noise) * 2.0 - 1.0


@contextlib.contextmanager
def quiet_loggers(*names: str):
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


def first_line(error: Exception) -> str:
    """The error's first line, without a parenthesis that a quoted library message left open."""
    line = (str(error).strip().splitlines() or [""])[0]
    if line.count("(") > line.count(")"):
        line = line[: line.rindex("(")].rstrip()
    return line


def require_module(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        raise UserError(f"{name} is not installed: {INSTALL_HINT}") from None

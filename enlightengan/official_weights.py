"""The authors' released generator layout: import their weights, export ours to it.

Their checkpoints (e.g. ``200_net_G_A.pth``) were saved by PyTorch 0.3 from a DataParallel
wrapper: every key starts with ``module.`` and BatchNorm layers carry no
``num_batches_tracked``. The native generator uses the same module names, so converting is
renaming plus that buffer. Names and shapes are validated against the bundled reference list
``enlightengan/data/official_generator_state_dict.json`` (131 entries).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from enlightengan.config import GeneratorConfig
from enlightengan.generator import Generator
from enlightengan.serialization import (
    CheckpointError,
    load_weights_only,
    torch_bytes,
    write_atomic,
)

OFFICIAL_PREFIX = "module."
BATCHES_TRACKED = "num_batches_tracked"
REFERENCE_FILE = "official_generator_state_dict.json"
MAX_LISTED = 8


@functools.lru_cache(maxsize=1)
def reference_layout() -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(native name, shape) of every generator entry, in the authors' order."""
    text = importlib.resources.files("enlightengan").joinpath("data", REFERENCE_FILE).read_text()
    return tuple((name, tuple(shape)) for name, shape in json.loads(text))


def unwrap_module(module: nn.Module) -> nn.Module:
    """The network inside DDP / DataParallel (``.module``) and ``torch.compile`` (``_orig_mod``)."""
    while True:
        inner = getattr(module, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def official_state_dict(generator: nn.Module) -> dict[str, torch.Tensor]:
    """Export: the authors' layout (``module.`` prefix, no ``num_batches_tracked``), CPU tensors.

    Only the reference architecture (32 base channels, BatchNorm) has that layout; any other
    raises :class:`CheckpointError`.
    """
    native = unwrap_module(generator).state_dict()
    _check_against_reference(native, "this generator (export needs the reference architecture)")
    return {
        OFFICIAL_PREFIX + name: native[name].detach().to("cpu", copy=True)
        for name, _ in reference_layout()
        if not name.endswith(BATCHES_TRACKED)
    }


def import_official_state_dict(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Import: a state dict in the authors' layout -> the native generator's state dict.

    Strips ``module.`` (keys without it are accepted too), adds ``num_batches_tracked = 0``
    where missing (it only matters in training), and checks every name and shape against the
    reference list; a :class:`CheckpointError` lists what is missing, unexpected or misshapen.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"expected a state dict (mapping), got {type(state).__name__}")
    native: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len(OFFICIAL_PREFIX) :] if key.startswith(OFFICIAL_PREFIX) else key
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"entry {key!r} is a {type(value).__name__}, not a tensor")
        native[name] = value
    for name, _ in reference_layout():
        if name.endswith(BATCHES_TRACKED) and name not in native:
            native[name] = torch.tensor(0, dtype=torch.long)
    _check_against_reference(native, "the state dict")
    return {name: native[name] for name, _ in reference_layout()}


def load_official_generator(
    path: str | os.PathLike, config: GeneratorConfig | None = None
) -> Generator:
    """Build a generator (eval mode) from an authors' ``.pth`` file, read with weights_only.

    ``config`` defaults to the reference (BatchNorm, align_corners=True as PyTorch 0.3
    behaved); it may change settings that do not touch the weights, e.g. ``halve_above_width``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    state = load_weights_only(path, "cpu", str(path))
    generator = Generator(config or GeneratorConfig())
    try:
        generator.load_state_dict(import_official_state_dict(state), strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path} fits the reference generator, not the configured one ({error})"
        ) from error
    return generator.eval()


def save_official_generator(generator: nn.Module, path: str | os.PathLike) -> Path:
    """Write the generator's weights in the authors' layout to ``path`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, torch_bytes(official_state_dict(generator)))
    return path


def _check_against_reference(native: Mapping[str, torch.Tensor], what: str) -> None:
    expected = dict(reference_layout())
    missing = [name for name in expected if name not in native]
    unexpected = [name for name in native if name not in expected]
    misshapen = [
        f"{name} {tuple(native[name].shape)} (expected {expected[name]})"
        for name in expected
        if name in native and tuple(native[name].shape) != expected[name]
    ]
    if missing or unexpected or misshapen:
        problems = []
        for label, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", misshapen),
        ):
            if names:
                listed = ", ".join(names[:MAX_LISTED])
                more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
                problems.append(f"{len(names)} {label}: {listed}{more}")
        raise CheckpointError(
            f"{what} does not match the authors' generator layout: " + "; ".join(problems)
        )

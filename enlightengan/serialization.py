"""Safe, atomic reading and writing of torch files (shared by checkpoints and official weights).

Loading always goes through ``torch.load(weights_only=True)``: tensors, numbers, strings and
plain containers only, so a checkpoint from an untrusted bucket cannot run code.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint or weights file is missing, incomplete, damaged, unsafe or does not fit."""


def load_weights_only(source: Any, map_location: Any, description: str) -> Any:
    """``torch.load(weights_only=True)``; anything beyond tensors and containers is refused."""
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(
            f"refused to load {description}: not a readable weights-only torch file ({error})"
        ) from error


def torch_bytes(payload: Any) -> bytes:
    """The bytes ``torch.save`` writes for ``payload`` (zip format)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def fsync_directory(directory: Path) -> None:
    """Persist a directory's entries (the renames) where the platform allows it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)

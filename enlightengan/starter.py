"""The starter generator that ships inside the package: load it without a path.

One file, ``enlightengan/weights/starter.pt``: ``{"format", "config" (JSON text), "dtype",
"state_dict"}``, read with ``torch.load(weights_only=True)`` (tensors and plain containers,
never an arbitrary pickle) and checked against a pinned sha256. An optional second file,
``weights/starter-discriminators.pt``, holds the global and patch discriminators that trained
it in the same way (``"state_dicts": {"global_d": ..., "patch_d": ...}``), for fine-tuning. Its model card,
``weights/starter.md``, says how it was trained (data, command, steps, time, machine), how it
scores and where it falls short.

    from enlightengan.starter import load_starter_generator
    generator = load_starter_generator()          # fp32, eval mode, on the CPU
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import torch

from enlightengan.config import EnlightenGANConfig
from enlightengan.discriminator import build_discriminators
from enlightengan.generator import Generator
from enlightengan.serialization import CheckpointError, torch_bytes, write_atomic
from enlightengan.shipped_weights import (
    STARTER_NAME,
    STARTER_SHA256,
    StarterWeightsMissing,
    model_card_path,
    starter_discriminator_bytes,
    starter_discriminators_path,
    starter_weights_path,
    verified_bytes,
)

FORMAT_NAME = "enlightengan-starter-weights"
DISCRIMINATORS_FORMAT_NAME = "enlightengan-starter-discriminators"
DISCRIMINATOR_NAMES = ("global_d", "patch_d")
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _stored_state(module: torch.nn.Module, storage_dtype: str) -> dict[str, torch.Tensor]:
    """CPU copies of a module's state, floating-point entries as ``storage_dtype``."""
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}")
    return {
        name: value.detach().cpu().to(STORAGE_DTYPES[storage_dtype])
        if value.is_floating_point()
        else value.detach().cpu()
        for name, value in module.state_dict().items()
    }


def _as_float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        name: value.float() if value.is_floating_point() else value for name, value in state.items()
    }


def weights_bytes(
    generator: Generator, config: EnlightenGANConfig, storage_dtype: str = "float16"
) -> bytes:
    """Serialise a generator and its config as one starter-format file.

    Floating-point parameters and buffers are stored as ``storage_dtype``; BatchNorm's integer
    counters stay as they are. Loading casts back to float32.
    """
    state = _stored_state(generator, storage_dtype)
    return torch_bytes(
        {
            "format": FORMAT_NAME,
            "config": config.to_json(),
            "dtype": storage_dtype,
            "state_dict": state,
        }
    )


def save_weights(
    path: str | os.PathLike,
    generator: Generator,
    config: EnlightenGANConfig,
    storage_dtype: str = "float16",
) -> str:
    """Write the file atomically; returns its sha256 (to pin in :data:`STARTER_SHA256`)."""
    data = weights_bytes(generator, config, storage_dtype)
    write_atomic(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def load_weights(
    path: str | os.PathLike, expected_sha256: str | None = None
) -> tuple[Generator, EnlightenGANConfig]:
    """Rebuild the generator (fp32, eval mode, CPU) and its config from a starter-format file."""
    try:
        data = verified_bytes(path, expected_sha256)
    except StarterWeightsMissing as error:
        raise CheckpointError(str(error)) from None
    return weights_from_bytes(data, str(path))


def weights_from_bytes(
    data: bytes, source: str = "starter weights"
) -> tuple[Generator, EnlightenGANConfig]:
    """:func:`load_weights` for bytes already in memory."""
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{source} is not an EnlightenGAN starter weights file")
    config = EnlightenGANConfig.from_dict(json.loads(payload["config"])).validate()
    generator = Generator(config.generator)
    generator.load_state_dict(_as_float32(payload["state_dict"]))
    return generator.eval(), config


def discriminator_weights_bytes(
    global_d: torch.nn.Module,
    patch_d: torch.nn.Module,
    config: EnlightenGANConfig,
    storage_dtype: str = "float16",
) -> bytes:
    """Serialise the two discriminators and the config that built them as one file (the
    discriminators' half of a shipped model, beside its generator's :func:`weights_bytes`)."""
    states = {
        name: _stored_state(module, storage_dtype)
        for name, module in zip(DISCRIMINATOR_NAMES, (global_d, patch_d), strict=True)
    }
    return torch_bytes(
        {
            "format": DISCRIMINATORS_FORMAT_NAME,
            "config": config.to_json(),
            "dtype": storage_dtype,
            "state_dicts": states,
        }
    )


def save_discriminator_weights(
    path: str | os.PathLike,
    global_d: torch.nn.Module,
    patch_d: torch.nn.Module,
    config: EnlightenGANConfig,
    storage_dtype: str = "float16",
) -> str:
    """Write the discriminators' file atomically; returns its sha256 (to pin in
    :data:`enlightengan.shipped_weights.STARTER_DISCRIMINATORS_SHA256`)."""
    data = discriminator_weights_bytes(global_d, patch_d, config, storage_dtype)
    write_atomic(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def load_discriminator_weights(
    path: str | os.PathLike, expected_sha256: str | None = None
) -> tuple[dict[str, dict[str, torch.Tensor]], EnlightenGANConfig]:
    """The float32 state dicts ``{"global_d": ..., "patch_d": ...}`` and the config of a
    discriminators file, checked against ``expected_sha256`` (when given)."""
    try:
        data = verified_bytes(path, expected_sha256)
    except StarterWeightsMissing as error:
        raise CheckpointError(str(error)) from None
    return discriminators_from_bytes(data, str(path))


def discriminators_from_bytes(
    data: bytes, source: str = "starter discriminators"
) -> tuple[dict[str, dict[str, torch.Tensor]], EnlightenGANConfig]:
    """:func:`load_discriminator_weights` for bytes already in memory; the states are checked
    against discriminators built from the file's config."""
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != DISCRIMINATORS_FORMAT_NAME:
        raise CheckpointError(f"{source} is not an EnlightenGAN discriminators file")
    config = EnlightenGANConfig.from_dict(json.loads(payload["config"])).validate()
    states = {name: _as_float32(payload["state_dicts"][name]) for name in DISCRIMINATOR_NAMES}
    built = build_discriminators(config.discriminator)
    for name, module in zip(DISCRIMINATOR_NAMES, built, strict=True):
        try:
            module.load_state_dict(states[name])
        except RuntimeError as error:
            raise CheckpointError(f"{source}: {name} does not fit its config ({error})") from None
    return states, config


def load_starter_discriminators() -> tuple[dict[str, dict[str, torch.Tensor]], str] | None:
    """The shipped starter's discriminator states and the file's sha256, or None when this
    release ships none (see :func:`enlightengan.shipped_weights.starter_discriminator_bytes`)."""
    try:
        data = starter_discriminator_bytes()
    except StarterWeightsMissing as error:
        raise CheckpointError(str(error)) from None
    if data is None:
        return None
    states, _ = discriminators_from_bytes(data, str(starter_discriminators_path()))
    return states, hashlib.sha256(data).hexdigest()


def load_starter_generator() -> Generator:
    """The shipped starter generator: fp32, eval mode, on the CPU."""
    return load_starter()[0]


def load_starter() -> tuple[Generator, EnlightenGANConfig]:
    """The shipped starter generator and the config that trained it."""
    return load_weights(starter_weights_path(), STARTER_SHA256)


def write_starter_checkpoint(directory: str | os.PathLike, data: bytes | None = None) -> Path:
    """Materialise the starter model as a native checkpoint directory (generator only), for
    code that takes checkpoint directories. ``data``: a starter-format file's bytes already
    checked by the caller (default: the shipped file, checked here)."""
    from enlightengan.checkpoint import save_checkpoint

    generator, config = load_starter() if data is None else weights_from_bytes(data)
    return save_checkpoint(
        directory,
        config=config,
        networks={"generator": generator},
        trainer_state={"source": "enlightengan starter weights"},
    )


__all__ = [
    "STARTER_NAME",
    "discriminator_weights_bytes",
    "discriminators_from_bytes",
    "load_discriminator_weights",
    "load_starter_discriminators",
    "save_discriminator_weights",
    "load_starter",
    "load_starter_generator",
    "load_weights",
    "model_card_path",
    "save_weights",
    "starter_weights_path",
    "weights_bytes",
    "weights_from_bytes",
    "write_starter_checkpoint",
]

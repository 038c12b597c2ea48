"""Checkpoints: weights, optimiser and schedule state, trainer state and the config that built them.

A checkpoint is a directory of plain files::

    config.json          the resolved EnlightenGANConfig (rebuilds the exact networks)
    generator.pt         generator state dict
    discriminators.pt    {"global_d": state dict, "patch_d": state dict} (when saved)
    optimizers.pt        {"optimizers": {...}, "schedulers": {...}} state dicts (when saved)
    trainer_state.json   step, epoch and anything else JSON-serialisable
    rng.pt               random generator states (tensors)
    checkpoint.json      the index, written LAST: format version, every file's sha256 and size

Each file is written atomically (temporary file, then ``os.replace``) and the index goes last,
so a directory without a valid index is an interrupted or foreign write and never loads.
Every ``.pt`` file is read with ``torch.load(weights_only=True)``: tensors and plain containers
only, never an arbitrary pickle.

The networks' floating-point weights may be stored in float16 or bfloat16
(``save_checkpoint(storage_dtype=...)``), which halves the files of a model that ships inside
the package; loading always returns float32 tensors, so nothing else knows how a checkpoint was
stored. The shipped starter model (:mod:`enlightengan.starter`) is such a checkpoint.

The official layout (the authors' released generator weights) is handled by
:mod:`enlightengan.official_weights` and re-exported here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from enlightengan.config import EnlightenGANConfig
from enlightengan.generator import Generator
from enlightengan.official_weights import (
    import_official_state_dict,
    load_official_generator,
    official_state_dict,
    save_official_generator,
    unwrap_module,
)
from enlightengan.serialization import (
    CheckpointError,
    fsync_directory,
    load_weights_only,
    torch_bytes,
    write_atomic,
)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "find_latest_checkpoint",
    "import_official_state_dict",
    "is_complete_checkpoint",
    "latest_checkpoint_in",
    "load_checkpoint",
    "load_generator",
    "load_official_generator",
    "official_state_dict",
    "save_checkpoint",
    "save_official_generator",
]

FORMAT_NAME = "enlightengan-checkpoint"
FORMAT_VERSION = 1
INDEX_FILE = "checkpoint.json"
CONFIG_FILE = "config.json"
GENERATOR_FILE = "generator.pt"
DISCRIMINATORS_FILE = "discriminators.pt"
OPTIMIZERS_FILE = "optimizers.pt"
TRAINER_STATE_FILE = "trainer_state.json"
RNG_FILE = "rng.pt"
DATA_FILES = (
    CONFIG_FILE,
    GENERATOR_FILE,
    DISCRIMINATORS_FILE,
    OPTIMIZERS_FILE,
    TRAINER_STATE_FILE,
    RNG_FILE,
)
DISCRIMINATOR_NAMES = ("global_d", "patch_d")
NETWORK_NAMES = ("generator", *DISCRIMINATOR_NAMES)
SEARCH_DEPTH = 3
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Checkpoint:
    """Everything :func:`load_checkpoint` read back, tensors already on ``map_location``."""

    directory: Path
    config: EnlightenGANConfig
    network_states: dict[str, dict[str, torch.Tensor]]
    optimizer_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    scheduler_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    trainer_state: dict[str, Any] = field(default_factory=dict)
    rng_state: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        """The trainer's step counter, -1 when the trainer stored none."""
        return int(self.trainer_state.get("step", -1))

    def build_generator(self) -> Generator:
        """A generator in eval mode with the stored weights (see :func:`load_generator`)."""
        return _generator_from_state(self.config, self.network_states["generator"], self.directory)


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    config: EnlightenGANConfig,
    networks: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    schedulers: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    rng_state: dict[str, Any] | None = None,
    storage_dtype: str = "float32",
) -> Path:
    """Write a complete checkpoint into ``directory`` (created if needed) and return its path.

    ``networks`` needs ``"generator"`` and may hold ``"global_d"`` and ``"patch_d"``; DDP,
    DataParallel and ``torch.compile`` wrappers are unwrapped. Tensors are copied to the CPU.
    ``storage_dtype`` (``float32``, ``float16`` or ``bfloat16``) is how the networks'
    floating-point weights and buffers are stored: half precision makes a shipped model half
    the size, and loading casts back to float32. Integer buffers (BatchNorm's counters),
    optimiser and RNG state are stored as they are.
    An existing checkpoint in ``directory`` is first made incomplete (its index removed), so a
    crash mid-way never leaves a directory that mixes two checkpoints and still loads.
    """
    unknown = set(networks) - set(NETWORK_NAMES)
    if "generator" not in networks or unknown:
        raise ValueError(
            f"networks must hold 'generator' and optionally {DISCRIMINATOR_NAMES}; "
            f"got {sorted(networks)}"
        )
    generator = unwrap_module(networks["generator"])
    built_from = getattr(generator, "config", None)
    if built_from is not None and built_from != config.generator:
        raise ValueError(
            "the generator was built from a different GeneratorConfig than config.generator: "
            f"{built_from} vs {config.generator}"
        )
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}")
    config.validate()
    try:
        trainer_json = json.dumps(trainer_state or {}, sort_keys=True, indent=2)
    except (TypeError, ValueError) as error:
        raise ValueError(f"trainer_state must be JSON-serialisable: {error}") from error

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / INDEX_FILE).unlink(missing_ok=True)

    payloads: dict[str, bytes] = {
        CONFIG_FILE: config.to_json().encode(),
        GENERATOR_FILE: torch_bytes(stored_state(generator.state_dict(), storage_dtype)),
        TRAINER_STATE_FILE: trainer_json.encode(),
    }
    discriminators = {
        name: stored_state(unwrap_module(networks[name]).state_dict(), storage_dtype)
        for name in DISCRIMINATOR_NAMES
        if name in networks
    }
    if discriminators:
        payloads[DISCRIMINATORS_FILE] = torch_bytes(discriminators)
    if optimizers or schedulers:
        states = {
            "optimizers": {
                name: _cpu_copy(opt.state_dict()) for name, opt in (optimizers or {}).items()
            },
            "schedulers": {
                name: _cpu_copy(s.state_dict()) for name, s in (schedulers or {}).items()
            },
        }
        payloads[OPTIMIZERS_FILE] = torch_bytes(states)
    if rng_state:
        payloads[RNG_FILE] = torch_bytes(_cpu_copy(rng_state))

    for stale in set(DATA_FILES) - set(payloads):
        (directory / stale).unlink(missing_ok=True)
    files = {}
    for name, data in payloads.items():
        write_atomic(directory / name, data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    index = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "networks": sorted(["generator", *discriminators]),
        "files": files,
    }
    write_atomic(directory / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True).encode())
    fsync_directory(directory)
    return directory


def is_complete_checkpoint(directory: str | os.PathLike, *, verify_hashes: bool = False) -> bool:
    """True when ``directory`` has a valid index and every listed file with the right size.

    Hashes are only checked with ``verify_hashes`` (reading every byte); :func:`load_checkpoint`
    and :func:`load_generator` always check them.
    """
    try:
        index = _read_index(Path(directory))
        for name in index["files"]:
            _read_listed_file(Path(directory), index, name, verify=verify_hashes)
    except CheckpointError:
        return False
    return True


def load_checkpoint(directory: str | os.PathLike, map_location: Any = "cpu") -> Checkpoint:
    """Read and verify a whole checkpoint; raises :class:`CheckpointError` saying what to do."""
    directory = Path(directory)
    index = _read_index(directory)
    config = _read_config(directory, index)
    network_states = _load_network_states(directory, index, map_location)
    optimizer_states: dict[str, Any] = {}
    scheduler_states: dict[str, Any] = {}
    if OPTIMIZERS_FILE in index["files"]:
        states = _load_torch_file(directory, index, OPTIMIZERS_FILE, map_location)
        optimizer_states = dict(states.get("optimizers", {}))
        scheduler_states = dict(states.get("schedulers", {}))
    rng_state = {}
    if RNG_FILE in index["files"]:
        rng_state = dict(_load_torch_file(directory, index, RNG_FILE, "cpu"))
    return Checkpoint(
        directory=directory,
        config=config,
        network_states=network_states,
        optimizer_states=optimizer_states,
        scheduler_states=scheduler_states,
        trainer_state=_read_trainer_state(directory, index),
        rng_state=rng_state,
    )


def load_networks(directory: str | os.PathLike, map_location: Any = "cpu") -> Checkpoint:
    """The config and the networks' weights (generator, and the discriminators where stored)
    of a checkpoint, as a :class:`Checkpoint` without optimiser, trainer or RNG state.

    Reads only the index, config, generator and discriminators files, so it also works on a
    copy holding just those (a fine-tune's source fetched from a bucket).
    """
    directory = Path(directory)
    index = _read_index(directory)
    config = _read_config(directory, index)
    network_states = _load_network_states(directory, index, map_location)
    return Checkpoint(directory=directory, config=config, network_states=network_states)


def load_generator(directory: str | os.PathLike, map_location: Any = "cpu") -> Generator:
    """Build the generator from the stored config and weights, in eval mode.

    Reads only the index, config and generator files. A ``sync_batch`` generator is rebuilt
    with plain BatchNorm (identical state dict; eval mode never synchronises), so it runs on
    any device without a process group.
    """
    directory = Path(directory)
    index = _read_index(directory)
    config = _read_config(directory, index)
    state = as_float32(_load_torch_file(directory, index, GENERATOR_FILE, map_location))
    generator = _generator_from_state(config, state, directory)
    if isinstance(map_location, str | torch.device):
        generator = generator.to(map_location)
    return generator


def find_latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The complete checkpoint under ``root`` with the highest trainer step (tie: newest).

    ``root`` may be a checkpoint itself or hold checkpoints up to three levels down (Ray
    Train's ``<storage>/<run>/checkpoint_<timestamp>/``). Incomplete ones are ignored; None
    when there is no complete checkpoint. The rule is :func:`latest_checkpoint_in`'s.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    files: dict[str, tuple[int, float]] = {}
    for directory in _checkpoint_directories(root, SEARCH_DEPTH):
        if not (directory / INDEX_FILE).is_file():
            continue
        relative = directory.relative_to(root).as_posix()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_file():
                    info = entry.stat()
                    name = entry.name if relative == "." else f"{relative}/{entry.name}"
                    files[name] = (info.st_size, info.st_mtime)
    found = latest_checkpoint_in(files, lambda name: (root / name).read_bytes())
    if found is None:
        return None
    return root if found == "" else root / found


def latest_checkpoint_in(
    files: Mapping[str, tuple[int, float]], read: Callable[[str], bytes]
) -> str | None:
    """The latest complete checkpoint in a listed tree, wherever the tree is stored.

    ``files`` maps each file's ``/``-separated path under the root to its (size, mtime);
    ``read(path)`` returns a listed file's bytes (only indexes and trainer states are read).
    A checkpoint is a directory whose index is valid and lists files that are all present
    with the sizes it records; it may be the root (``""``) or lie up to three levels below,
    and nothing inside a checkpoint is searched. The winner has the highest trainer step, then
    the newest index, then the greatest path. Returns its path (``""`` for the root) or None.
    """
    directories = sorted(
        path[: -len(INDEX_FILE)].rstrip("/")
        for path in files
        if (path == INDEX_FILE or path.endswith("/" + INDEX_FILE))
        and path.count("/") <= SEARCH_DEPTH
    )
    best: tuple[int, float, str] | None = None
    for directory in directories:
        if any(_is_below(directory, other) for other in directories):
            continue
        prefix = f"{directory}/" if directory else ""
        try:
            index = _validate_index(json.loads(read(prefix + INDEX_FILE)), prefix + INDEX_FILE)
            listed = index["files"]
            if any(
                not isinstance(entry, dict)
                or files.get(prefix + name, (None,))[0] != entry.get("bytes")
                for name, entry in listed.items()
            ):
                continue
            step = -1
            if TRAINER_STATE_FILE in listed:
                step = int(json.loads(read(prefix + TRAINER_STATE_FILE)).get("step", -1))
        except (CheckpointError, OSError, ValueError, TypeError, AttributeError):
            continue
        key = (step, files[prefix + INDEX_FILE][1], directory)
        if best is None or key > best:
            best = key
    return best[2] if best else None


def _is_below(directory: str, other: str) -> bool:
    """True when ``directory`` lies inside checkpoint ``other`` (``""`` is the root)."""
    if directory == other:
        return False
    return other == "" or directory.startswith(other + "/")


def _checkpoint_directories(root: Path, depth: int) -> Iterator[Path]:
    """``root`` and its subdirectories up to ``depth`` levels; never descends into a checkpoint."""
    yield root
    if depth == 0 or (root / INDEX_FILE).exists():
        return
    try:
        children = sorted(entry.path for entry in os.scandir(root) if entry.is_dir())
    except OSError:
        return
    for child in children:
        yield from _checkpoint_directories(Path(child), depth - 1)


def _generator_from_state(
    config: EnlightenGANConfig, state: dict[str, torch.Tensor], directory: Path
) -> Generator:
    generator_config = config.generator
    if generator_config.norm == "sync_batch":
        generator_config = replace(generator_config, norm="batch")
    generator = Generator(generator_config)
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"the generator weights in {directory} do not fit the architecture its config.json "
            f"describes (wrong or edited checkpoint): {error}"
        ) from error
    return generator.eval()


def _read_index(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise CheckpointError(
            f"no checkpoint directory at {directory}: pass a directory written by save_checkpoint"
        )
    index_path = directory / INDEX_FILE
    if not index_path.is_file():
        raise CheckpointError(
            f"{directory} has no {INDEX_FILE}: it is not a checkpoint, or writing it was "
            "interrupted; use find_latest_checkpoint on the run directory to pick a complete one"
        )
    try:
        index = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{index_path} is unreadable ({error}); the checkpoint is damaged"
        ) from error
    return _validate_index(index, index_path)


def _validate_index(index: Any, index_path: str | os.PathLike) -> dict[str, Any]:
    """``index`` (parsed ``checkpoint.json``) when it is one this code reads, else an error."""
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{index_path} is not an EnlightenGAN checkpoint index")
    version = index.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{index_path} has checkpoint format version {version!r}; this code reads up to "
            f"{FORMAT_VERSION}: upgrade enlightengan"
        )
    files = index.get("files")
    if not isinstance(files, dict) or CONFIG_FILE not in files or GENERATOR_FILE not in files:
        raise CheckpointError(f"{index_path} lists no config and generator: damaged checkpoint")
    foreign = set(files) - set(DATA_FILES)
    if foreign:
        raise CheckpointError(f"{index_path} lists unexpected files {sorted(foreign)}")
    return index


def _read_listed_file(
    directory: Path, index: dict[str, Any], name: str, *, verify: bool = True
) -> bytes:
    entry = index["files"].get(name)
    if not isinstance(entry, dict):
        raise CheckpointError(f"{directory}/{INDEX_FILE} does not list {name}")
    path = directory / name
    try:
        size = path.stat().st_size
    except OSError as error:
        raise CheckpointError(f"{path} is missing: incomplete checkpoint") from error
    if size != entry.get("bytes"):
        raise CheckpointError(
            f"{path} has {size} bytes, the index says {entry.get('bytes')}: damaged checkpoint"
        )
    if not verify:
        return b""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise CheckpointError(f"{path} does not match its sha256 in the index: damaged checkpoint")
    return data


def _read_config(directory: Path, index: dict[str, Any]) -> EnlightenGANConfig:
    data = _read_listed_file(directory, index, CONFIG_FILE)
    try:
        return EnlightenGANConfig.from_json(data.decode()).validate()
    except (UnicodeDecodeError, ValueError, TypeError) as error:
        raise CheckpointError(
            f"{directory}/{CONFIG_FILE} does not describe a valid config ({error}); it may come "
            "from a different enlightengan version"
        ) from error


def _read_trainer_state(directory: Path, index: dict[str, Any]) -> dict[str, Any]:
    if TRAINER_STATE_FILE not in index["files"]:
        return {}
    data = _read_listed_file(directory, index, TRAINER_STATE_FILE)
    try:
        state = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{directory}/{TRAINER_STATE_FILE} is not JSON: {error}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{directory}/{TRAINER_STATE_FILE} must hold a JSON object")
    return state


def _load_network_states(
    directory: Path, index: dict[str, Any], map_location: Any
) -> dict[str, dict[str, torch.Tensor]]:
    """The generator's and (where stored) the discriminators' state dicts, in float32."""
    states = {"generator": _load_torch_file(directory, index, GENERATOR_FILE, map_location)}
    if DISCRIMINATORS_FILE in index["files"]:
        states.update(_load_torch_file(directory, index, DISCRIMINATORS_FILE, map_location))
    return {name: as_float32(state) for name, state in states.items()}


def stored_state(state: Mapping[str, torch.Tensor], storage_dtype: str) -> dict[str, torch.Tensor]:
    """Detached CPU copies of a network's state dict, floating-point entries as
    ``storage_dtype`` (a :data:`STORAGE_DTYPES` name), integer ones as they are."""
    dtype = STORAGE_DTYPES[storage_dtype]
    return {
        name: value.detach().to(
            "cpu", dtype=dtype if value.is_floating_point() else value.dtype, copy=True
        )
        for name, value in state.items()
    }


def as_float32(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A network's state dict with its floating-point entries in float32, whatever stored them."""
    return {
        name: value.float() if value.is_floating_point() else value for name, value in state.items()
    }


def _load_torch_file(directory: Path, index: dict[str, Any], name: str, map_location: Any) -> Any:
    data = _read_listed_file(directory, index, name)
    return load_weights_only(io.BytesIO(data), map_location, f"{directory}/{name}")


def _cpu_copy(value: Any) -> Any:
    """Detached CPU copies of every tensor in nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu_copy(item) for item in value)
    return value

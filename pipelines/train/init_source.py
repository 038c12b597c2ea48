"""``enlightengan train --init-from SOURCE``: where a fine-tune run's starting weights come from.

SOURCE is ``starter`` (the model shipped in the package), a checkpoint directory or training
run (its latest complete checkpoint; local or ``s3://``, found as ``--checkpoint`` is
everywhere else), or a ``.pth`` generator file in the authors' layout (as ``import-official``
reads it). The driver reads and checks it once, then writes the starting weights into the run
as a checkpoint at step 0 (``<run>/init_from/``, :data:`INIT_CHECKPOINT`); the workers load
that when the run has no newer checkpoint, so a resumed run never reads the source again and
every worker, on any node, reads the same bytes from the run's own storage.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import UserError
from pipelines.io import storage
from pipelines.options import STARTER_NAME

INIT_CHECKPOINT = "init_from"
OFFICIAL_SUFFIXES = (".pth",)
INDEX_FILE = "checkpoint.json"


@dataclass(frozen=True)
class StoredInit:
    """A run's starting checkpoint, already written: its config and what it records."""

    config: Any
    record: dict


def is_official_weights(uri: str) -> bool:
    """A SOURCE that names one file in the authors' layout (by its extension)."""
    return uri.lower().endswith(OFFICIAL_SUFFIXES)


def resolve_source(uri: str, options: storage.StorageOptions | None = None):
    """Read and check the model at ``uri``: an :class:`enlightengan.finetune.InitSource`.
    Raises one ``UserError`` when it cannot be read or is not a model."""
    from enlightengan import finetune
    from enlightengan.serialization import CheckpointError

    shown = storage.display_uri(uri)
    try:
        if uri == STARTER_NAME:
            return finetune.starter_source()
        if is_official_weights(uri):
            return finetune.official_source(_read_file(uri, options), shown)
        return _checkpoint_source(uri, shown, options)
    except CheckpointError as error:
        raise UserError(f"--init-from {shown}: {str(error).splitlines()[0]}") from None


def _read_file(uri: str, options) -> bytes:
    try:
        return storage.read_bytes(storage.resolve(uri, options))
    except FileNotFoundError:
        raise UserError(
            f"--init-from {storage.display_uri(uri)}: no such file (pass the authors' generator "
            "weights .pth, a checkpoint, a training run or 'starter')"
        ) from None


def _checkpoint_source(uri: str, shown: str, options):
    """A checkpoint directory or training run, discriminators included where it has them."""

    from enlightengan.checkpoint import load_networks
    from enlightengan.finetune import checkpoint_source
    from pipelines.inference.checkpoints import load_checkpoint_files, staged_checkpoint

    found = load_checkpoint_files(uri, options, with_discriminators=True)
    with staged_checkpoint(found.files) as directory:
        # The networks only: the copy holds no optimiser, trainer or RNG state (nor needs it).
        checkpoint = load_networks(directory)
    index = json.loads(found.files[INDEX_FILE])
    return checkpoint_source(checkpoint, shown, index, storage.display_uri(found.description))


def stored_init(run: storage.Location) -> StoredInit | None:
    """The starting checkpoint a run already holds (complete: its index is written last), or
    None. Only its config and trainer state are read."""
    from enlightengan.config import EnlightenGANConfig

    folder = run.child(INIT_CHECKPOINT)
    if not storage.exists(folder.child(INDEX_FILE)):
        return None
    config = EnlightenGANConfig.from_json(storage.read_bytes(folder.child("config.json")).decode())
    state = json.loads(storage.read_bytes(folder.child("trainer_state.json")))
    return StoredInit(config, dict(state.get("init_from") or {}))


def write_init_checkpoint(run: storage.Location, config, source, record: dict) -> None:
    """Write the starting weights into ``<run>/init_from/`` (local or S3), index last."""
    from enlightengan.finetune import save_init_checkpoint

    with tempfile.TemporaryDirectory(prefix="enlightengan-init-") as staging:
        target = Path(staging) / INIT_CHECKPOINT
        directory = save_init_checkpoint(target, config, source, record)
        folder = run.child(INIT_CHECKPOINT)
        names = sorted(path.name for path in directory.iterdir() if path.name != INDEX_FILE)
        for name in [*names, INDEX_FILE]:
            storage.write_bytes(folder.child(name), (directory / name).read_bytes())


def given_settings(config_file: str | None, options=None) -> dict:
    """The partial config a ``--model-config`` file holds (empty without one)."""
    if not config_file:
        return {}
    try:
        data = json.loads(storage.read_bytes(storage.resolve(config_file, options)).decode())
    except FileNotFoundError:
        raise UserError(f"--model-config {config_file}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"--model-config {config_file}: not JSON ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"--model-config {config_file}: expected a JSON object")
    return data

"""Where a generator comes from, for every job that runs one: a checkpoint directory, a training
run root (its latest complete checkpoint) or the starter model, local or ``s3://``.

The choice of checkpoint is :func:`enlightengan.checkpoint.latest_checkpoint_in`, the same rule
for a local folder and a bucket; this module only lists and reads remote trees for it. The files
then travel to Ray actors through the object store as a :class:`SharedCheckpoint`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.options import STARTER_NAME

# What the actors need to rebuild the generator; optimiser and discriminator state stay behind.
CHECKPOINT_FILES_FOR_INFERENCE = ("checkpoint.json", "config.json", "generator.pt")
DISCRIMINATORS_FILE = "discriminators.pt"


@contextlib.contextmanager
def staged_checkpoint(files: dict[str, bytes]) -> Iterator[Path]:
    """Checkpoint files received through the object store, written into a local temporary
    directory for the block (nothing assumes a disk shared with the driver) and removed after
    it. Whatever the block builds from them (a generator, an onnxruntime session) outlives the
    files."""
    directory = Path(tempfile.mkdtemp(prefix="enlightengan-checkpoint-"))
    try:
        for name, data in files.items():
            (directory / name).write_bytes(data)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class SharedCheckpoint:
    """The generator's files (``{name: bytes}``) put once into Ray's object store, for the
    actors that run it (:class:`~pipelines.inference.stages.EnhanceActor`).

    The reference travels inside this small value, so the actors' constructor arguments stay
    inline and nothing is copied per actor. The driver owns the object and keeps this value for
    the whole run, so an actor that Ray restarts mid-run reads the files again. (A named holder
    actor did this before, at the cost of one more worker process starting beside the actor
    pool, which made every run's first output later on a small machine.)"""

    ref: Any

    @classmethod
    def put(cls, files: dict[str, bytes]) -> SharedCheckpoint:
        import ray

        return cls(ray.put(files))

    def files(self) -> dict[str, bytes]:
        import ray

        return ray.get(self.ref)


@dataclass(frozen=True)
class CheckpointFiles:
    """The generator's checkpoint files in memory, validated, ready for the object store."""

    files: dict[str, bytes]
    description: str


def load_checkpoint_files(
    uri: str, options=None, with_discriminators: bool = False
) -> CheckpointFiles:
    """Find the checkpoint at ``uri`` (a checkpoint directory or a training run root holding
    ``checkpoint_*`` directories up to three levels down; local or ``s3://``), read the files
    inference needs and load the generator once to prove they fit (the shipped starter model's
    files are proven by its pinned index instead). ``with_discriminators``: also read the
    discriminators' file where the checkpoint has one (for fine-tuning). Raises one
    ``UserError`` before any image work when anything is wrong."""
    if uri is None or uri == STARTER_NAME:
        return _starter_checkpoint_files(with_discriminators)
    from enlightengan.checkpoint import CheckpointError, find_latest_checkpoint, load_generator
    from pipelines.errors import UserError
    from pipelines.io.storage import resolve

    location = resolve(uri, options)
    try:
        if location.is_local:
            root = Path(location.path)
            if not root.exists():
                raise UserError(f"checkpoint {uri} does not exist")
            found = find_latest_checkpoint(root)
            directory, description = found, str(found)
        else:
            found, description = _find_remote_checkpoint(location)
            directory = None
        if found is None:
            raise UserError(
                f"no complete EnlightenGAN checkpoint in or under {uri}: pass a checkpoint "
                "directory (it holds checkpoint.json) or the training run's output folder"
            )

        def read(name: str) -> bytes:
            if directory is not None:
                return (directory / name).read_bytes()
            return _read_remote(location.filesystem, f"{found}/{name}")

        files = {name: read(name) for name in CHECKPOINT_FILES_FOR_INFERENCE}
        if with_discriminators and DISCRIMINATORS_FILE in _listed_files(files):
            files[DISCRIMINATORS_FILE] = read(DISCRIMINATORS_FILE)
        with staged_checkpoint(files) as directory:
            load_generator(directory, map_location="cpu")
    except CheckpointError as error:
        raise UserError(f"checkpoint {uri} is not usable: {error}") from None
    except OSError as error:
        raise UserError(f"cannot read checkpoint {uri}: {error}") from None
    return CheckpointFiles(files, description)


def _listed_files(files: dict[str, bytes]) -> dict:
    """The files a checkpoint's index lists (empty when the index is not a JSON object)."""
    try:
        index = json.loads(files["checkpoint.json"])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    listed = index.get("files") if isinstance(index, dict) else None
    return listed if isinstance(listed, dict) else {}


def _starter_checkpoint_files(with_discriminators: bool = False) -> CheckpointFiles:
    """The starter checkpoint shipped inside the package: the same files as any checkpoint's,
    checked against the pinned index's sha256 without torch, which keeps torch's import off
    the driver of a default run (the actors load the model anyway)."""
    from enlightengan.shipped_weights import (
        StarterWeightsMissing,
        model_card_path,
        starter_checkpoint_files,
    )
    from pipelines.errors import UserError

    names = CHECKPOINT_FILES_FOR_INFERENCE
    if with_discriminators:
        names = (*names, DISCRIMINATORS_FILE)
    try:
        files = starter_checkpoint_files(names)
    except (StarterWeightsMissing, OSError) as error:
        raise UserError(f"the shipped starter model cannot be loaded: {error}") from None
    description = f"the shipped starter model (model card: {model_card_path()})"
    return CheckpointFiles(files, description)


def _read_remote(filesystem, path: str) -> bytes:
    with filesystem.open_input_file(path) as stream:
        return stream.read()


def _find_remote_checkpoint(location) -> tuple[str | None, str]:
    """The checkpoint :func:`~enlightengan.checkpoint.latest_checkpoint_in` picks from one
    recursive listing of the prefix, and its description (safe to print)."""
    from pyarrow import fs as pafs

    from enlightengan.checkpoint import latest_checkpoint_in

    filesystem = location.filesystem
    root = location.path.rstrip("/")
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    files = {
        info.path[len(root) + 1 :]: (info.size, (info.mtime_ns or 0) / 1e9)
        for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File
    }
    fetched: dict[str, bytes] = {}

    def read(name: str) -> bytes:
        # The rule reads each candidate's index and trainer state; the winner's step is then
        # described from the same bytes.
        if name not in fetched:
            fetched[name] = _read_remote(filesystem, f"{root}/{name}")
        return fetched[name]

    found = latest_checkpoint_in(files, read)
    if found is None:
        return None, location.uri
    prefix = f"{found}/" if found else ""
    try:
        step = int(json.loads(read(f"{prefix}trainer_state.json"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        step = -1
    where = f"{location.uri.rstrip('/')}/{found}" if found else location.uri.rstrip("/")
    return f"{root}/{found}" if found else root, f"{where} (step {step})"

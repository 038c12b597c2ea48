"""Where a generator comes from, for every job that runs one: a checkpoint directory, a training
run root (its latest complete checkpoint) or the starter model, local or ``s3://``.

The choice of checkpoint is :func:`enlightengan.checkpoint.latest_checkpoint_in`, the same rule
for a local folder and a bucket; this module only lists and reads remote trees for it. The files
then travel to Ray actors by a named :class:`CheckpointHolder`, never as constructor arguments.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines.options import STARTER_NAME

# What the actors need to rebuild the generator; optimiser and discriminator state stay behind.
CHECKPOINT_FILES_FOR_INFERENCE = ("checkpoint.json", "config.json", "generator.pt")
# Handles that keep lasting_checkpoint_holder's actors alive for this driver.
_LASTING_HOLDERS: dict[str, object] = {}


def stage_checkpoint(files: dict[str, bytes]) -> Path:
    """Write checkpoint files received through the object store into a local temp directory
    (nothing assumes a disk shared with the driver)."""
    directory = Path(tempfile.mkdtemp(prefix="enlightengan-checkpoint-"))
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


class CheckpointHolder:
    """Keeps the generator's files (``{name: bytes}``) for the enhancer actors of one run.

    The driver starts it as a named actor on its own node; an enhancer actor gets only its
    name. Ray restarts a lost enhancer actor with the same constructor arguments, and a
    reference into the object store among them (or anything over 100 KB, which Ray puts there)
    may be gone by then, which Ray warns about at error level for every actor. A name stays
    valid while the driver runs, and the holder hands out the files again."""

    def __init__(self, files: dict[str, bytes]):
        self._files = files

    def files(self) -> dict[str, bytes]:
        return self._files


@contextlib.contextmanager
def checkpoint_holder(files: dict[str, bytes], run_id: str):
    """A :class:`CheckpointHolder` named after the run, pinned to the driver's node (it shares
    the driver's fate anyway), for as long as the ``with`` block runs; yields its name."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = f"enlightengan-checkpoint-{run_id}"
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    holder = (
        ray.remote(CheckpointHolder)
        .options(name=name, num_cpus=0, max_restarts=0, scheduling_strategy=here)
        .remote(files)
    )
    try:
        yield name
    finally:
        ray.kill(holder)


def lasting_checkpoint_holder(files: dict[str, bytes]) -> str:
    """The name of a :class:`CheckpointHolder` of ``files`` that lives as long as this driver
    (for a lazy Dataset, whose actors start after the caller returns); one per checkpoint."""
    import hashlib

    import ray

    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name])
    name = f"enlightengan-checkpoint-{digest.hexdigest()[:16]}"
    # Ray collects an actor, named or not, once no handle to it is left.
    _LASTING_HOLDERS[name] = (
        ray.remote(CheckpointHolder)
        .options(name=name, num_cpus=0, max_restarts=0, get_if_exists=True)
        .remote(files)
    )
    return name


@dataclass(frozen=True)
class CheckpointFiles:
    """The generator's checkpoint files in memory, validated, ready for the object store."""

    files: dict[str, bytes]
    description: str


def load_checkpoint_files(uri: str, options=None) -> CheckpointFiles:
    """Find the checkpoint at ``uri`` (a checkpoint directory or a training run root holding
    ``checkpoint_*`` directories up to three levels down; local or ``s3://``), read the files
    inference needs and load the generator once to prove they fit. Raises one ``UserError``
    before any image work when anything is wrong."""
    from enlightengan.checkpoint import CheckpointError, find_latest_checkpoint, load_generator
    from pipelines.errors import UserError
    from pipelines.io.storage import resolve

    if uri is None or uri == STARTER_NAME:
        return _starter_checkpoint_files()
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
        if directory is not None:
            files = {
                name: (directory / name).read_bytes() for name in CHECKPOINT_FILES_FOR_INFERENCE
            }
        else:
            files = {
                name: _read_remote(location.filesystem, f"{found}/{name}")
                for name in CHECKPOINT_FILES_FOR_INFERENCE
            }
        load_generator(stage_checkpoint(files), map_location="cpu")
    except CheckpointError as error:
        raise UserError(f"checkpoint {uri} is not usable: {error}") from None
    except OSError as error:
        raise UserError(f"cannot read checkpoint {uri}: {error}") from None
    return CheckpointFiles(files, description)


def _starter_checkpoint_files() -> CheckpointFiles:
    """The generator shipped inside the package, as the files of a native checkpoint."""
    from enlightengan.checkpoint import CheckpointError
    from enlightengan.starter import model_card_path, write_starter_checkpoint
    from pipelines.errors import UserError

    try:
        directory = write_starter_checkpoint(tempfile.mkdtemp(prefix="enlightengan-starter-"))
    except CheckpointError as error:
        raise UserError(f"the shipped starter model cannot be loaded: {error}") from None
    files = {name: (directory / name).read_bytes() for name in CHECKPOINT_FILES_FOR_INFERENCE}
    return CheckpointFiles(files, f"the shipped starter model (model card: {model_card_path()})")


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

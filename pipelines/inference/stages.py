"""The per-row stages of ``enlightengan enhance``: read + decode (CPU tasks) and the generator
(an actor pool, one model per actor).

Rows travel between stages as flat Arrow columns: decoded pixels are one ``pixels`` binary value
(H * W * 3 bytes) plus ``height`` / ``width``, never a ragged tensor or a pickled object, so a
block moves through the object store without per-row serialisation. A row that has already
failed keeps ``status == "failed"`` and a ``reason`` and passes every later stage untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.inference.darkness import DARKNESS_COLUMNS, DarkPolicy, darkness_stats, unknown_stats
from pipelines.io.images import ImageRejected, decode_image
from pipelines.io.retries import is_transient

PENDING = "pending"
FAILED = "failed"
ENHANCED = "enhanced"
SKIPPED = "skipped"
# --only-dark: no output (not-dark), or the original bytes written unchanged (copied); rows to
# copy travel as to-copy, with their bytes, from the decode stage to the write stage.
NOT_DARK = "not-dark"
COPIED = "copied"
TO_COPY = "to-copy"
# What the actors need to rebuild the generator; optimiser and discriminator state stay behind.
CHECKPOINT_FILES_FOR_INFERENCE = ("checkpoint.json", "config.json", "generator.pt")
# `--checkpoint starter` (or no --checkpoint) names the generator shipped in the package.
STARTER_NAME = "starter"


@dataclass(frozen=True)
class InferenceSettings:
    """How each actor runs the generator (mirrors ``enlightengan.inference.EnhancerSettings``)."""

    device: str = "cpu"
    backend: str = "auto"
    precision: str = "fp32"
    channels_last: bool = True
    batch_size: int = 4
    tile_size: int | None = None
    tile_overlap: int | None = None
    torch_threads: int | None = None


def add_checkpoint_argument(parser) -> None:
    """``--checkpoint``, the same for every job that runs a generator."""
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint dir, training run root (latest complete checkpoint) or s3:// URI; "
        f"'{STARTER_NAME}' or nothing: the starter model shipped in the package (a local "
        f"folder called {STARTER_NAME} is ./{STARTER_NAME})",
    )


def object_column(values, dtype=object) -> np.ndarray:
    """A 1-D numpy array of arbitrary Python values (strings, bytes), one per row."""
    array = np.empty(len(values), dtype=dtype)
    array[:] = values
    return array


def read_and_decode(
    batch: dict[str, np.ndarray],
    input_filesystem,
    input_root: str,
    max_pixels: int,
    policy: DarkPolicy | None = None,
    sampler=None,
) -> dict[str, np.ndarray]:
    """CPU task: fetch each object's bytes, decode to upright RGB uint8 (EXIF applied) and
    score its darkness (``pipelines.inference.darkness``).

    Failures (unreadable object, :class:`ImageRejected`) become ``failed`` rows with a reason;
    a transient storage fault is raised instead, so the task is retried. With ``policy``
    (``--only-dark``) an image that is not dark leaves as ``not-dark`` or ``to-copy`` (its
    bytes in ``original``), without pixels. ``sampler`` (a ``pipelines.enhance.report.ReportSampler``)
    adds the ``before`` side of the report's sample rows."""
    rows = []
    count = len(batch["key"])
    statuses = batch.get("status", [PENDING] * count)
    reasons = batch.get("reason", [""] * count)
    for key, output_key, status, reason in zip(
        batch["key"], batch["output_key"], statuses, reasons, strict=True
    ):
        started = time.perf_counter()
        row = {
            "key": key,
            "output_key": output_key,
            "status": status,
            "reason": reason or "",
            "input_bytes": 0,
            "height": 0,
            "width": 0,
            "format": "",
            "icc_profile": b"",
            "exif": b"",
            "pixels": b"",
            "original": b"",
            **unknown_stats(),
        }
        if status != PENDING:
            row["seconds"] = 0.0
            rows.append(row)
            continue
        try:
            with input_filesystem.open_input_file(f"{input_root.rstrip('/')}/{key}") as stream:
                data = stream.read()
        except OSError as error:
            if is_transient(error):
                raise  # Ray Data re-runs the task; the image is not lost for this run
            row.update(status=FAILED, reason="unreadable")
            data = None
        if data is not None:
            row["input_bytes"] = len(data)
            try:
                decoded = decode_image(data, max_pixels=max_pixels)
                row.update(
                    height=decoded.array.shape[0],
                    width=decoded.array.shape[1],
                    format=decoded.format or "",
                    icc_profile=_rgb_icc_profile(decoded.icc_profile),
                    exif=decoded.exif or b"",
                    pixels=decoded.array.tobytes(),
                    **darkness_stats(decoded.array),
                )
                if sampler is not None:
                    row.update(sampler.before(key, decoded.array))
                if policy is not None and not policy.is_dark(row["darkness"]):
                    copy = policy.mode == "copy"
                    row.update(status=TO_COPY if copy else NOT_DARK, pixels=b"")
                    row["original"] = data if copy else b""
            except ImageRejected as rejected:
                row.update(status=FAILED, reason=rejected.reason)
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
    return _to_columns(rows, sampler)


def decoded_images(pending: list[tuple[str, str]], source, max_pixels: int, num_blocks: int):
    """The Ray Dataset of decoded input rows for a known, small list of ``(key, output_key)``
    pairs (``enlightengan evaluate``); ``enhance`` streams its keys instead."""
    import ray

    dataset = ray.data.from_items(
        [{"key": key, "output_key": output_key} for key, output_key in pending],
        override_num_blocks=max(1, num_blocks),
    )
    return decode_stage(dataset, source, max_pixels)


def cpu_stage(dataset, fn, fn_kwargs: dict, batch_size: int | None = None):
    """Add ``fn`` to ``dataset`` as CPU tasks on numpy batches (``None``: one batch per block).

    Half a CPU per task: a different request than the actors', so Ray Data keeps these stages
    in tasks (scaling with CPUs) instead of fusing them into the actor."""
    return dataset.map_batches(
        fn, fn_kwargs=fn_kwargs, batch_size=batch_size, batch_format="numpy", num_cpus=0.5
    )


def decode_stage(dataset, source, max_pixels: int, policy=None, sampler=None):
    """Add :func:`read_and_decode` tasks (one per block) to ``dataset``."""
    fn_kwargs = {"input_filesystem": source.filesystem, "input_root": source.path}
    fn_kwargs.update(max_pixels=max_pixels, policy=policy, sampler=sampler)
    return cpu_stage(dataset, read_and_decode, fn_kwargs)


def _rgb_icc_profile(profile: bytes | None) -> bytes:
    """The source's ICC profile if it describes RGB (header bytes 16-20); a CMYK or gray profile
    would be wrong on the RGB pixels written back, so it is dropped."""
    return profile if profile and profile[16:20] == b"RGB " else b""


def _to_columns(rows: list[dict], sampler=None) -> dict[str, np.ndarray]:
    columns = {}
    for name in ("key", "output_key", "status", "reason", "format"):
        columns[name] = object_column([row[name] for row in rows])
    for name in ("icc_profile", "exif", "pixels", "original"):
        columns[name] = object_column([row[name] for row in rows])
    for name in ("input_bytes", "height", "width"):
        columns[name] = np.array([row[name] for row in rows], dtype=np.int64)
    for name in ("seconds", *DARKNESS_COLUMNS):
        columns[name] = np.array([row[name] for row in rows], dtype=np.float64)
    if sampler is not None:
        columns.update(sampler.before_columns(rows))
    return columns


def stage_checkpoint(files: dict[str, bytes]) -> Path:
    """Write checkpoint files received through the object store into a local temp directory
    (nothing assumes a disk shared with the driver)."""
    directory = Path(tempfile.mkdtemp(prefix="enlightengan-checkpoint-"))
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def build_enhancer(checkpoint_dir: str | os.PathLike, settings: InferenceSettings):
    """The Enhancer for a local checkpoint directory and these settings, on the backend that
    ``settings.backend`` names or ``auto`` chooses (``pipelines.inference.backends``)."""
    import torch

    from pipelines.inference.backends import build_backend_enhancer

    if settings.torch_threads:
        torch.set_num_threads(min(settings.torch_threads, os.cpu_count() or 1))
    options = {
        "device": settings.device,
        "channels_last": settings.channels_last,
        "batch_size": settings.batch_size,
    }
    if settings.tile_size:
        options["tile_size"] = settings.tile_size
    if settings.tile_overlap is not None:
        options["tile_overlap"] = settings.tile_overlap
    return build_backend_enhancer(checkpoint_dir, settings, options)


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


class EnhanceActor:
    """Actor-pool stage: loads the generator once, then enhances each batch's decoded images.

    ``checkpoint_holder`` is the name of the run's :class:`CheckpointHolder` (a string, so a
    restarted actor gets the files again)."""

    def __init__(self, checkpoint_holder: str, settings: InferenceSettings):
        import ray

        files = ray.get(ray.get_actor(checkpoint_holder).files.remote())
        directory = stage_checkpoint(files)
        self.enhancer = build_enhancer(directory, settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        todo = [i for i, status in enumerate(batch["status"]) if status == PENDING]
        if not todo:
            return batch
        images = [_pixels(batch, i) for i in todo]
        started = time.perf_counter()
        outputs = self._enhance(images)
        share = (time.perf_counter() - started) / len(todo)
        pixels = batch["pixels"].copy()
        status = batch["status"].copy()
        reason = batch["reason"].copy()
        for index, output in zip(todo, outputs, strict=True):
            if isinstance(output, Exception):
                status[index], reason[index], pixels[index] = FAILED, "enhance-error", b""
            else:
                pixels[index] = np.ascontiguousarray(output, dtype=np.uint8).tobytes()
        batch.update(pixels=pixels, status=status, reason=reason, seconds=batch["seconds"] + share)
        return batch

    def _enhance(self, images: list[np.ndarray]) -> list:
        """The whole batch at once; if that fails, one image at a time so one bad image (or an
        out-of-memory batch) fails alone instead of stopping the job."""
        try:
            return list(self.enhancer(images))
        except Exception:
            results = []
            for image in images:
                try:
                    results.append(self.enhancer([image])[0])
                except Exception as error:
                    results.append(error)
            return results


def _pixels(batch: dict[str, np.ndarray], index: int) -> np.ndarray:
    height, width = int(batch["height"][index]), int(batch["width"][index])
    pixels = np.frombuffer(batch["pixels"][index], dtype=np.uint8)
    # A writable copy: torch.from_numpy warns on (and must not alias) read-only Arrow memory.
    return pixels.reshape(height, width, 3).copy()


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
    """Remote twin of ``find_latest_checkpoint``: the complete checkpoint (index present, every
    listed file there with its size) with the highest trainer step, then the newest index."""
    import json

    from pyarrow import fs as pafs

    filesystem = location.filesystem
    root = location.path.rstrip("/")
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    infos = {
        info.path: info
        for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File
    }
    indexes = sorted(
        path[: -len("/checkpoint.json")]
        for path in infos
        if path.endswith("/checkpoint.json")
        and path[len(root) :].count("/") <= 4  # root/a/b/c/checkpoint.json: three levels down
    )
    best = None
    for directory in indexes:
        if any(directory.startswith(other + "/") for other in indexes):
            continue  # a checkpoint is never searched inside
        try:
            index = json.loads(_read_remote(filesystem, f"{directory}/checkpoint.json"))
            listed = index["files"]
            if any(
                infos.get(f"{directory}/{name}") is None
                or infos[f"{directory}/{name}"].size != entry["bytes"]
                for name, entry in listed.items()
            ):
                continue
            step = -1
            if "trainer_state.json" in listed:
                state = json.loads(_read_remote(filesystem, f"{directory}/trainer_state.json"))
                step = int(state.get("step", -1))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        mtime = infos[f"{directory}/checkpoint.json"].mtime_ns or 0
        candidate = (step, mtime, directory)
        if best is None or candidate > best:
            best = candidate
    if best is None:
        return None, location.uri
    return best[2], f"{location.uri.rstrip('/')}{best[2][len(root) :]} (step {best[0]})"

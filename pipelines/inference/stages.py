"""The per-row stages of ``enlightengan enhance``: read + decode (CPU tasks) and the generator
(an actor pool, one model per actor).

Rows travel between stages as flat Arrow columns: decoded pixels are one ``pixels`` binary value
(H * W * 3 bytes) plus ``height`` / ``width``, never a ragged tensor or a pickled object, so a
block moves through the object store without per-row serialisation. A row's ``status`` is a
:class:`RowStatus`; a row that has already failed keeps ``RowStatus.FAILED`` and a ``reason``
and passes every later stage untouched.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from pipelines.inference.checkpoints import SharedCheckpoint, staged_checkpoint
from pipelines.inference.darkness import DARKNESS_COLUMNS, DarkPolicy, darkness_stats, unknown_stats
from pipelines.io.images import ImageRejected, decode_image
from pipelines.io.retries import is_transient


class RowStatus(StrEnum):
    """Where a row stands, in the stages and in the manifest. The values are the plain strings
    that manifests, reports and JSON summaries hold; a member equals its value."""

    PENDING = "pending"  # still to be enhanced
    # Enhanced by an EnhanceActor; in the manifest: written, with the size its object has.
    ENHANCED = "enhanced"
    FAILED = "failed"  # with a reason
    SKIPPED = "skipped"  # an earlier run's output is in place
    # --only-dark: no output (not-dark), or the original bytes written unchanged (copied); rows
    # to copy travel as to-copy, with their bytes, from the decode stage to the write stage.
    NOT_DARK = "not-dark"
    COPIED = "copied"
    TO_COPY = "to-copy"


@dataclass(frozen=True)
class InferenceSettings:
    """How each actor runs the generator: the backend and its threads, plus the fields of
    ``enlightengan.inference.EnhancerSettings`` that the jobs set, with the same defaults
    (kept free of torch so that drivers and the CLI need not import it). ``precision`` and
    ``backend`` may be ``auto``: each actor resolves them for its own device and CPU."""

    device: str = "cpu"
    backend: str = "auto"
    precision: str = "fp32"
    channels_last: bool = True
    batch_size: int = 4
    tile_size: int | None = 1024
    tile_overlap: int = 64
    torch_threads: int | None = None
    tone_transfer: str = "model"
    tone_strength: float | None = None
    tone_dark_strength: float | None = None
    tone_denoise: float | None = None


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
    statuses = batch.get("status", [RowStatus.PENDING] * count)
    reasons = batch.get("reason", [""] * count)
    for key, output_key, status, reason in zip(
        batch["key"], batch["output_key"], statuses, reasons, strict=True
    ):
        started = time.perf_counter()
        row = _blank_row(key, output_key, status, reason)
        if status == RowStatus.PENDING:
            data = _read_object(input_filesystem, input_root, key, row)
            if data is not None:
                _decode_into(row, data, max_pixels, policy, sampler)
        row["seconds"] = time.perf_counter() - started if status == RowStatus.PENDING else 0.0
        rows.append(row)
    return _to_columns(rows, sampler)


def _blank_row(key: str, output_key: str, status: str, reason: str) -> dict:
    return {
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


def _read_object(input_filesystem, input_root: str, key: str, row: dict) -> bytes | None:
    """The object's bytes, or None with ``row`` marked failed (``unreadable``); a transient
    storage fault is raised, so Ray Data re-runs the task and the image is not lost."""
    try:
        with input_filesystem.open_input_file(f"{input_root.rstrip('/')}/{key}") as stream:
            data = stream.read()
    except OSError as error:
        if is_transient(error):
            raise
        row.update(status=RowStatus.FAILED, reason="unreadable")
        return None
    row["input_bytes"] = len(data)
    return data


def _decode_into(row: dict, data: bytes, max_pixels: int, policy, sampler) -> None:
    """Decode ``data`` into ``row`` (pixels, size, format, profiles, darkness); a rejected
    image marks the row failed with its reason, a photo that is not dark under ``policy``
    leaves without pixels (its bytes kept for ``--only-dark copy``)."""
    try:
        decoded = decode_image(data, max_pixels=max_pixels)
    except ImageRejected as rejected:
        row.update(status=RowStatus.FAILED, reason=rejected.reason)
        return
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
        row.update(sampler.before(row["key"], decoded.array))
    if policy is not None and not policy.is_dark(row["darkness"]):
        copy = policy.mode == "copy"
        row.update(status=RowStatus.TO_COPY if copy else RowStatus.NOT_DARK, pixels=b"")
        row["original"] = data if copy else b""


def decoded_images(pending: list[tuple[str, str]], source, max_pixels: int, num_blocks: int):
    """The Ray Dataset of decoded input rows for a known, small list of ``(key, output_key)``
    pairs (``enlightengan evaluate``); ``enhance`` streams its keys instead."""
    import ray

    dataset = ray.data.from_items(
        [{"key": key, "output_key": output_key} for key, output_key in pending],
        override_num_blocks=max(1, num_blocks),
    )
    return decode_stage(dataset, source, max_pixels)


# CPUs of one read/decode/score/encode/write task of the enhance and evaluate datasets: what must
# stay free on some node beside the enhancer actors (pipelines.ops.resources).
TASK_CPUS = 0.5


def cpu_stage(dataset, fn, fn_kwargs: dict, batch_size: int | None = None):
    """Add ``fn`` to ``dataset`` as CPU tasks on numpy batches (``None``: one batch per block).

    Half a CPU per task (:data:`TASK_CPUS`): a different request than the actors', so Ray Data
    keeps these stages in tasks (scaling with CPUs) instead of fusing them into the actor."""
    return dataset.map_batches(
        fn, fn_kwargs=fn_kwargs, batch_size=batch_size, batch_format="numpy", num_cpus=TASK_CPUS
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
    options["tile_size"] = settings.tile_size or None
    options["tile_overlap"] = settings.tile_overlap
    options["tone_transfer"] = settings.tone_transfer
    options["tone_strength"] = settings.tone_strength
    options["tone_dark_strength"] = settings.tone_dark_strength
    options["tone_denoise"] = settings.tone_denoise
    return build_backend_enhancer(checkpoint_dir, settings, options)


class EnhanceActor:
    """Actor-pool stage: loads the generator once, then enhances each batch's decoded images.

    ``checkpoint``: the generator's files in the object store (a :class:`SharedCheckpoint`)."""

    def __init__(self, checkpoint: SharedCheckpoint, settings: InferenceSettings):
        with staged_checkpoint(checkpoint.files()) as directory:
            self.enhancer = build_enhancer(directory, settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Enhance the batch's pending rows: each leaves ``enhanced`` with the output's pixels,
        or ``failed`` (``enhance-error``) without pixels."""
        todo = [i for i, status in enumerate(batch["status"]) if status == RowStatus.PENDING]
        if not todo:
            return batch
        images = [_pixels(batch, i) for i in todo]
        started = time.perf_counter()
        outputs = self._enhance(images)
        share = (time.perf_counter() - started) / len(todo)
        pixels = batch["pixels"].copy()
        # Object, not fixed-width text: "enhanced" is longer than "pending".
        status = batch["status"].astype(object)
        reason = batch["reason"].astype(object)
        for index, output in zip(todo, outputs, strict=True):
            if isinstance(output, Exception):
                status[index], reason[index], pixels[index] = RowStatus.FAILED, "enhance-error", b""
            else:
                status[index] = RowStatus.ENHANCED
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


def enhance_stage(
    dataset,
    checkpoint: SharedCheckpoint,
    settings: InferenceSettings,
    *,
    workers: int,
    cpus: float,
    gpus: float = 0.0,
    memory: int | None = None,
):
    """Add the generator to ``dataset``: :class:`EnhanceActor` in a pool of ``workers`` actors,
    each holding ``cpus`` CPUs, ``gpus`` GPUs and ``memory`` bytes (None: no reservation), on
    batches of ``settings.batch_size`` rows. The caller keeps ``checkpoint`` (and so its object
    in the store) until the dataset has run."""
    from ray.data import ActorPoolStrategy

    return dataset.map_batches(
        EnhanceActor,
        fn_constructor_kwargs={"checkpoint": checkpoint, "settings": settings},
        compute=ActorPoolStrategy(size=workers),
        batch_size=settings.batch_size,
        batch_format="numpy",
        num_cpus=cpus,
        num_gpus=gpus or None,
        memory=memory,
    )


def _pixels(batch: dict[str, np.ndarray], index: int) -> np.ndarray:
    height, width = int(batch["height"][index]), int(batch["width"][index])
    pixels = np.frombuffer(batch["pixels"][index], dtype=np.uint8)
    # A writable copy: torch.from_numpy warns on (and must not alias) read-only Arrow memory.
    return pixels.reshape(height, width, 3).copy()

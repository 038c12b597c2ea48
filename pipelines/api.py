"""The Python API: a trained generator from any checkpoint URI, for arrays and PIL images in
your own code, and the enhance job's stages for a ``ray.data.Dataset`` in your own Ray program.

>>> from pipelines.api import load_enhancer
>>> enhancer = load_enhancer("s3://bucket/runs/exp1")   # or a folder, or "starter"
>>> brighter = enhancer([photo])                        # uint8 (H, W, 3) or PIL

``load_enhancer`` resolves the URI to a local checkpoint and builds the model package's one
:class:`enlightengan.inference.Enhancer` (re-exported here) on the backend it chooses; for
local paths and ``"starter"`` alone, ``Enhancer.from_pretrained`` loads it without Ray or S3.

The jobs themselves are plain functions too: ``run_prepare(PrepareJob(...))``,
``run_train(TrainJob(...))``, ``run_enhance(EnhanceJob(...))``, ``run_evaluate(EvaluateJob(
...))``; each returns a :class:`~pipelines.options.Summary`. They are re-exported here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from pipelines.cli import COMMANDS
from pipelines.demo.spec import DemoJob
from pipelines.enhance.spec import EnhanceJob
from pipelines.errors import UserError
from pipelines.evaluate.spec import EvaluateJob
from pipelines.export.spec import ExportJob, ImportOfficialJob
from pipelines.inference.stages import InferenceSettings, RowStatus, enhance_stage
from pipelines.options import STARTER_NAME, Summary
from pipelines.prepare.spec import PrepareJob
from pipelines.train.spec import TrainJob

if TYPE_CHECKING:
    from enlightengan.inference import Enhancer

# The jobs' functions (the CLI's runners), imported on first use (each pulls in its job's heavy
# modules).
_RUNNERS = {
    function: module
    for module, function in (c.runner.split(":") for c in COMMANDS.values() if c.runner)
}


__all__ = [
    "DemoJob",
    "EnhanceJob",
    "Enhancer",
    "EvaluateJob",
    "ExportJob",
    "ImportOfficialJob",
    "PrepareJob",
    "Summary",
    "TrainJob",
    "enhance_dataset",
    "load_enhancer",
    *_RUNNERS,
]

# Columns enhance_dataset adds beside the caller's own.
STATUS_COLUMN = "enhance_status"
REASON_COLUMN = "enhance_reason"


def load_enhancer(
    uri: str | os.PathLike | None = STARTER_NAME,
    *,
    device: str = "cpu",
    backend: str = "auto",
    precision: str = "auto",
    batch_size: int = 4,
    tile_size: int | None = 1024,
    channels_last: bool = True,
    threads: int | None = None,
    endpoint_url: str | None = None,
    profile: str | None = None,
    region: str | None = None,
) -> Enhancer:
    """The :class:`enlightengan.inference.Enhancer` of the generator at ``uri``: a checkpoint
    directory, a training run (its latest complete checkpoint), an ``s3://`` URI of either, or
    ``"starter"`` (the model shipped in the package). ``backend`` and ``precision`` mean what
    they mean for ``enhance``; S3 credentials come from the environment or ``profile``, as for
    the jobs. Its ``description`` says which checkpoint it loaded. Calling it with a list
    returns a list of the same length and kinds: a numpy array (H, W, 3) for an array, an RGB
    PIL image for a PIL image; sizes may differ within a call."""
    from pipelines.inference.checkpoints import staged_checkpoint
    from pipelines.inference.stages import build_enhancer

    settings = InferenceSettings(
        device=device,
        backend=backend,
        precision=precision,
        batch_size=batch_size,
        tile_size=tile_size or None,
        channels_last=channels_last,
        torch_threads=threads,
    )
    found = _checked_checkpoint(
        None if uri is None else os.fspath(uri),
        settings,
        endpoint_url=endpoint_url,
        profile=profile,
        region=region,
    )
    with staged_checkpoint(found.files) as directory:
        enhancer = build_enhancer(directory, settings)
    enhancer.description = found.description
    return enhancer


def _checked_checkpoint(uri: str | None, settings: InferenceSettings, **storage):
    """The checkpoint's files at ``uri`` (``storage``: StorageOptions' fields), once
    ``settings``' backend and precision are known to fit its device; one-line errors."""
    from pipelines.inference.backends import choose_backend
    from pipelines.inference.checkpoints import load_checkpoint_files
    from pipelines.io.storage import StorageOptions

    choose_backend(settings.backend, settings.precision, settings.device)
    return load_checkpoint_files(uri, StorageOptions(**storage))


def enhance_dataset(
    dataset,
    checkpoint: str | None = STARTER_NAME,
    *,
    column: str = "image",
    output_column: str = "enhanced",
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    batch_size: int = 4,
    backend: str = "auto",
    precision: str = "auto",
    tile_size: int | None = 1024,
    endpoint_url: str | None = None,
    profile: str | None = None,
    region: str | None = None,
):
    """``dataset`` (a ``ray.data.Dataset`` whose ``column`` holds uint8 (H, W, 3) images, as
    ``ray.data.read_images(..., mode="RGB")`` gives) with ``output_column`` added: the
    enhanced image, or None where it failed, plus ``enhance_status`` (``enhanced`` or
    ``failed``) and ``enhance_reason``. Lazy, like any Dataset: nothing runs until you consume
    it. The generator runs in an actor pool of ``workers`` actors, as in ``enhance``; its files
    reach the actors through the object store and stay there as long as the returned dataset
    (which holds their reference) is kept."""
    if workers < 1 or batch_size < 1:
        raise UserError("workers and batch_size must be >= 1")
    settings = InferenceSettings(
        device="cuda" if gpus_per_worker > 0 else "cpu",
        backend=backend,
        precision=precision,
        batch_size=batch_size,
        tile_size=tile_size or None,
    )
    found = _checked_checkpoint(
        checkpoint, settings, endpoint_url=endpoint_url, profile=profile, region=region
    )
    pool = {"workers": workers, "cpus": cpus_per_worker, "gpus": gpus_per_worker}
    return _enhanced_columns(dataset, found.files, settings, column, output_column, pool)


def _enhanced_columns(dataset, files, settings, column: str, output_column: str, pool: dict):
    """``dataset`` through the enhance stage: its ``column`` as pixel rows, enhanced by an actor
    pool (``pool``: enhance_stage's workers, cpus and gpus) that gets the checkpoint's ``files``
    through the object store, then back as ``output_column``."""
    from pipelines.inference.checkpoints import SharedCheckpoint

    rows = dataset.map_batches(
        _to_pixel_rows,
        fn_kwargs={"column": column},
        batch_format="numpy",
        batch_size=settings.batch_size,
        num_cpus=0.5,
    )
    enhanced = enhance_stage(rows, SharedCheckpoint.put(files), settings, **pool)
    return enhanced.map_batches(
        _from_pixel_rows,
        fn_kwargs={"output_column": output_column},
        batch_format="numpy",
        batch_size=None,
        num_cpus=0.5,
    )


def _to_pixel_rows(batch: dict[str, np.ndarray], column: str) -> dict[str, np.ndarray]:
    """The caller's images as the enhance stages' flat columns; anything that is not a uint8
    (H, W, 3) image becomes a failed row, its reason named."""
    if column not in batch:
        raise UserError(f"the dataset has no column {column!r}: pass column=...")
    images = list(batch[column])
    count = len(images)
    pixels = np.empty(count, dtype=object)
    heights, widths = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    status = np.array([RowStatus.PENDING] * count, dtype=object)
    reason = np.array([""] * count, dtype=object)
    for index, image in enumerate(images):
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            pixels[index], status[index] = b"", RowStatus.FAILED
            reason[index] = f"not-rgb-uint8 {array.dtype} {tuple(array.shape)}"
            continue
        heights[index], widths[index] = array.shape[:2]
        pixels[index] = np.ascontiguousarray(array).tobytes()
    others = {name: values for name, values in batch.items() if name != column}
    return {
        **others,
        "pixels": pixels,
        "height": heights,
        "width": widths,
        "status": status,
        "reason": reason,
        "seconds": np.zeros(count),
    }


def _from_pixel_rows(batch: dict[str, np.ndarray], output_column: str) -> dict[str, np.ndarray]:
    count = len(batch["status"])
    images = np.empty(count, dtype=object)
    for index in range(count):
        if batch["status"][index] == RowStatus.ENHANCED:
            shape = (int(batch["height"][index]), int(batch["width"][index]), 3)
            images[index] = np.frombuffer(batch["pixels"][index], dtype=np.uint8).reshape(shape)
    internal = {"pixels", "height", "width", "status", "reason", "seconds"}
    return {
        **{name: values for name, values in batch.items() if name not in internal},
        output_column: images,
        STATUS_COLUMN: batch["status"],
        REASON_COLUMN: batch["reason"],
    }


def __getattr__(name: str):
    if name == "Enhancer":  # the model package's; imported on first use (it imports torch)
        from enlightengan.inference import Enhancer

        return Enhancer
    if name in _RUNNERS:
        import importlib

        return getattr(importlib.import_module(_RUNNERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

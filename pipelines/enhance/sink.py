"""Writing enhanced images under their source keys, and the per-image Parquet manifest.

Ray Data's ``write_images`` names files itself; :func:`write_enhanced` keeps each image's
relative key instead. Every object is written atomically from a reader's view (one S3 PUT, or a
temporary file renamed into place on a local disk). Its manifest row follows in a later part
``<output>/_manifest/run-<run id>-<task>-<digest>.parquet`` (:class:`ManifestSink`); rows that
the planning stages decide go to ``run-<run id>-unusable-<digest>``, ``-skipped-`` and
``-not-dark-`` parts. An image only counts as done once a manifest row says ``enhanced`` (or
``copied``) with the size its object really has, so an object cut off by a crash, or written
just before one (no manifest row yet), is redone.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow import fs as pafs
from ray.data import Datasink

from pipelines.errors import UserError
from pipelines.inference.darkness import DARKNESS_COLUMNS
from pipelines.inference.stages import RowStatus
from pipelines.io.images import encode_like
from pipelines.io.retries import is_transient
from pipelines.io.storage import Location, write_bytes

MANIFEST_DIR = "_manifest"
MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("output_key", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("input_bytes", pa.int64()),
        ("output_bytes", pa.int64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("seconds", pa.float64()),
        ("run_id", pa.string()),
        *((name, pa.float64()) for name in DARKNESS_COLUMNS),
        ("written_at", pa.float64()),
    ]
)
# Keys listed per failure reason in a run's summary (the manifest has them all).
FAILED_KEYS_KEPT = 20
DARKNESS_BINS = 50
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG"}


def manifest_row(key: str, output_key: str, status: str, reason: str = "", **sizes) -> dict:
    """One manifest row; sizes default to 0 and ``reason`` is empty for a success."""
    row = dict.fromkeys(MANIFEST_SCHEMA.names, 0)
    row.update(key=key, output_key=output_key, status=status, reason=reason or None)
    row.update(seconds=0.0, run_id="", written_at=0.0)
    row.update(dict.fromkeys(DARKNESS_COLUMNS, math.nan))
    row.update(sizes)
    return row


def write_manifest_part(
    filesystem: pafs.FileSystem, manifest_root: str, name: str, rows: list[dict]
) -> None:
    """Write ``rows`` as one Parquet part ``<manifest_root>/<name>`` in one atomic write."""
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    path = f"{manifest_root.rstrip('/')}/{name}"
    write_bytes(Location(filesystem, path, path), buffer.getvalue())


def read_manifest(filesystem: pafs.FileSystem, manifest_root: str, columns=None) -> pa.Table:
    """Every part under ``manifest_root`` as one table (empty when there is none yet).

    Temporary files of interrupted local writes start with ``.`` and are ignored."""
    columns = columns or MANIFEST_SCHEMA.names
    # The parts listed here, not the folder handed to pyarrow: on S3 the "folder" exists only
    # while an object is under it, and a store may list it as a folder a moment after its last
    # object went (the write check's probe).
    selector = pafs.FileSelector(manifest_root, allow_not_found=True)
    parts = [
        info.path
        for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File and not info.base_name.startswith((".", "_"))
    ]
    if not parts:
        return MANIFEST_SCHEMA.empty_table().select(columns)
    dataset = pads.dataset(
        parts,
        filesystem=filesystem,
        format="parquet",
        schema=MANIFEST_SCHEMA,
        exclude_invalid_files=False,
    )
    return dataset.to_table(columns=columns)


def choose_format(source_format: str, output_format: str) -> str:
    """The Pillow format to write: the source's (``same``) or the one asked for."""
    if output_format == "same":
        # Pillow calls a JPEG with a multi-picture (MPO) segment "MPO"; it is still a JPEG file.
        return "JPEG" if source_format == "MPO" else (source_format or "PNG")
    return OUTPUT_FORMATS[output_format]


def write_enhanced(
    batch: dict[str, np.ndarray],
    filesystem: pafs.FileSystem,
    output_root: str,
    run_id: str,
    output_format: str = "same",
    jpeg_quality: int = 95,
    sampler=None,
) -> dict[str, np.ndarray]:
    """Ray Data stage (CPU tasks): encode each enhanced row (or copy a ``to-copy`` row's
    original bytes) and write it at ``<output_root>/<output_key>``; returns the batch's
    manifest rows (no pixels). ``sampler`` (``pipelines.enhance.report.ReportSampler``) receives the
    report's sample rows with their ``after`` side."""
    writer = _ImageWriter(filesystem, output_root.rstrip("/"), run_id, output_format, jpeg_quality)
    rows, sampled = [], []
    for index in range(len(batch["key"])):
        row = {name: column[index] for name, column in batch.items()}
        rows.append(writer.write(row))
        if sampler is not None:
            sampled.append(sampler.after(row, rows[-1]))
    if sampler is not None:
        sampler.offer(sampled)
    return {
        name: np.array([row[name] for row in rows], dtype=object if kind == "o" else kind)
        for name, kind in _MANIFEST_KINDS.items()
    }


_MANIFEST_KINDS = {
    field.name: ("o" if pa.types.is_string(field.type) else field.type.to_pandas_dtype())
    for field in MANIFEST_SCHEMA
}


class _ImageWriter:
    def __init__(self, filesystem, output_root: str, run_id: str, output_format, jpeg_quality):
        self.filesystem = filesystem
        self.output_root = output_root
        self.run_id = run_id
        self.output_format = output_format
        self.jpeg_quality = jpeg_quality

    def write(self, row: dict) -> dict:
        sizes = {
            "input_bytes": int(row["input_bytes"]),
            "width": int(row["width"]),
            "height": int(row["height"]),
            "run_id": self.run_id,
            **{name: float(row[name]) for name in DARKNESS_COLUMNS},
        }
        if row["status"] not in (RowStatus.ENHANCED, RowStatus.TO_COPY):
            return manifest_row(
                row["key"],
                row["output_key"],
                row["status"],
                row["reason"],
                seconds=float(row["seconds"]),
                **sizes,
            )
        started = time.perf_counter()
        try:
            if row["status"] == RowStatus.TO_COPY:
                encoded = row["original"]
            else:
                pixels = np.frombuffer(row["pixels"], dtype=np.uint8)
                encoded = encode_like(
                    pixels.reshape(int(row["height"]), int(row["width"]), 3),
                    choose_format(row["format"], self.output_format),
                    quality=self.jpeg_quality,
                    icc_profile=row["icc_profile"] or None,
                    exif=row["exif"] or None,
                )
            path = f"{self.output_root}/{row['output_key']}"
            write_bytes(Location(self.filesystem, path, path), encoded)
        except Exception as error:
            if is_transient(error):
                raise  # the task is retried; rewriting the same key duplicates nothing
            reason = "write-error" if isinstance(error, OSError | UserError) else "encode-error"
            seconds = float(row["seconds"]) + time.perf_counter() - started
            return manifest_row(
                row["key"], row["output_key"], RowStatus.FAILED, reason, seconds=seconds, **sizes
            )
        seconds = float(row["seconds"]) + time.perf_counter() - started
        return manifest_row(
            row["key"],
            row["output_key"],
            RowStatus.COPIED if row["status"] == RowStatus.TO_COPY else RowStatus.ENHANCED,
            output_bytes=len(encoded),
            seconds=seconds,
            written_at=time.time(),
            **sizes,
        )


@dataclass(frozen=True)
class ManifestTarget:
    """Where one run's manifest parts go. A part is named after its rows' keys, so a task that
    Ray re-runs rewrites the same part instead of adding one."""

    filesystem: pafs.FileSystem
    output_root: str
    run_id: str

    def write(self, kind: str, rows: list[dict]) -> None:
        """``rows`` as ``<output>/_manifest/run-<run id>-<kind>-<digest>.parquet``."""
        digest = hashlib.sha1("\n".join(row["key"] for row in rows).encode()).hexdigest()[:16]
        root = f"{self.output_root.rstrip('/')}/{MANIFEST_DIR}"
        write_manifest_part(
            self.filesystem, root, f"run-{self.run_id}-{kind}-{digest}.parquet", rows
        )


class ManifestSink(Datasink):
    """Write the manifest rows as parts of at least ``rows_per_part`` rows (the last one may be
    smaller): fewer, larger parts make the next run's resume index quick to read; images whose
    row was still waiting for its part when a run crashed are redone, never lost."""

    def __init__(self, target: ManifestTarget, rows_per_part: int):
        self.target = target
        self.rows_per_part = rows_per_part

    def get_name(self) -> str:
        return "WriteManifest"

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_part

    def write(self, blocks: Iterable, ctx) -> None:
        tables = [block if isinstance(block, pa.Table) else pa.Table.from_pandas(block)
                  for block in blocks]  # fmt: skip
        rows = [row for table in tables for row in table.to_pylist()]
        if rows:
            self.target.write(f"{ctx.task_idx:06d}", rows)


def summarize_run(target: ManifestTarget, first_batch: int = 1) -> dict:
    """Counts by status and failure reason, the first :data:`FAILED_KEYS_KEPT` keys of each
    reason, bytes written by this run (enhanced and copied rows), a histogram of darkness
    scores (:data:`DARKNESS_BINS` bins over 0-1) and the run's :func:`pace` (``first_batch``:
    the batch size) of one run's manifest parts, read a batch at a time."""
    filesystem = target.filesystem
    manifest_root = f"{target.output_root.rstrip('/')}/{MANIFEST_DIR}"
    parts = [
        info.path
        for info in filesystem.get_file_info(pafs.FileSelector(manifest_root, allow_not_found=True))
        if info.base_name.startswith(f"run-{target.run_id}-")
        and info.base_name.endswith(".parquet")
    ]
    statuses: Counter = Counter()
    reasons: Counter = Counter()
    failed_keys: dict[str, list[str]] = {}
    darkness = np.zeros(DARKNESS_BINS, dtype=np.int64)
    output_bytes = 0
    stamps: list[np.ndarray] = []
    if parts:
        dataset = pads.dataset(
            parts, filesystem=filesystem, format="parquet", schema=MANIFEST_SCHEMA
        )
        columns = ["key", "status", "reason", "output_bytes", "darkness", "written_at"]
        for batch in dataset.to_batches(columns=columns):
            statuses.update(batch["status"].to_pylist())
            for key, status, reason in zip(
                batch["key"].to_pylist(),
                batch["status"].to_pylist(),
                batch["reason"].to_pylist(),
                strict=True,
            ):
                if status == RowStatus.FAILED:
                    reasons[reason] += 1
                    kept = failed_keys.setdefault(reason, [])
                    if len(kept) < FAILED_KEYS_KEPT:
                        kept.append(key)
            scores = batch["darkness"].to_numpy(zero_copy_only=False)
            scores = scores[np.isfinite(scores)]
            darkness += np.histogram(scores, bins=DARKNESS_BINS, range=(0.0, 1.0))[0]
            # A skipped row records the size of the object an earlier run wrote.
            written = pc.is_in(batch["status"], pa.array([RowStatus.ENHANCED, RowStatus.COPIED]))
            output_bytes += pc.sum(pc.if_else(written, batch["output_bytes"], 0)).as_py() or 0
            enhanced = pc.equal(batch["status"], RowStatus.ENHANCED)
            stamps.append(pc.filter(batch["written_at"], enhanced).to_numpy(zero_copy_only=False))
    return {
        "status": dict(statuses),
        "reasons": dict(reasons),
        "failed_keys": failed_keys,
        "darkness_histogram": darkness.tolist(),
        "output_bytes": output_bytes,
        **pace(np.concatenate(stamps) if stamps else np.zeros(0), first_batch),
    }


def pace(written_at: np.ndarray, first_batch: int) -> dict:
    """When the run's first enhanced image was written (epoch seconds; None without one) and
    its rate in steady state: images per second after the first ``first_batch`` were written,
    so that start-up (Ray, the actors, the model load, the first batch) is not counted as
    throughput (None when too few images follow the first batch to time)."""
    stamps = np.sort(written_at[written_at > 0])
    first = float(stamps[0]) if stamps.size else None
    steady = None
    if stamps.size > first_batch >= 1 and stamps[-1] > stamps[first_batch - 1]:
        span = float(stamps[-1] - stamps[first_batch - 1])
        steady = (stamps.size - first_batch) / span
    return {"first_written_at": first, "steady_images_per_s": steady}

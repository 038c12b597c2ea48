"""Writing enhanced images under their source keys, and the per-image Parquet manifest.

Ray Data's ``write_images`` names files itself; :class:`EnhancedImageSink` keeps each image's
relative key instead. Every object is written atomically from a reader's view (one S3 PUT, or a
temporary file renamed into place on a local disk), and each write task then adds its own
manifest part ``<output>/_manifest/run-<run id>-<task>.parquet`` for the rows it handled. An
image only counts as done once a manifest row says ``enhanced`` with the size its object really
has, so an object cut off by a crash (no manifest row yet, or a different size) is redone.
"""

from __future__ import annotations

import io
import time
import uuid
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow import fs as pafs
from ray.data import Datasink

from pipelines.enhance_actor import ENHANCED, FAILED, PENDING, SKIPPED
from pipelines.errors import UserError
from pipelines.images import encode_like
from pipelines.retries import is_transient
from pipelines.storage import Location, write_bytes

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
    ]
)
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG"}


def manifest_row(key: str, output_key: str, status: str, reason: str = "", **sizes) -> dict:
    """One manifest row; sizes default to 0 and ``reason`` is empty for a success."""
    row = dict.fromkeys(MANIFEST_SCHEMA.names, 0)
    row.update(key=key, output_key=output_key, status=status, reason=reason or None)
    row.update(seconds=0.0, run_id="")
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
    info = filesystem.get_file_info(manifest_root)
    if info.type != pafs.FileType.Directory:
        return MANIFEST_SCHEMA.empty_table().select(columns)
    dataset = pads.dataset(
        manifest_root,
        filesystem=filesystem,
        format="parquet",
        schema=MANIFEST_SCHEMA,
        exclude_invalid_files=False,
        ignore_prefixes=[".", "_"],
    )
    return dataset.to_table(columns=columns)


def completed_outputs(filesystem: pafs.FileSystem, manifest_root: str) -> dict[str, int]:
    """``output_key -> output_bytes`` of every row that recorded a finished output."""
    table = read_manifest(filesystem, manifest_root, ["output_key", "status", "output_bytes"])
    done: dict[str, int] = {}
    for output_key, status, size in zip(
        table["output_key"].to_pylist(),
        table["status"].to_pylist(),
        table["output_bytes"].to_pylist(),
        strict=True,
    ):
        if status in (ENHANCED, SKIPPED) and size:
            done[output_key] = size
    return done


def choose_format(source_format: str, output_format: str) -> str:
    """The Pillow format to write: the source's (``same``) or the one asked for."""
    if output_format == "same":
        # Pillow calls a JPEG with a multi-picture (MPO) segment "MPO"; it is still a JPEG file.
        return "JPEG" if source_format == "MPO" else (source_format or "PNG")
    return OUTPUT_FORMATS[output_format]


class EnhancedImageSink(Datasink):
    """Encode each enhanced row, write it at ``<output_root>/<output_key>``, record the manifest.

    ``write`` returns a small summary per task (counts by status and failure reason, bytes), so
    the driver never collects per-image rows."""

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        output_root: str,
        run_id: str,
        output_format: str = "same",
        jpeg_quality: int = 95,
    ):
        self.filesystem = filesystem
        self.output_root = output_root.rstrip("/")
        self.manifest_root = f"{self.output_root}/{MANIFEST_DIR}"
        self.run_id = run_id
        self.output_format = output_format
        self.jpeg_quality = jpeg_quality
        self.summary: dict = {}

    def get_name(self) -> str:
        return "WriteEnhanced"

    def write(self, blocks: Iterable, ctx) -> dict:
        rows = []
        for block in blocks:
            table = block if isinstance(block, pa.Table) else pa.Table.from_pandas(block)
            for row in table.to_pylist():
                rows.append(self._write_one(row))
        if rows:
            name = f"run-{self.run_id}-{ctx.task_idx:06d}-{uuid.uuid4().hex[:8]}.parquet"
            write_manifest_part(self.filesystem, self.manifest_root, name, rows)
        statuses = Counter(row["status"] for row in rows)
        reasons = Counter(row["reason"] for row in rows if row["status"] == FAILED)
        return {
            "status": dict(statuses),
            "reasons": dict(reasons),
            "output_bytes": sum(row["output_bytes"] for row in rows),
        }

    def _write_one(self, row: dict) -> dict:
        sizes = {
            "input_bytes": row["input_bytes"],
            "width": row["width"],
            "height": row["height"],
            "run_id": self.run_id,
        }
        if row["status"] != PENDING:
            return manifest_row(
                row["key"],
                row["output_key"],
                FAILED,
                row["reason"],
                seconds=row["seconds"],
                **sizes,
            )
        started = time.perf_counter()
        try:
            pixels = np.frombuffer(row["pixels"], dtype=np.uint8)
            pixels = pixels.reshape(row["height"], row["width"], 3)
            fmt = choose_format(row["format"], self.output_format)
            encoded = encode_like(
                pixels,
                fmt,
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
            seconds = row["seconds"] + time.perf_counter() - started
            return manifest_row(
                row["key"], row["output_key"], FAILED, reason, seconds=seconds, **sizes
            )
        seconds = row["seconds"] + time.perf_counter() - started
        return manifest_row(
            row["key"],
            row["output_key"],
            ENHANCED,
            output_bytes=len(encoded),
            seconds=seconds,
            **sizes,
        )

    def on_write_complete(self, write_result) -> None:
        statuses: Counter = Counter()
        reasons: Counter = Counter()
        output_bytes = 0
        for task_summary in write_result.write_returns:
            statuses.update(task_summary["status"])
            reasons.update(task_summary["reasons"])
            output_bytes += task_summary["output_bytes"]
        self.summary = {
            "status": dict(statuses),
            "reasons": dict(reasons),
            "output_bytes": output_bytes,
        }

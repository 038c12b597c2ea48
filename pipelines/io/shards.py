"""The shard format: the datasink ``prepare`` writes with, and the readers ``train`` uses.

Layout under the output prefix: ``low/*.parquet`` and ``normal/*.parquet`` with columns
:data:`SHARD_COLUMNS`, plus ``manifest.json`` and ``rejected.parquet``.

``read_domain(data_uri, "low")`` gives rows ``{"key": str, "image": uint8 (H, W, 3)}``; images of
different sizes live in one column as Ray's variable-shaped tensors, so ``iter_batches(
batch_format="numpy")`` yields an object array of ``(H, W, 3)`` arrays and ``iter_rows()`` one
array per row. PNG decoding happens in Ray tasks (``map_batches``), not on the consumer.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink

from pipelines.errors import UserError
from pipelines.io import storage
from pipelines.io.images import decode_png

DOMAINS = ("low", "normal")
MANIFEST = "manifest.json"
SHARD_COLUMNS = ("key", "image", "height", "width", "uri", "sha256")
PROCESSED_SCHEMA = pa.schema(
    [
        ("domain", pa.string()),
        ("key", pa.string()),
        ("image", pa.binary()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


def read_manifest(data_uri: str, options: storage.StorageOptions | None = None) -> dict:
    """The manifest of a finished prepare run, or a UserError saying what is missing."""
    location = storage.resolve(data_uri, options)
    storage.check_access(location)
    manifest_location = location.child(MANIFEST)
    if not storage.exists(manifest_location):
        raise UserError(
            f"no {MANIFEST} under {storage.display_uri(location.uri)}: run `enlightengan "
            "prepare` first (or it did not finish)"
        )
    manifest = json.loads(storage.read_bytes(manifest_location))
    if manifest.get("status") != "complete":
        raise UserError(f"prepare run in {location.uri} did not complete: run it again")
    return manifest


def shard_paths(
    data_uri: str, domain: str, options: storage.StorageOptions | None = None
) -> tuple[storage.Location, list[str]]:
    """The domain's location and the filesystem paths of its Parquet shards (UserError if none)."""
    if domain not in DOMAINS:
        raise UserError(f"domain must be one of {DOMAINS}, not {domain!r}")
    location = storage.resolve(data_uri, options).child(domain)
    keys = storage.list_files(location, extensions=(".parquet",))
    if not keys:
        raise UserError(
            f"no {domain} shards under {storage.display_uri(location.uri)}: run `enlightengan "
            "prepare` with --output pointing there"
        )
    return location, [location.child(key).path for key in keys]


def check_prepared(data_uri: str, options: storage.StorageOptions | None = None) -> dict:
    """Manifest of a complete run whose two domains both have shards (UserError otherwise)."""
    manifest = read_manifest(data_uri, options)
    for domain in DOMAINS:
        shard_paths(data_uri, domain, options)
        if not manifest["domains"][domain]["written"]:
            raise UserError(f"prepared data in {data_uri} has no {domain} images")
    return manifest


def _decode_batch(batch: pa.Table) -> dict[str, np.ndarray]:
    images = [decode_png(data) for data in batch.column("image").to_pylist()]
    if len({image.shape for image in images}) == 1:
        stacked = np.stack(images)
    else:
        stacked = np.empty(len(images), dtype=object)
        stacked[:] = images
    return {"key": np.asarray(batch.column("key").to_pylist(), dtype=object), "image": stacked}


def read_domain(
    data_uri: str,
    domain: str,
    *,
    decode: bool = True,
    options: storage.StorageOptions | None = None,
    shuffle_files: bool = False,
):
    """A Ray Dataset of one domain's images: ``key`` and ``image`` (uint8 H x W x 3 when
    ``decode``, else the PNG bytes with ``height`` and ``width``). ``shuffle_files`` reads the
    shards in a new random order on every execution (each training pass), without
    materialising the dataset as a global shuffle would."""
    import ray

    location, paths = shard_paths(data_uri, domain, options)
    columns = ["key", "image"] if decode else ["key", "image", "height", "width"]
    dataset = ray.data.read_parquet(
        paths,
        filesystem=location.filesystem,
        shuffle="files" if shuffle_files else None,
    ).select_columns(columns)
    if not decode:
        return dataset
    return dataset.map_batches(_decode_batch, batch_format="pyarrow", batch_size=32)


SHARD_SCHEMA = pa.schema([PROCESSED_SCHEMA.field(column) for column in SHARD_COLUMNS])


class ShardWriter:
    """A Parquet writer for one shard file with the shard schema and compression, streaming
    into an object that carries its Content-Type (``storage.open_output``)."""

    def __init__(self, location: storage.Location):
        self._stream = storage.open_output(location)
        self._writer = pq.ParquetWriter(
            self._stream,
            SHARD_SCHEMA,
            # PNG bytes do not compress further; the small columns do.
            compression={"image": "NONE", **{c: "ZSTD" for c in SHARD_COLUMNS if c != "image"}},
            use_dictionary=["uri"],
        )

    def write_table(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            self._stream.close()


def drop_rows(location: storage.Location, name: str, keys: set[str]) -> tuple[str, int]:
    """Rewrite shard ``name`` in ``location`` without the rows whose key is in ``keys``: the new
    file is complete before the old one is deleted. Returns (new name, image bytes dropped)."""
    table = pq.read_table(location.child(name).path, filesystem=location.filesystem)
    dropped = pc.is_in(table.column("key"), value_set=pa.array(sorted(keys), pa.string()))
    kept = table.filter(pc.invert(dropped))
    dropped_bytes = pc.sum(pc.binary_length(table.filter(dropped).column("image"))).as_py() or 0
    new_name = f"{name.removesuffix('.parquet')}-d{uuid.uuid4().hex[:6]}.parquet"
    if kept.num_rows:
        writer = ShardWriter(location.child(new_name))
        writer.write_table(kept)
        writer.close()
    storage.delete_file(location.child(name))
    return (new_name if kept.num_rows else ""), dropped_bytes


class ShardDatasink(Datasink):
    """Writes accepted rows as Parquet shards (one per domain per write task, one row group per
    batch, so a task never holds more than a batch); returns rejections and file names."""

    def __init__(self, output: storage.Location):
        self.output = output
        self.results: list[dict] = []

    @property
    def supports_distributed_writes(self) -> bool:
        # A local output folder only exists on this machine.
        return not self.output.is_local

    def write(self, blocks, ctx) -> dict:
        writers: dict[str, tuple[str, ShardWriter]] = {}
        written = dict.fromkeys(DOMAINS, 0)
        hashes: dict[str, list[tuple[str, str]]] = {domain: [] for domain in DOMAINS}
        rejected, image_bytes = [], 0
        try:
            for block in blocks:
                table = pa.table(block)
                accepted = table.filter(pc.is_null(table.column("reason")))
                for domain in DOMAINS:
                    rows = accepted.filter(pc.equal(accepted.column("domain"), domain))
                    if not rows.num_rows:
                        continue
                    if domain not in writers:
                        writers[domain] = self._open_shard(domain, ctx.task_idx)
                    writers[domain][1].write_table(rows.select(list(SHARD_COLUMNS)))
                    written[domain] += rows.num_rows
                    hashes[domain].extend(
                        zip(
                            rows.column("key").to_pylist(),
                            rows.column("sha256").to_pylist(),
                            strict=True,
                        )
                    )
                    image_bytes += pc.sum(pc.binary_length(rows.column("image"))).as_py()
                failed = table.filter(pc.is_valid(table.column("reason")))
                rejected.extend(failed.select(["key", "domain", "reason", "detail"]).to_pylist())
        finally:
            for _, writer in writers.values():
                writer.close()
        return {
            "written": written,
            "files": {domain: name for domain, (name, _) in writers.items()},
            "hashes": hashes,
            "image_bytes": image_bytes,
            "rejected": rejected,
        }

    def _open_shard(self, domain: str, task_index: int) -> tuple[str, ShardWriter]:
        name = f"part-{task_index:05d}-{uuid.uuid4().hex[:12]}.parquet"
        return name, ShardWriter(self.output.child(domain).child(name))

    def on_write_complete(self, write_result) -> None:
        self.results = list(write_result.write_returns)

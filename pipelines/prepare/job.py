"""``enlightengan prepare``: two unpaired photo collections -> Parquet training shards.

One streaming Ray Data pass over both domains: keys are listed on the driver, then each task
reads a batch of files (threads overlap object-store latency), hashes the source bytes, decodes
(EXIF orientation, colour normalisation, JPEG draft mode), resizes by
:class:`~pipelines.io.images.ResizePolicy` and PNG-encodes. A custom datasink writes
``<out>/low/*.parquet`` and ``<out>/normal/*.parquet`` (key, image, height, width, uri, sha256)
and returns rejected keys with their reason, which become ``<out>/rejected.parquet``. Identical
source files within a domain (same sha256) are dropped after the pass: the smallest key keeps
its row, so which copy survives never depends on task timing, and only the shards holding a
copy are rewritten. ``<out>/manifest.json`` is deleted first and written last, so only a
finished run has one; old shards are deleted before writing, so a rerun replaces.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import UserError
from pipelines.io import storage
from pipelines.io.images import (
    DEFAULT_MAX_PIXELS,
    ImageRejected,
    ResizePolicy,
    decode_for_training,
    encode_png,
)
from pipelines.io.retries import is_transient, retry_transient_task_errors, storage_failure
from pipelines.io.shards import (
    DOMAINS,
    MANIFEST,
    PROCESSED_SCHEMA,
    SHARD_COLUMNS,
    ShardDatasink,
    drop_rows,
)
from pipelines.ops.ray_runtime import init_ray
from pipelines.ops.resources import Request, ensure_placeable
from pipelines.options import Summary, storage_of
from pipelines.prepare.spec import PrepareJob

REJECTED = "rejected.parquet"
# Ray Data's default request of a read/decode task and of a write task: one whole CPU.
TASK_CPUS = 1.0


@dataclass(frozen=True)
class PrepareSettings:
    policy: ResizePolicy = ResizePolicy()
    max_pixels: int = DEFAULT_MAX_PIXELS
    dedup: bool = True
    shard_size_mb: float = 256.0
    images_per_task: int = 16
    read_threads: int = 8
    max_file_mb: float = 512.0

    def rows_per_shard(self) -> int:
        # Fast PNG keeps roughly 60% of a photo's raw RGB bytes.
        estimated_row_bytes = self.policy.max_long * self.policy.max_short * 3 * 0.6
        return max(1, int(self.shard_size_mb * 1e6 // estimated_row_bytes))


class _UnsafeKey(Exception):
    """A listed key that ``storage.safe_join`` refuses (``..`` however spelt, control chars)."""


class _ProcessBatch:
    """The per-task work: read, hash, dedup, decode, resize, encode (pyarrow in and out)."""

    def __init__(self, sources: dict[str, storage.Location], settings: PrepareSettings):
        self.sources = sources
        self.settings = settings
        self.uris = {
            d: storage.display_uri(loc.uri).rstrip("/") + "/" for d, loc in sources.items()
        }

    def _read(self, domain: str, key: str) -> bytes | Exception:
        try:
            location = self.sources[domain].child(key)
        except ValueError as error:  # safe_join refused the key: it is never opened
            return _UnsafeKey(str(error))
        try:
            return storage.read_bytes(location, max_bytes=int(self.settings.max_file_mb * 1e6))
        except Exception as error:
            if is_transient(error):
                raise  # Ray Data re-runs the task: a store that blinked loses no image
            return error

    def __call__(self, batch: pa.Table) -> pa.Table:
        domains = batch.column("domain").to_pylist()
        keys = batch.column("key").to_pylist()
        with ThreadPoolExecutor(max_workers=self.settings.read_threads) as pool:
            payloads = list(pool.map(self._read, domains, keys))
        digests = [
            hashlib.sha256(p).hexdigest() if isinstance(p, bytes) else None for p in payloads
        ]
        rows = {name: [] for name in PROCESSED_SCHEMA.names}
        for domain, key, payload, digest in zip(domains, keys, payloads, digests, strict=True):
            image = height = width = reason = detail = None
            if isinstance(payload, storage.FileTooLarge):
                reason, detail = "too-large", str(payload)
            elif isinstance(payload, _UnsafeKey):
                reason, detail = "unsafe-key", str(payload)[:200]
            elif isinstance(payload, Exception):
                reason, detail = "unreadable", type(payload).__name__
            else:
                try:
                    array, _ = decode_for_training(
                        payload, self.settings.policy, max_pixels=self.settings.max_pixels
                    )
                    image, (height, width) = encode_png(array), array.shape[:2]
                except ImageRejected as rejected:
                    reason, detail = rejected.reason, rejected.detail[:200]
                except Exception as error:  # one odd file must never fail the whole job
                    reason, detail = "corrupt", f"{type(error).__name__}: {error}"[:200]
            for name, value in zip(
                PROCESSED_SCHEMA.names,
                (domain, key, image, height, width, self.uris[domain] + key)
                + (digest, reason, detail),
                strict=True,
            ):
                rows[name].append(value)
        return pa.table(rows, schema=PROCESSED_SCHEMA)


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("enlightengan-ray", "ray", "pillow", "pyarrow", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def settings_of(job: PrepareJob) -> PrepareSettings:
    try:
        policy = ResizePolicy(job.max_long, job.max_short, job.min_side, job.small)
    except ValueError as error:
        raise UserError(f"resize settings: {error}") from None
    return PrepareSettings(
        policy=policy,
        max_pixels=job.max_pixels,
        dedup=job.dedup,
        shard_size_mb=job.shard_size_mb,
        images_per_task=job.images_per_task,
        max_file_mb=job.max_file_mb,
    )


def refuse_earlier_output(output: storage.Location, uri: str) -> None:
    """An output holding a finished or interrupted run is replaced only with ``--overwrite``."""
    found = [name for name in (MANIFEST, REJECTED) if storage.exists(output.child(name))] + [
        f"{domain}/"
        for domain in DOMAINS
        if storage.list_files(output.child(domain), extensions=(".parquet",))
    ]
    if found:
        raise UserError(
            f"{uri} already holds prepared shards ({', '.join(found)}): pass --overwrite to "
            "replace them, or choose another --output"
        )


def list_inputs(sources: dict[str, storage.Location]) -> dict[str, list[str]]:
    listed = {}
    for domain, location in sources.items():
        storage.check_access(location)
        listed[domain] = storage.list_files(location)
        if not listed[domain]:
            raise UserError(
                f"no images ({', '.join(storage.IMAGE_EXTENSIONS)}) under --{domain} {location.uri}"
            )
    return listed


def prepare(
    low: str,
    normal: str,
    out: str,
    settings: PrepareSettings = PrepareSettings(),
    options: storage.StorageOptions | None = None,
) -> dict:
    """Run the whole job (Ray must be initialised); returns the manifest it wrote."""
    started = time.perf_counter()
    sources = {"low": storage.resolve(low, options), "normal": storage.resolve(normal, options)}
    output = storage.resolve(out, options)
    listed = list_inputs(sources)
    _clear_output(output)
    items = [{"domain": d, "key": k} for d in DOMAINS for k in listed[d]]
    results = _write_shards(items, sources, output, settings)
    written = _WrittenShards.of(results)
    if settings.dedup:
        written.drop_duplicates(output, results)
    _write_rejected(output, written.rejected)
    manifest = _manifest(sources, output, listed, written, settings, time.perf_counter() - started)
    _delete_stray_shards(output, written.shards)
    storage.write_bytes(output.child(MANIFEST), json.dumps(manifest, indent=2).encode())
    return manifest


def _clear_output(output: storage.Location) -> None:
    """Check that the output is writable, then delete the manifest first (only a finished run
    has one) and the shards of an earlier run."""
    storage.check_access(output)
    storage.check_writable(output, storage.display_uri(output.uri))
    storage.delete_file(output.child(MANIFEST))
    for stale in (*DOMAINS, REJECTED):
        storage.delete_prefix(output.child(stale))
    if output.is_local:  # on S3 a "folder" would be a zero-byte marker object in listings
        for domain in DOMAINS:
            output.filesystem.create_dir(output.child(domain).path, recursive=True)


def _write_shards(
    items: list[dict],
    sources: dict[str, storage.Location],
    output: storage.Location,
    settings: PrepareSettings,
) -> list[dict]:
    """The streaming pass: read, decode and encode every listed key, write the shards; returns
    the write tasks' results (see :class:`~pipelines.io.shards.ShardDatasink`)."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # One block per shard (each write task streams its block into one file per domain), but
    # at least two blocks per CPU so small runs still use every core.
    blocks = max(math.ceil(len(items) / settings.rows_per_shard()), min(len(items), 2 * cpus))
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        _ProcessBatch(sources, settings),
        batch_format="pyarrow",
        batch_size=settings.images_per_task,
        zero_copy_batch=True,
    )
    retry_transient_task_errors(dataset.context)
    # Ray Data otherwise holds half the CPUs back for the write stage, whose tasks take
    # milliseconds: on two cores that leaves one core decoding and the other idle. Set on this
    # dataset's own context: the enhance job in the same driver (the demo) runs better with the
    # reservation.
    dataset.context.op_resource_reservation_enabled = False
    sink = ShardDatasink(output)
    dataset.write_datasink(sink)
    return sink.results


@dataclass
class _WrittenShards:
    """What the write tasks reported: rows written per domain, rejected rows, image bytes and
    the shard file names per domain."""

    written: Counter
    rejected: list[dict]
    image_bytes: int
    shards: dict[str, list[str]]

    @classmethod
    def of(cls, results: list[dict]) -> _WrittenShards:
        written = cls(Counter(), [], 0, {domain: [] for domain in DOMAINS})
        for result in results:
            written.written.update(result["written"])
            written.rejected.extend(result["rejected"])
            written.image_bytes += result["image_bytes"]
            for domain, name in result["files"].items():
                written.shards[domain].append(name)
        return written

    def drop_duplicates(self, output: storage.Location, results: list[dict]) -> None:
        """Remove the duplicates from the shards; they count as ``duplicate`` rejections."""
        duplicates, dropped_bytes = _drop_duplicates(output, results, self.shards)
        self.written.subtract(row["domain"] for row in duplicates)
        self.image_bytes -= dropped_bytes
        self.rejected.extend(duplicates)


def _write_rejected(output: storage.Location, rejected_rows: list[dict]) -> None:
    """``rejected.parquet``: key, domain, reason and detail of every row left out."""
    rejected_table = pa.Table.from_pylist(
        sorted(rejected_rows, key=lambda row: (row["domain"], row["key"])),
        schema=pa.schema([(n, pa.string()) for n in ("key", "domain", "reason", "detail")]),
    )
    with storage.open_output(output.child(REJECTED)) as stream:
        pq.write_table(rejected_table, stream)


def _manifest(
    sources: dict[str, storage.Location],
    output: storage.Location,
    listed: dict[str, list[str]],
    written: _WrittenShards,
    settings: PrepareSettings,
    duration: float,
) -> dict:
    """The contents of ``manifest.json``: inputs, per-domain counts and shards, settings."""
    images_in = sum(len(keys) for keys in listed.values())
    reasons = Counter(row["reason"] for row in written.rejected)
    per_domain = {}
    for domain in DOMAINS:
        domain_rows = [row for row in written.rejected if row["domain"] == domain]
        per_domain[domain] = {
            "found": len(listed[domain]),
            "written": written.written[domain],
            "rejected": sum(row["reason"] != "duplicate" for row in domain_rows),
            "duplicates": sum(row["reason"] == "duplicate" for row in domain_rows),
            "shards": sorted(written.shards[domain]),
        }
    return {
        "status": "complete",
        "format_version": 1,
        "inputs": {domain: storage.display_uri(sources[domain].uri) for domain in DOMAINS},
        "output": storage.display_uri(output.uri),
        "domains": per_domain,
        "images_in": images_in,
        "images_written": sum(written.written.values()),
        "rejected": {
            "total": sum(n for reason, n in reasons.items() if reason != "duplicate"),
            "by_reason": {r: n for r, n in sorted(reasons.items()) if r != "duplicate"},
        },
        "duplicates": reasons.get("duplicate", 0),
        "image_bytes_written": written.image_bytes,
        "columns": list(SHARD_COLUMNS),
        "image_encoding": "png",
        "settings": {**asdict(settings), "policy": asdict(settings.policy)},
        "versions": _versions(),
        "duration_s": round(duration, 3),
        "images_per_s": round(images_in / duration, 3) if duration else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _drop_duplicates(
    output: storage.Location, results: list[dict], shards: dict[str, list[str]]
) -> tuple[list[dict], int]:
    """Remove every copy but the smallest key of each (domain, sha256) from the shards (and
    from ``shards``, which names the files); returns their ``duplicate`` rejection rows and the
    image bytes removed."""
    owners: dict[tuple[str, str], str] = {}
    for result in results:
        for domain, entries in result["hashes"].items():
            for key, digest in entries:
                owner = owners.get((domain, digest))
                if owner is None or key < owner:
                    owners[domain, digest] = key
    duplicates: dict[tuple[str, str], set[str]] = {}
    rows = []
    for result in results:
        for domain, entries in result["hashes"].items():
            for key, digest in entries:
                owner = owners[domain, digest]
                if key != owner:
                    duplicates.setdefault((domain, result["files"][domain]), set()).add(key)
                    rows.append(
                        {"key": key, "domain": domain, "reason": "duplicate", "detail": owner}
                    )
    dropped_bytes = 0
    for (domain, name), keys in duplicates.items():
        new_name, dropped = drop_rows(output.child(domain), name, keys)
        shards[domain].remove(name)
        if new_name:
            shards[domain].append(new_name)
        dropped_bytes += dropped
    return rows, dropped_bytes


def _delete_stray_shards(output: storage.Location, shards: dict[str, list[str]]) -> None:
    """Remove shard files no finished write task reported: a task that failed and was retried
    (or was cut off) may have left a partial file whose rows its retry wrote again."""
    for domain in DOMAINS:
        folder = output.child(domain)
        kept = set(shards[domain])
        for name in storage.list_files(folder, extensions=(".parquet",)):
            if name not in kept:
                storage.delete_file(folder.child(name))


def summary(manifest: dict) -> str:
    """The one-paragraph result of a run, which the CLI prints."""
    domains = manifest["domains"]
    by_reason = ", ".join(f"{r} {n}" for r, n in manifest["rejected"]["by_reason"].items())
    return (
        f"prepare: {manifest['images_in']} images in (low {domains['low']['found']}, normal "
        f"{domains['normal']['found']}); {manifest['images_written']} written (low "
        f"{domains['low']['written']}, normal {domains['normal']['written']}); "
        f"{manifest['rejected']['total']} rejected ({by_reason or 'none'}); "
        f"{manifest['duplicates']} duplicates skipped; {manifest['duration_s']:.1f} s, "
        f"{manifest['images_per_s']:.2f} images/s. Shards and manifest.json in "
        f"{manifest['output']}; rejected keys in {REJECTED}."
    )


def run_prepare(job: PrepareJob) -> Summary:
    """Run the prepare job ``job``; returns its summary (the manifest's figures)."""
    settings = settings_of(job)
    options = storage_of(job)
    if job.dry_run:
        return _dry_run(job, settings, options)
    if not job.overwrite:
        output = storage.check_access(storage.resolve(job.output, options))
        if storage.exists(output):
            refuse_earlier_output(output, storage.display_uri(output.uri))
    init_ray(job.address, job.num_cpus)
    ensure_placeable(Request("prepare", task_cpus=TASK_CPUS), wait_s=job.wait_for_resources)
    try:
        manifest = prepare(job.low, job.normal, job.output, settings, options)
    except Exception as error:
        raise storage_failure("prepare", error) or error from None
    empty = [domain for domain in DOMAINS if not manifest["domains"][domain]["written"]]
    if empty:
        print(f"prepare: no usable {' or '.join(empty)} images: see {REJECTED}", file=sys.stderr)
    return Summary("prepare", manifest, exit_code=1 if empty else 0, text=summary(manifest))


def _dry_run(job: PrepareJob, settings, options) -> Summary:
    """What a run would read (the first keys of each domain) and write; nothing written."""
    sources = {d: storage.resolve(getattr(job, d), options) for d in DOMAINS}
    listed = list_inputs(sources)
    lines = []
    for domain in DOMAINS:
        shown = ", ".join(listed[domain][:5]) + (" ..." if len(listed[domain]) > 5 else "")
        lines.append(f"{domain}: {len(listed[domain])} images under {sources[domain].uri}: {shown}")
    lines.append(f"settings: {json.dumps(asdict(settings))}")
    lines.append(f"would write shards, {REJECTED} and {MANIFEST} under {job.output}")
    return Summary(
        "prepare",
        {"dry_run": True, **{d: len(listed[d]) for d in DOMAINS}},
        text="\n".join(lines),
    )

"""``enlightengan enhance``: enhance every image under a prefix with a trained generator.

A streaming Ray Data job (see ``docs/enhance.md``)::

    keys (driver listing) -> read + decode (CPU tasks) -> Enhancer (actor pool, GPU or CPU)
        -> encode + atomic write under the same relative key, manifest part per task (CPU tasks)

The driver only lists keys, reads the manifest to skip finished work, and validates the
checkpoint before any image is touched. Nothing assumes a disk shared between nodes: the
generator's checkpoint files travel to the actors through the object store.
"""

from __future__ import annotations

import argparse
import math
import posixpath
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from pyarrow import fs as pafs

from pipelines.datasink import (
    MANIFEST_DIR,
    EnhancedImageSink,
    completed_outputs,
    manifest_row,
    write_manifest_part,
)
from pipelines.enhance_actor import (
    FAILED,
    SKIPPED,
    EnhanceActor,
    InferenceSettings,
    build_enhancer,
    decoded_images,
    load_checkpoint_files,
    stage_checkpoint,
)
from pipelines.errors import UserError
from pipelines.images import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from pipelines.ray_runtime import add_ray_arguments, init_ray
from pipelines.retries import retry_transient_task_errors, storage_failure
from pipelines.storage import (
    IMAGE_EXTENSIONS,
    Location,
    StorageOptions,
    add_storage_arguments,
    check_access,
    list_files,
    resolve,
    safe_join,
    write_bytes,
)

DEFAULT_EXTENSIONS = (*IMAGE_EXTENSIONS, ".gif")
FORMAT_EXTENSIONS = {"png": (".png",), "jpeg": (".jpg", ".jpeg")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint dir or training run root")
    parser.add_argument("--input", required=True, help="input prefix: folder, file:// or s3://")
    parser.add_argument("--output", required=True, help="output prefix (same relative keys)")
    parser.add_argument("--workers", type=int, default=1, help="enhancer actors (default 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="0: CPU actors")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each reserves")
    parser.add_argument("--threads-per-worker", type=int, default=None, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="auto: bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32",
    )
    parser.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=True, help="NHWC"
    )
    parser.add_argument("--tile-size", type=int, default=1024, help="tile above this; 0: never")
    parser.add_argument("--tile-overlap", type=int, default=64)
    parser.add_argument("--format", choices=("same", "png", "jpeg"), default="same")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="bomb limit")
    parser.add_argument(
        "--extensions",
        default=",".join(ext.lstrip(".") for ext in DEFAULT_EXTENSIONS),
        help="file extensions to enhance, comma-separated; '*' for every file",
    )
    parser.add_argument("--limit", type=int, default=None, help="enhance at most N images")
    parser.add_argument("--overwrite", action="store_true", help="redo finished images too")
    parser.add_argument("--dry-run", action="store_true", help="plan and estimate, write nothing")
    add_storage_arguments(parser)
    add_ray_arguments(parser)


@dataclass
class Plan:
    """What a run will do: ``pending`` (key, output_key) pairs to enhance, plus the rows the
    driver already decided (skipped because done, failed because the key is unusable)."""

    pending: list[tuple[str, str]] = field(default_factory=list)
    decided: list[dict] = field(default_factory=list)
    listed: int = 0
    deferred: int = 0

    def count(self, status: str) -> int:
        return sum(1 for row in self.decided if row["status"] == status)


def output_key_for(key: str, output_format: str) -> str:
    """The output's relative key: the input's, with the extension changed only when
    ``--format`` asks for a format the extension does not name."""
    if output_format == "same":
        return key
    stem, extension = posixpath.splitext(key)
    wanted = FORMAT_EXTENSIONS[output_format]
    return key if extension.lower() in wanted else stem + wanted[0]


def _list_sizes(location: Location) -> dict[str, int]:
    """``relative key -> size`` of every file under ``location`` (outputs, for resuming)."""
    selector = pafs.FileSelector(location.path, recursive=True, allow_not_found=True)
    base = location.path.rstrip("/") + "/"
    return {
        info.path[len(base) :]: info.size
        for info in location.filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File and info.path.startswith(base)
    }


def plan_work(
    keys: list[str],
    output: Location,
    output_format: str = "same",
    overwrite: bool = False,
    limit: int | None = None,
) -> Plan:
    """Decide per key: unusable (failed row), finished earlier (skipped row) or pending.

    Finished means a manifest row says ``enhanced`` (or ``skipped``) with exactly the size the
    output object has now: existence alone never counts, so a half-written object is redone."""
    plan = Plan(listed=len(keys))
    done = {} if overwrite else completed_outputs(output.filesystem, _manifest_root(output))
    sizes = _list_sizes(output) if done else {}
    claimed: set[str] = set()
    for key in keys:
        output_key = output_key_for(key, output_format)
        reason = _unusable_key_reason(output, output_key, claimed)
        if reason:
            plan.decided.append(manifest_row(key, output_key, FAILED, reason))
            continue
        claimed.add(output_key)
        size = sizes.get(output_key)
        if size is not None and done.get(output_key) == size:
            plan.decided.append(manifest_row(key, output_key, SKIPPED, output_bytes=size))
        elif limit is not None and len(plan.pending) >= limit:
            plan.deferred += 1
        else:
            plan.pending.append((key, output_key))
    return plan


def _unusable_key_reason(output: Location, output_key: str, claimed: set[str]) -> str | None:
    try:
        safe_join(output.path, output_key)
    except ValueError:
        return "unsafe-key"
    if output_key.split("/", 1)[0] == MANIFEST_DIR:
        return "reserved-key"
    if output_key in claimed:
        return "output-key-collision"
    return None


def _manifest_root(output: Location) -> str:
    return f"{output.path.rstrip('/')}/{MANIFEST_DIR}"


def list_input_keys(source: Location, output: Location, extensions: str) -> list[str]:
    """Keys under the input prefix, leaving out the output prefix when it lies inside it."""
    wanted = None if extensions.strip() == "*" else _parse_extensions(extensions)
    keys = list_files(source, extensions=wanted)
    nested = output.path.rstrip("/") + "/"
    base = source.path.rstrip("/") + "/"
    if type(source.filesystem) is type(output.filesystem) and nested.startswith(base):
        inside = nested[len(base) :]
        keys = [key for key in keys if not key.startswith(inside)]
    return keys


def _parse_extensions(text: str) -> tuple[str, ...]:
    parts = [part.strip().lower().lstrip(".") for part in text.split(",") if part.strip()]
    if not parts:
        raise UserError("--extensions is empty: give e.g. jpg,png or '*'")
    return tuple(f".{part}" for part in parts)


def inference_settings(args, total_cpus: float | None = None) -> InferenceSettings:
    if args.tile_size and args.tile_size < 64:
        raise UserError("--tile-size must be 0 (never tile) or >= 64")
    threads = args.threads_per_worker
    if threads is None and not args.gpus_per_worker and total_cpus:
        threads = max(1, int(total_cpus // max(1, args.workers)))
    return InferenceSettings(
        device="cuda" if args.gpus_per_worker > 0 else "cpu",
        precision=args.precision,
        channels_last=args.channels_last,
        batch_size=args.batch_size,
        tile_size=args.tile_size or None,
        tile_overlap=args.tile_overlap,
        torch_threads=threads,
    )


def _check_arguments(args) -> None:
    if args.workers < 1 or args.batch_size < 1:
        raise UserError("--workers and --batch-size must be >= 1")
    if args.gpus_per_worker < 0 or args.cpus_per_worker < 0:
        raise UserError("--gpus-per-worker and --cpus-per-worker must be >= 0")
    if not 1 <= args.jpeg_quality <= 100:
        raise UserError("--jpeg-quality must be between 1 and 100")
    if args.limit is not None and args.limit < 0:
        raise UserError("--limit must be >= 0")


def run(args) -> int:
    _check_arguments(args)
    options = StorageOptions.from_args(args)
    source = check_access(resolve(args.input, options))
    output = check_access(resolve(args.output, options))
    if source.filesystem.get_file_info(source.path).type != pafs.FileType.Directory:
        raise UserError(f"input {args.input} is not a folder or prefix with images")
    checkpoint = load_checkpoint_files(args.checkpoint, options)
    print(f"enhance: checkpoint {checkpoint.description}", file=sys.stderr)
    keys = list_input_keys(source, output, args.extensions)
    plan = plan_work(keys, output, args.format, args.overwrite, args.limit)
    if args.dry_run:
        _print_dry_run(plan, source, checkpoint.files, args)
        return 0
    check_writable(output, args.output)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if plan.decided:
        for row in plan.decided:
            row["run_id"] = run_id
        name = f"run-{run_id}-planned.parquet"
        write_manifest_part(output.filesystem, _manifest_root(output), name, plan.decided)
    summary = {"status": {}, "reasons": {}, "output_bytes": 0}
    seconds = 0.0
    if plan.pending:
        init_ray(args.address, args.num_cpus)
        started = time.perf_counter()
        try:
            summary = run_pipeline(plan.pending, source, output, checkpoint.files, args, run_id)
        except Exception as error:
            raise storage_failure("enhance", error) or error from None
        seconds = time.perf_counter() - started
    _print_summary(plan, summary, seconds, output, run_id)
    return 0


def check_writable(output: Location, uri: str) -> None:
    """Write and delete one small object under the manifest folder, so an output that cannot
    be written at all (permission denied, a file in the way, a full disk, a read-only bucket)
    is one clear error before any image is read."""
    probe = f"{_manifest_root(output)}/.write-check-{uuid.uuid4().hex}"
    try:
        write_bytes(Location(output.filesystem, probe, probe), b"enlightengan write check\n")
        output.filesystem.delete_file(probe)
    except (OSError, UserError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"cannot write to the output {uri}: {detail}") from None


def _rows_per_block(count: int, batch_size: int, parallelism: int) -> int:
    """Blocks of a few whole batches: big enough to amortise Ray's per-task cost, small enough
    that several are in flight (decode of one overlaps the enhancement of another). A block that
    is not a multiple of the batch size ends in a short batch (6 rows at batch 4: a batch of 2),
    which the generator runs at a worse cost per image."""
    batches = max(1, min(16, math.ceil(count / max(4, 4 * parallelism) / batch_size)))
    return batches * batch_size


def run_pipeline(
    pending: list[tuple[str, str]],
    source: Location,
    output: Location,
    checkpoint_files: dict[str, bytes],
    args,
    run_id: str,
) -> dict:
    """Build and execute the streaming dataset; returns the sink's summary (counts only)."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.execution_options.preserve_order = False
    retry_transient_task_errors(context)
    total_cpus = ray.cluster_resources().get("CPU", 1.0)
    settings = inference_settings(args, total_cpus)
    rows_per_block = _rows_per_block(len(pending), args.batch_size, int(total_cpus))
    files_ref = ray.put(checkpoint_files)
    dataset = decoded_images(
        pending, source, args.max_pixels, math.ceil(len(pending) / rows_per_block)
    )
    dataset = dataset.map_batches(
        EnhanceActor,
        fn_constructor_kwargs={"checkpoint_files": [files_ref], "settings": settings},
        compute=ActorPoolStrategy(size=args.workers),
        batch_size=args.batch_size,
        batch_format="numpy",
        num_cpus=args.cpus_per_worker,
        num_gpus=args.gpus_per_worker or None,
    )
    sink = EnhancedImageSink(output.filesystem, output.path, run_id, args.format, args.jpeg_quality)
    dataset.write_datasink(sink, ray_remote_args={"num_cpus": 0.5})
    return sink.summary


def _print_dry_run(plan: Plan, source: Location, checkpoint_files, args) -> None:
    estimate = _estimate_seconds_per_image(plan, source, checkpoint_files, args)
    failed = Counter(row["reason"] for row in plan.decided if row["status"] == FAILED)
    lines = [
        f"dry run: {plan.listed} images listed under {args.input}",
        f"  would enhance: {len(plan.pending)}"
        + (f" (--limit leaves {plan.deferred} for later)" if plan.deferred else ""),
        f"  already done (skipped): {plan.count(SKIPPED)}",
        f"  unusable keys (failed): {plan.count(FAILED)} {dict(failed) if failed else ''}",
    ]
    if estimate is not None:
        total = estimate * len(plan.pending) / max(1, args.workers)
        lines.append(
            f"  estimated time: {total:.0f} s ({estimate:.2f} s per image per worker, measured "
            "on this machine's CPU with a sample of the inputs)"
        )
    print("\n".join(lines))


def _estimate_seconds_per_image(plan: Plan, source: Location, checkpoint_files, args):
    """Time the enhancer on up to two pending images on the driver (CPU)."""
    samples = []
    for key, _ in plan.pending[:2]:
        try:
            with source.filesystem.open_input_file(f"{source.path}/{key}") as stream:
                samples.append(decode_image(stream.read(), max_pixels=args.max_pixels).array)
        except (OSError, ImageRejected):
            continue
    if not samples:
        return None
    args_cpu = argparse.Namespace(**{**vars(args), "gpus_per_worker": 0})
    enhancer = build_enhancer(stage_checkpoint(checkpoint_files), inference_settings(args_cpu))
    started = time.perf_counter()
    enhancer(samples)
    return (time.perf_counter() - started) / len(samples)


def _print_summary(plan: Plan, summary: dict, seconds: float, output: Location, run_id) -> None:
    statuses = Counter(summary["status"])
    reasons = Counter(summary["reasons"])
    for row in plan.decided:
        statuses[row["status"]] += 1
        if row["status"] == FAILED:
            reasons[row["reason"]] += 1
    enhanced = statuses.get("enhanced", 0)
    rate = enhanced / seconds if seconds > 0 else 0.0
    lines = [
        f"enhance summary (run {run_id}): {plan.listed} listed",
        f"  enhanced: {enhanced}  skipped: {statuses.get(SKIPPED, 0)}  "
        f"failed: {statuses.get(FAILED, 0)}"
        + (f"  left for later (--limit): {plan.deferred}" if plan.deferred else ""),
        f"  {rate:.2f} images/s over {seconds:.1f} s, {summary['output_bytes']} bytes written",
        f"  manifest: {output.uri.rstrip('/')}/{MANIFEST_DIR}/",
    ]
    if reasons:
        lines.append("  failures by reason: " + ", ".join(f"{r}={n}" for r, n in reasons.items()))
    print("\n".join(lines))

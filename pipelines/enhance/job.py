"""``enlightengan enhance``: enhance every image under a prefix with a trained generator.

A streaming Ray Data job (see ``docs/enhance.md``)::

    list keys, sorted, a page at a time (one task) -> skip finished ones (CPU tasks)
        -> read + decode + darkness score (CPU tasks) -> Enhancer (actor pool, GPU or CPU)
        -> encode + atomic write under the same relative key (CPU tasks) -> manifest parts
    then the run report (``pipelines.enhance.report``) from this run's manifest parts and sample.

The driver validates the checkpoint and the output before any image is touched, and holds no
per-image state: keys, the resume index and the manifest rows all stay in Ray's object store
as they stream past. Nothing assumes a disk shared between nodes: the generator's checkpoint
files travel to the actors through the object store.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import ray
from pyarrow import fs as pafs

from pipelines.enhance.plan import (
    CHECK_ROWS,
    UNUSABLE_KEY_REASONS,
    KeyRules,
    build_resume_index,
    check_finished,
    list_work,
)
from pipelines.enhance.report import (
    ReportSampler,
    RunFacts,
    SampleKeeper,
    add_report_arguments,
    write_report,
)
from pipelines.enhance.sink import (
    MANIFEST_DIR,
    ManifestSink,
    ManifestTarget,
    summarize_run,
    write_enhanced,
)
from pipelines.errors import UserError
from pipelines.inference.backends import add_backend_argument, choose_backend
from pipelines.inference.darkness import add_darkness_arguments, dark_policy
from pipelines.inference.stages import (
    COPIED,
    ENHANCED,
    FAILED,
    NOT_DARK,
    PENDING,
    SKIPPED,
    TO_COPY,
    EnhanceActor,
    InferenceSettings,
    add_checkpoint_argument,
    build_enhancer,
    checkpoint_holder,
    cpu_stage,
    decode_stage,
    load_checkpoint_files,
    stage_checkpoint,
)
from pipelines.io.images import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from pipelines.io.listing import PAGE_SIZE, ListingSource
from pipelines.io.retries import retry_transient_task_errors, storage_failure
from pipelines.io.storage import (
    IMAGE_EXTENSIONS,
    Location,
    StorageOptions,
    add_storage_arguments,
    check_access,
    delete_file,
    display_uri,
    resolve,
    write_bytes,
)
from pipelines.ops.ray_runtime import add_ray_arguments, init_ray

BLOCK_BYTES = 8 * 1024 * 1024
REPORTED_SETTINGS = ("workers", "batch_size", "precision", "format", "limit", "overwrite")
DEFAULT_EXTENSIONS = (*IMAGE_EXTENSIONS, ".gif")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser)
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
        help="auto: bf16 on GPUs and on CPUs with AMX, else fp32 (onnxruntime runs fp32 only)",
    )
    add_backend_argument(parser)
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
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the input, count what would be done, show the first keys and an estimated "
        "time; write nothing",
    )
    parser.add_argument(
        "--manifest-rows",
        type=int,
        default=256,
        help="manifest rows per Parquet part (default 256); after a crash, images whose row "
        "had not reached a part yet are redone",
    )
    add_darkness_arguments(parser)
    add_report_arguments(parser)
    add_storage_arguments(parser)
    add_ray_arguments(parser)


def key_rules(source: Location, output: Location, args) -> KeyRules:
    """The listing's filters: wanted extensions, and the output prefix when it lies inside the
    input (its images must not be enhanced again)."""
    wanted = None if args.extensions.strip() == "*" else _parse_extensions(args.extensions)
    nested = output.path.rstrip("/") + "/"
    base = source.path.rstrip("/") + "/"
    inside = None
    if type(source.filesystem) is type(output.filesystem) and nested.startswith(base):
        inside = nested[len(base) :]
        if not inside:
            raise UserError(
                "--output is the --input folder: the enhanced images would replace the "
                "originals; give another folder (one inside the input is fine)"
            )
    return KeyRules(output.path, args.format, wanted, inside)


def _manifest_root(output: Location) -> str:
    return f"{output.path.rstrip('/')}/{MANIFEST_DIR}"


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
        backend=args.backend,
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
    if args.manifest_rows < 1:
        raise UserError("--manifest-rows must be >= 1")
    if args.limit is not None and args.limit < 0:
        raise UserError("--limit must be >= 0")
    if args.report_samples < 0:
        raise UserError("--report-samples must be >= 0")
    choose_backend(args.backend, args.precision, "cuda" if args.gpus_per_worker > 0 else "cpu")


def run(args) -> int:
    _check_arguments(args)
    policy = dark_policy(args)
    options = StorageOptions.from_args(args)
    source = check_access(resolve(args.input, options))
    output = check_access(resolve(args.output, options))
    if source.filesystem.get_file_info(source.path).type != pafs.FileType.Directory:
        raise UserError(f"input {args.input} is not a folder or prefix with images")
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The checkpoint check (torch's import, a model load) runs while Ray starts, which is
        # mostly waiting for Ray's own processes: seconds off the time to the first output.
        loading = pool.submit(_load_checkpoint, args.checkpoint, options)
        rules = key_rules(source, output, args)
        listing = ListingSource.of(source)
        if loading.done():
            loading.result()  # a checkpoint already known to be bad fails before Ray starts
        started_ray = init_ray(args.address, args.num_cpus)
        try:
            checkpoint = loading.result()
        except BaseException:
            if started_ray:
                ray.shutdown()  # a refused run leaves no Ray behind
            raise
    print(f"enhance: checkpoint {checkpoint.description}", file=sys.stderr)
    if not args.dry_run:
        check_writable(output, args.output)
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    try:
        resume = None
        if not args.overwrite:
            resume = build_resume_index(output.filesystem, _manifest_root(output))
        target = ManifestTarget(output.filesystem, output.path, run_id)
        work = planned_work(listing, rules, resume, output, target, args, policy)
        if args.dry_run:
            _dry_run(work, source, checkpoint.files, args, policy)
            return 0
        started = time.perf_counter()
        keeper = SampleKeeper.remote(args.report_samples)
        sampler = ReportSampler(keeper, args.report_niqe) if args.report_samples else None
        run_pipeline(work, source, output, checkpoint.files, args, target, policy, sampler)
        seconds = time.perf_counter() - started
        summary = summarize_run(target)
        facts = RunFacts(
            run_id, display_uri(source.uri), display_uri(output.uri), checkpoint.description,
            seconds, policy, args.dark_threshold,
            {name: getattr(args, name) for name in REPORTED_SETTINGS},
        )  # fmt: skip
        report = write_report(output, facts, summary, ray.get(keeper.sample.remote()))
    except Exception as error:
        raise storage_failure("enhance", error) or error from None
    _print_summary(summary, seconds, output, run_id, args.limit)
    print(f"  report: {report}")
    return 0


def _load_checkpoint(uri: str | None, options: StorageOptions):
    """:func:`load_checkpoint_files`, then Ray Data's import, which planning needs next."""
    checkpoint = load_checkpoint_files(uri, options)
    import ray.data  # noqa: F401

    return checkpoint


def check_writable(output: Location, uri: str) -> None:
    """Write and delete one small object under the manifest folder, so an output that cannot
    be written at all (permission denied, a file in the way, a full disk, a read-only bucket)
    is one clear error before any image is read."""
    probe = f"{_manifest_root(output)}/.write-check-{uuid.uuid4().hex}"
    try:
        write_bytes(Location(output.filesystem, probe, probe), b"enlightengan write check\n")
        delete_file(Location(output.filesystem, probe, probe))
    except (OSError, UserError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"cannot write to the output {uri}: {detail}") from None


def _rows_per_block(batch_size: int) -> int:
    """Rows per decode task: two whole batches, so that every forward is a full batch (a block
    of 6 rows at batch 4 would end in a batch of 2, which costs more per image) and the decode
    of one block overlaps the enhancement of another."""
    return 2 * batch_size


def _configure(context) -> None:
    """Settings of the enhance dataset's own ``DataContext`` (other jobs of the same driver,
    such as the demo's evaluate, keep Ray Data's defaults).

    Ray Data merges a task's small outputs into one block until it reaches
    ``target_max_block_size``; at the default 128 MiB, a listing task's keys (about 130 bytes
    each) would wait for the end of a listing of up to a million keys. At 8 MiB a block of
    about 60,000 keys leaves as soon as it is listed, while a decode task's two batches of
    photos stay one block (at 1 MiB each image became a block of its own, and the pipeline
    ran 10% slower: ``benchmarks/bench_enhance.py``, 0.89x vs 1.02x the bare loop)."""
    context.execution_options.preserve_order = False
    context.target_max_block_size = BLOCK_BYTES
    retry_transient_task_errors(context)


def planned_work(listing, rules: KeyRules, resume, output: Location, target, args, policy=None):
    """The dataset of rows to work on: listed, checked against the manifest, unread."""
    import ray

    record = None if args.dry_run else target
    dataset = ray.data.from_items([{"root": listing.root}])
    dataset = cpu_stage(
        dataset,
        list_work,
        {
            "source": listing,
            "rules": rules,
            "resume": resume,
            "page_size": PAGE_SIZE,
            "record": record,
        },
        batch_size=1,
    )
    if resume is not None:
        # A check costs a stat per finished key: blocks of 1,000 amortise the task.
        dataset = dataset.repartition(target_num_rows_per_block=CHECK_ROWS)
        dataset = cpu_stage(
            dataset,
            check_finished,
            {
                "output_filesystem": output.filesystem,
                "output_root": output.path,
                "record": record,
                "policy": policy,
            },
        )
    return dataset


def run_pipeline(
    work, source: Location, output: Location, checkpoint_files, args, target, policy, sampler
):
    """Decode, enhance, write and record every row of ``work`` (see :func:`planned_work`);
    ``policy``: ``--only-dark``, ``sampler``: the run report's sample."""
    import ray
    from ray.data import ActorPoolStrategy

    total_cpus = ray.cluster_resources().get("CPU", 1.0)
    settings = inference_settings(args, total_cpus)
    dataset = work.repartition(target_num_rows_per_block=_rows_per_block(args.batch_size))
    if args.limit is not None:
        dataset = dataset.limit(args.limit)
    dataset = decode_stage(dataset, source, args.max_pixels, policy, sampler)
    with checkpoint_holder(checkpoint_files, target.run_id) as holder_name:
        dataset = dataset.map_batches(
            EnhanceActor,
            fn_constructor_kwargs={"checkpoint_holder": holder_name, "settings": settings},
            compute=ActorPoolStrategy(size=args.workers),
            batch_size=args.batch_size,
            batch_format="numpy",
            num_cpus=args.cpus_per_worker,
            num_gpus=args.gpus_per_worker or None,
        )
        dataset = cpu_stage(
            dataset,
            write_enhanced,
            {
                "filesystem": output.filesystem,
                "output_root": output.path,
                "run_id": target.run_id,
                "output_format": args.format,
                "jpeg_quality": args.jpeg_quality,
                "sampler": sampler,
            },
            batch_size=args.batch_size,
        )
        sink = ManifestSink(target, args.manifest_rows)
        _configure(dataset.context)
        dataset.write_datasink(sink, ray_remote_args={"num_cpus": 0.1})


def _dry_run(work, source: Location, checkpoint_files, args, policy=None) -> None:
    """Count what a run would do: listing and checks only, nothing written; with
    ``--only-dark`` the pending images are also read and decoded to score their darkness."""
    statuses: Counter = Counter()
    failed: Counter = Counter()
    samples: list[str] = []
    _configure(work.context)
    if policy is not None:
        work = decode_stage(work, source, args.max_pixels, policy)
        work = work.map_batches(_decisions, batch_format="numpy", batch_size=None)
    for batch in work.iter_batches(batch_size=None, batch_format="numpy"):
        for key, status, reason in zip(batch["key"], batch["status"], batch["reason"], strict=True):
            statuses[status] += 1
            if status == FAILED:
                failed[reason] += 1
            elif status == PENDING and len(samples) < 5:
                samples.append(str(key))
    pending = statuses[PENDING]
    would = pending if args.limit is None or policy else min(pending, args.limit)
    lines = [
        f"dry run: {sum(statuses.values())} images listed under {args.input}",
        f"  would enhance: {would}"
        + (f" (--limit leaves {pending - would} for later)" if would < pending else ""),
        f"  already done (skipped): {statuses[SKIPPED]}",
        f"  unusable (failed): {statuses[FAILED]} {dict(failed) if failed else ''}",
    ]
    if policy is not None:
        lines[1] += f" (dark: darkness >= {policy.threshold})"
        lines.insert(2, f"  would copy unchanged (not dark): {statuses[TO_COPY]}")
        lines.insert(3, f"  would leave out (not dark): {statuses[NOT_DARK]}")
        if args.limit is not None:
            lines.append(f"  --limit {args.limit}: the run reads at most that many of these")
    if samples:
        lines.append("  first to enhance: " + ", ".join(samples))
    estimate = _estimate_seconds_per_image(samples[:2], source, checkpoint_files, args)
    if estimate is not None:
        total = estimate * would / max(1, args.workers)
        lines.append(
            f"  estimated time: {total:.0f} s ({estimate:.2f} s per image per worker, measured "
            "on this machine's CPU with a sample of the inputs)"
        )
    print("\n".join(lines))


def _decisions(batch: dict) -> dict:
    """A dry run's decoded rows without their pixels."""
    return {name: batch[name] for name in ("key", "status", "reason")}


def _estimate_seconds_per_image(keys: list[str], source: Location, checkpoint_files, args):
    """Time the enhancer on up to two pending images on the driver (CPU)."""
    samples = []
    for key in keys:
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


def _print_summary(summary: dict, seconds: float, output: Location, run_id, limit) -> None:
    statuses = Counter(summary["status"])
    enhanced = statuses.get(ENHANCED, 0)
    unusable = sum(summary["reasons"].get(reason, 0) for reason in UNUSABLE_KEY_REASONS)
    decided = statuses.get(COPIED, 0) + statuses.get(NOT_DARK, 0)
    worked = enhanced + decided + statuses.get(FAILED, 0) - unusable
    rate = enhanced / seconds if seconds > 0 else 0.0
    lines = [
        f"enhance summary (run {run_id}): {sum(statuses.values())} images",
        f"  enhanced: {enhanced}  skipped: {statuses.get(SKIPPED, 0)}  "
        f"failed: {statuses.get(FAILED, 0)}"
        + "".join(f"  {name}: {statuses[name]}" for name in (COPIED, NOT_DARK) if statuses[name])
        + (
            f"  (--limit {limit} reached: rerun to go on)"
            if limit is not None and worked >= limit
            else ""
        ),
        f"  {rate:.2f} images/s over {seconds:.1f} s, {summary['output_bytes']} bytes written",
        f"  manifest: {output.uri.rstrip('/')}/{MANIFEST_DIR}/",
    ]
    if summary["reasons"]:
        lines.append(
            "  failures by reason: "
            + ", ".join(f"{reason}={count}" for reason, count in summary["reasons"].items())
        )
    print("\n".join(lines))

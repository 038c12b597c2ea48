"""``enlightengan enhance``: enhance every image under a prefix with a trained generator.

A streaming Ray Data job::

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

import dataclasses
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
    kept_sample,
    start_sample_keeper,
    write_report,
)
from pipelines.enhance.sink import (
    MANIFEST_DIR,
    ManifestSink,
    ManifestTarget,
    summarize_run,
    write_enhanced,
)
from pipelines.enhance.spec import EnhanceJob
from pipelines.errors import UserError
from pipelines.inference.backends import choose_backend
from pipelines.inference.checkpoints import (
    SharedCheckpoint,
    load_checkpoint_files,
    staged_checkpoint,
)
from pipelines.inference.stages import (
    TASK_CPUS,
    InferenceSettings,
    RowStatus,
    build_enhancer,
    cpu_stage,
    decode_stage,
    enhance_stage,
)
from pipelines.io.images import ImageRejected, decode_image
from pipelines.io.listing import PAGE_SIZE, ListingSource
from pipelines.io.retries import retry_transient_task_errors, storage_failure
from pipelines.io.storage import (
    Location,
    check_access,
    check_writable,
    display_uri,
    resolve,
)
from pipelines.ops.ray_runtime import init_ray, lost_node_failure
from pipelines.ops.resources import WORKER_FLAGS, Request, alive_nodes, ensure_placeable
from pipelines.options import Summary, memory_bytes, storage_of

BLOCK_BYTES = 8 * 1024 * 1024
# Ray Data's repartition tasks (Dataset.repartition has no resource option, Ray 2.60) and the
# resume index's task ask for a whole CPU, more than the stages' own tasks (TASK_CPUS): what must
# stay free on some node beside the enhancer actors, or those tasks never start.
WHOLE_TASK_CPUS = 1.0
REPORTED_SETTINGS = ("workers", "batch_size", "precision", "image_format", "limit", "overwrite")


def key_rules(source: Location, output: Location, job: EnhanceJob) -> KeyRules:
    """The listing's filters: wanted extensions, and the output prefix when it lies inside the
    input (its images must not be enhanced again)."""
    wanted = None if job.extensions.strip() == "*" else _parse_extensions(job.extensions)
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
    return KeyRules(output.path, job.image_format, wanted, inside)


def _manifest_root(output: Location) -> str:
    return f"{output.path.rstrip('/')}/{MANIFEST_DIR}"


def _parse_extensions(text: str) -> tuple[str, ...]:
    parts = [part.strip().lower().lstrip(".") for part in text.split(",") if part.strip()]
    if not parts:
        raise UserError("--extensions is empty: give e.g. jpg,png or '*'")
    return tuple(f".{part}" for part in parts)


def inference_settings(
    job: EnhanceJob, total_cpus: float | None = None, node_cpus: float | None = None
) -> InferenceSettings:
    """The actors' settings. Without ``--threads-per-worker``, a CPU actor runs the cluster's
    CPUs shared among the actors as threads (all of a 2-core laptop's for the one default
    actor), at most one node's CPUs (``node_cpus``, the largest node's): an actor's threads
    all run on its own node."""
    if job.tile_size and job.tile_size < 64:
        raise UserError("--tile-size must be 0 (never tile) or >= 64")
    threads = job.threads_per_worker
    if threads is None and not job.gpus_per_worker and total_cpus:
        threads = max(1, int(total_cpus // max(1, job.workers)))
        if node_cpus:
            threads = max(1, min(threads, int(node_cpus)))
    return InferenceSettings(
        device="cuda" if job.gpus_per_worker > 0 else "cpu",
        backend=job.backend,
        precision=job.precision,
        channels_last=job.channels_last,
        batch_size=job.batch_size,
        tile_size=job.tile_size or None,
        tile_overlap=job.tile_overlap,
        torch_threads=threads,
        tone_transfer=job.tone_transfer,
        tone_strength=job.tone_strength,
        tone_dark_strength=job.tone_dark_strength,
        tone_denoise=job.tone_denoise,
    )


def resource_request(job: EnhanceJob) -> Request:
    """What the job needs from the cluster: its enhancer actors (none in a dry run) and room
    for the largest of its own tasks beside them (:data:`WHOLE_TASK_CPUS`)."""
    return Request(
        "enhance",
        task_cpus=max(TASK_CPUS, WHOLE_TASK_CPUS),
        workers=0 if job.dry_run else job.workers,
        per_worker={
            "CPU": job.cpus_per_worker,
            "GPU": job.gpus_per_worker,
            "memory": memory_bytes(job.memory_per_worker) or 0,
        },
        flags=WORKER_FLAGS,
    )


def run_enhance(job: EnhanceJob) -> Summary:
    """Run the enhance job ``job`` (see the module notes); returns its summary."""
    job_started = time.time()
    choose_backend(job.backend, job.precision, job.device)
    policy = job.dark_policy
    options = storage_of(job)
    source = check_access(resolve(job.input, options))
    output = check_access(resolve(job.output, options))
    if source.filesystem.get_file_info(source.path).type != pafs.FileType.Directory:
        raise UserError(f"input {job.input} is not a folder or prefix with images")
    rules, listing, checkpoint = _start(job, source, output, options)
    if not job.dry_run:
        check_writable(output.child(MANIFEST_DIR), job.output)
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    try:
        resume = None
        if not job.overwrite:
            resume = build_resume_index(output.filesystem, _manifest_root(output))
        target = ManifestTarget(output.filesystem, output.path, run_id)
        work = planned_work(listing, rules, resume, output, target, job, policy)
        if job.dry_run:
            return _dry_run(work, source, checkpoint.files, job, policy)
        started = time.perf_counter()
        keeper = start_sample_keeper(job.report_samples)
        sampler = ReportSampler(keeper, job.report_niqe) if job.report_samples else None
        run_pipeline(work, source, output, checkpoint.files, job, target, policy, sampler)
        seconds = time.perf_counter() - started
        summary = summarize_run(target, first_batch=job.batch_size)
        facts = RunFacts(
            run_id, display_uri(source.uri), display_uri(output.uri), checkpoint.description,
            seconds, policy, job.dark_threshold,
            {name: getattr(job, name) for name in REPORTED_SETTINGS},
        )  # fmt: skip
        report = write_report(output, facts, summary, kept_sample(keeper))
    except Exception as error:
        failure = storage_failure("enhance", error) or lost_node_failure("enhance", error)
        raise failure or error from None
    first_output_s = None
    if summary["first_written_at"] is not None:
        first_output_s = summary["first_written_at"] - job_started
    return _job_summary(
        run_id, checkpoint.description, summary, (seconds, first_output_s), output, report, job
    )


def _start(job: EnhanceJob, source, output, options):
    """Start (or join) Ray and check the checkpoint meanwhile: the key rules, the listing and
    the checkpoint's files. A refused run (a bad checkpoint, a request the cluster cannot
    place) leaves no Ray of its own behind."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The checkpoint check (torch's import, a model load) runs while Ray starts, which is
        # mostly waiting for Ray's own processes, so the two overlap.
        loading = pool.submit(load_checkpoint_files, job.checkpoint, options)
        rules = key_rules(source, output, job)
        listing = ListingSource.of(source)
        if loading.done():
            loading.result()  # a checkpoint already known to be bad fails before Ray starts
        started_ray = init_ray(job.address, job.num_cpus)
        try:
            ensure_placeable(resource_request(job), wait_s=job.wait_for_resources)
            checkpoint = loading.result()
        except BaseException:
            if started_ray:
                ray.shutdown()
            raise
    print(f"enhance: checkpoint {checkpoint.description}", file=sys.stderr)
    return rules, listing, checkpoint


def _job_summary(run_id, checkpoint, summary, timing, output, report, job) -> Summary:
    """The run's figures and its result text; ``timing``: the run's seconds and those to the
    first output (None when nothing was written)."""
    seconds, first_output_s = timing
    text = _result_text(summary, seconds, first_output_s, output, run_id, job.limit)
    return Summary(
        "enhance",
        {
            "run_id": run_id,
            "checkpoint": checkpoint,
            "statuses": dict(Counter(summary["status"])),
            "failures_by_reason": dict(summary["reasons"]),
            "output_bytes": summary["output_bytes"],
            "seconds": round(seconds, 3),
            "first_output_s": None if first_output_s is None else round(first_output_s, 3),
            "steady_images_per_s": summary["steady_images_per_s"],
            "manifest": f"{display_uri(output.uri).rstrip('/')}/{MANIFEST_DIR}/",
            "report": report,
        },
        text=f"{text}\n  report: {report}",
    )


def _pace_words(summary: dict, first_output_s: float | None) -> str:
    """`` (first output 12.3 s after the start, then 1.71 images/s)``: start-up apart from the
    steady state (empty when nothing was enhanced)."""
    if first_output_s is None:
        return ""
    steady = summary["steady_images_per_s"]
    then = f", then {steady:.2f} images/s" if steady is not None else ""
    return f" (first output {first_output_s:.1f} s after the start{then})"


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
    photos stay one block (a smaller limit makes each image a block of its own, which costs
    more per image than it overlaps)."""
    context.execution_options.preserve_order = False
    context.target_max_block_size = BLOCK_BYTES
    retry_transient_task_errors(context)


def planned_work(
    listing, rules: KeyRules, resume, output: Location, target, job: EnhanceJob, policy=None
):
    """The dataset of rows to work on: listed, checked against the manifest, unread."""
    import ray

    record = None if job.dry_run else target
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
    work, source: Location, output: Location, checkpoint_files, job, target, policy, sampler
):
    """Decode, enhance, write and record every row of ``work`` (see :func:`planned_work`);
    ``policy``: ``--only-dark``, ``sampler``: the run report's sample."""
    node_cpus = [node.get("CPU", 0.0) for node in alive_nodes()]
    settings = inference_settings(job, sum(node_cpus) or 1.0, max(node_cpus, default=1.0))
    dataset = work.repartition(target_num_rows_per_block=_rows_per_block(job.batch_size))
    if job.limit is not None:
        dataset = dataset.limit(job.limit)
    dataset = decode_stage(dataset, source, job.max_pixels, policy, sampler)
    # The driver keeps `checkpoint` (and so its object) until the run has finished.
    checkpoint = SharedCheckpoint.put(checkpoint_files)
    dataset = enhance_stage(
        dataset,
        checkpoint,
        settings,
        workers=job.workers,
        cpus=job.cpus_per_worker,
        gpus=job.gpus_per_worker,
        memory=memory_bytes(job.memory_per_worker),
    )
    dataset = cpu_stage(
        dataset,
        write_enhanced,
        {
            "filesystem": output.filesystem,
            "output_root": output.path,
            "run_id": target.run_id,
            "output_format": job.image_format,
            "jpeg_quality": job.jpeg_quality,
            "sampler": sampler,
        },
        batch_size=job.batch_size,
    )
    sink = ManifestSink(target, job.manifest_rows)
    _configure(dataset.context)
    dataset.write_datasink(sink, ray_remote_args={"num_cpus": 0.1})


def _dry_run(work, source: Location, checkpoint_files, job: EnhanceJob, policy=None) -> Summary:
    """Count what a run would do: listing and checks only, nothing written; with
    ``--only-dark`` the pending images are also read and decoded to score their darkness."""
    statuses: Counter = Counter()
    failed: Counter = Counter()
    samples: list[str] = []
    _configure(work.context)
    if policy is not None:
        work = decode_stage(work, source, job.max_pixels, policy)
        work = work.map_batches(_decisions, batch_format="numpy", batch_size=None)
    for batch in work.iter_batches(batch_size=None, batch_format="numpy"):
        for key, status, reason in zip(batch["key"], batch["status"], batch["reason"], strict=True):
            statuses[status] += 1
            if status == RowStatus.FAILED:
                failed[reason] += 1
            elif status == RowStatus.PENDING and len(samples) < 5:
                samples.append(str(key))
    pending = statuses[RowStatus.PENDING]
    would = pending if job.limit is None or policy else min(pending, job.limit)
    lines = [
        f"dry run: {sum(statuses.values())} images listed under {job.input}",
        f"  would enhance: {would}"
        + (f" (--limit leaves {pending - would} for later)" if would < pending else ""),
        f"  already done (skipped): {statuses[RowStatus.SKIPPED]}",
        f"  unusable (failed): {statuses[RowStatus.FAILED]} {dict(failed) if failed else ''}",
    ]
    if policy is not None:
        lines[1] += f" (dark: darkness >= {policy.threshold})"
        lines.insert(2, f"  would copy unchanged (not dark): {statuses[RowStatus.TO_COPY]}")
        lines.insert(3, f"  would leave out (not dark): {statuses[RowStatus.NOT_DARK]}")
        if job.limit is not None:
            lines.append(f"  --limit {job.limit}: the run reads at most that many of these")
    if samples:
        lines.append("  first to enhance: " + ", ".join(samples))
    estimate = _estimate_seconds_per_image(samples[:2], source, checkpoint_files, job)
    if estimate is not None:
        total = estimate * would / max(1, job.workers)
        lines.append(
            f"  estimated time: {total:.0f} s ({estimate:.2f} s per image per worker, measured "
            "on this machine's CPU with a sample of the inputs)"
        )
    return Summary(
        "enhance",
        {
            "dry_run": True,
            "listed": sum(statuses.values()),
            "would_enhance": would,
            "statuses": dict(statuses),
            "failures_by_reason": dict(failed),
            "first_to_enhance": samples,
            "seconds_per_image_estimate": estimate,
        },
        text="\n".join(lines),
    )


def _decisions(batch: dict) -> dict:
    """A dry run's decoded rows without their pixels."""
    return {name: batch[name] for name in ("key", "status", "reason")}


def _estimate_seconds_per_image(keys: list[str], source: Location, checkpoint_files, job):
    """Time the enhancer on up to two pending images on the driver (CPU)."""
    samples = []
    for key in keys:
        try:
            with source.filesystem.open_input_file(f"{source.path}/{key}") as stream:
                samples.append(decode_image(stream.read(), max_pixels=job.max_pixels).array)
        except (OSError, ImageRejected):
            continue
    if not samples:
        return None
    on_cpu = dataclasses.replace(job, gpus_per_worker=0.0)
    with staged_checkpoint(checkpoint_files) as directory:
        enhancer = build_enhancer(directory, inference_settings(on_cpu))
    started = time.perf_counter()
    enhancer(samples)
    return (time.perf_counter() - started) / len(samples)


def _result_text(
    summary: dict, seconds: float, first_output_s, output: Location, run_id, limit
) -> str:
    """The run's result for people: counts, pace, bytes, manifest and failures by reason."""
    statuses = Counter(summary["status"])
    enhanced = statuses.get(RowStatus.ENHANCED, 0)
    unusable = sum(summary["reasons"].get(reason, 0) for reason in UNUSABLE_KEY_REASONS)
    decided = statuses.get(RowStatus.COPIED, 0) + statuses.get(RowStatus.NOT_DARK, 0)
    worked = enhanced + decided + statuses.get(RowStatus.FAILED, 0) - unusable
    rate = enhanced / seconds if seconds > 0 else 0.0
    lines = [
        f"enhance summary (run {run_id}): {sum(statuses.values())} images",
        f"  enhanced: {enhanced}  skipped: {statuses.get(RowStatus.SKIPPED, 0)}  "
        f"failed: {statuses.get(RowStatus.FAILED, 0)}"
        + "".join(
            f"  {name}: {statuses[name]}"
            for name in (RowStatus.COPIED, RowStatus.NOT_DARK)
            if statuses[name]
        )
        + (
            f"  (--limit {limit} reached: rerun to go on)"
            if limit is not None and worked >= limit
            else ""
        ),
        f"  {rate:.2f} images/s over {seconds:.1f} s{_pace_words(summary, first_output_s)}, "
        f"{summary['output_bytes']} bytes written",
        f"  manifest: {output.uri.rstrip('/')}/{MANIFEST_DIR}/",
    ]
    if summary["reasons"]:
        lines.append(
            "  failures by reason: "
            + ", ".join(f"{reason}={count}" for reason, count in summary["reasons"].items())
        )
    return "\n".join(lines)

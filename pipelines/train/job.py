"""``enlightengan train``: EnlightenGAN on prepared shards with Ray Train (TorchTrainer, DDP).

Everything is resolved and checked before any compute: the model config (defaults, then
``--config FILE.json``, then ``--set section.field=value``), the data (a complete prepare run
with both domains), the batch rule, the device and the run storage. The result is printed and
written to ``<run>/config.json`` (resolved config plus job settings, never a secret);
``--dry-run`` stops there.

Batch rule: ``optim.batch_size`` is the global batch; each of N workers takes
``batch_size // N`` (at least 1), so the effective global batch is ``N * (batch_size // N)``.
An epoch is ``ceil(larger domain / effective global batch)`` steps, as in the reference.

Run layout (``--run`` is a folder or an ``s3://`` prefix)::

    config.json                 resolved config and job settings
    metrics.jsonl, epochs.jsonl per-step and per-epoch metrics (rank 0)
    samples/step_XXXXXXXX.png   input | enhanced grids every --sample-every steps
    loss_curve.png              at the end
    latest_checkpoint.json      {"step": S, "path": "train/checkpoint_XXXXXXXX"}
    train/checkpoint_XXXXXXXX/  checkpoints (enlightengan.checkpoint format), last K kept
    train/...                   Ray Train's own state (resume = rerun the same command)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import dataclass

from enlightengan.config import EnlightenGANConfig
from pipelines.errors import UserError
from pipelines.io import shards, storage
from pipelines.ops.ray_runtime import add_ray_arguments, init_ray
from pipelines.train.worker import (
    DOMAINS,
    LATEST_POINTER,
    WorkerSettings,
    train_loop_per_worker,
)

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "config.json"
EXPERIMENT_NAME = "train"
# Settings that may change between a run and its resumption; anything else must match.
RESUMABLE_JOB_SETTINGS = ("total_steps", "checkpoint_every", "sample_every", "report_every")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="prepared shards: folder or s3:// prefix")
    parser.add_argument("--run", required=True, help="run folder or s3:// prefix (resumable)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (default 1)")
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--gpus", action="store_true", help="one GPU per worker (NCCL)")
    device.add_argument("--cpu", action="store_true", help="CPU workers, gloo (the default)")
    parser.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        help="CPUs reserved per worker (default 0.5 on CPU, 1 with --gpus); "
        "leave some free for Ray Data's decode tasks",
    )
    parser.add_argument("--config", default=None, help="config JSON (full or partial)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field, e.g. optim.lr=2e-4 (repeatable)",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="total optimisation steps")
    length.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="total epochs (default: optim.epochs_constant + epochs_decay)",
    )
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps (default 500)")
    parser.add_argument("--keep-checkpoints", type=int, default=3, help="last K kept (3)")
    parser.add_argument("--sample-every", type=int, default=500, help="sample grid every N steps")
    parser.add_argument(
        "--report-every",
        type=int,
        default=50,
        help="ray.train.report metrics every N steps (default 50; checkpoints always report). "
        "Each report is a barrier across workers that cost about 1.7 s per call on Ray 2.60 "
        "here; metrics.jsonl records every step whatever this is",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16 = autocast: on GPUs, and on CPUs with native bf16 (AVX512-BF16 or AMX), where "
        "it about halves the step time; elsewhere emulated and slower (default fp32)",
    )
    parser.add_argument(
        "--shuffle-buffer",
        type=int,
        default=64,
        help="rows in each worker's local shuffle buffer per domain (0 = off)",
    )
    parser.add_argument(
        "--memory-mb",
        type=float,
        default=1024.0,
        help="per-worker budget for keeping its decoded shard in memory after "
        "the first pass (smaller domain first); larger shards stream every "
        "epoch (default 1024; 0 = always stream)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch threads per worker (default: Ray's, from --cpus-per-worker)",
    )
    parser.add_argument(
        "--placement",
        choices=("PACK", "SPREAD", "STRICT_SPREAD"),
        default="PACK",
        help="worker placement across nodes (STRICT_SPREAD: one worker per node)",
    )
    parser.add_argument(
        "--min-workers",
        type=int,
        default=None,
        help="continue on this many workers or more when nodes are lost, with the same global "
        "batch (default: --workers, i.e. wait for the lost capacity to come back)",
    )
    parser.add_argument(
        "--wait-for-workers",
        type=float,
        default=600.0,
        help="seconds to wait for the workers' resources (at the start and after a node is "
        "lost) before the job ends with a message (default 600); with --min-workers, Ray waits "
        "below the minimum without a deadline",
    )
    parser.add_argument("--max-failures", type=int, default=3, help="worker-group retries")
    parser.add_argument("--dry-run", action="store_true", help="resolve, print, write config")
    parser.add_argument("--fail-at-step", type=int, default=None, help=argparse.SUPPRESS)
    storage.add_storage_arguments(parser)
    add_ray_arguments(parser)


@dataclass(frozen=True)
class TrainJob:
    """The resolved job: model config, worker settings and where things live."""

    config: EnlightenGANConfig
    worker: WorkerSettings
    data: storage.Location
    run: storage.Location
    workers: int
    use_gpu: bool
    cpus_per_worker: float
    keep_checkpoints: int
    max_failures: int
    domain_counts: dict
    options: storage.StorageOptions = storage.StorageOptions()
    placement_strategy: str = "PACK"
    min_workers: int | None = None
    wait_for_workers_s: float = 600.0

    @property
    def elastic(self) -> bool:
        """Fewer workers allowed than asked for: Ray Train's elastic scaling."""
        return self.min_workers is not None and self.min_workers < self.workers

    def describe(self) -> dict:
        """What config.json holds: URIs as displayed, no credentials."""
        job = {k: v for k, v in self.worker.to_dict().items() if k != "config"}
        job.update(
            data=storage.display_uri(self.data.uri),
            run=storage.display_uri(self.run.uri),
            workers=self.workers,
            device="gpu" if self.use_gpu else "cpu",
            cpus_per_worker=self.cpus_per_worker,
            keep_checkpoints=self.keep_checkpoints,
            max_failures=self.max_failures,
            placement=self.placement_strategy,
            domain_counts=self.domain_counts,
            min_workers=self.min_workers or self.workers,
            wait_for_workers_s=self.wait_for_workers_s,
        )
        return {"config": self.config.to_dict(), "job": job}


def parse_override(text: str) -> tuple[str, object]:
    """``section.field=value``; the value is JSON when it parses (numbers, lists, null, true)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: write SECTION.FIELD=VALUE, e.g. optim.lr=2e-4")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def resolve_config(config_file: str | None, overrides: list[str]) -> EnlightenGANConfig:
    try:
        config = EnlightenGANConfig()
        if config_file:
            text = storage.read_bytes(storage.resolve(config_file)).decode()
            config = EnlightenGANConfig.from_json(text)
        config = config.with_overrides(dict(parse_override(item) for item in overrides))
        return config.validate()
    except FileNotFoundError:
        raise UserError(f"--config {config_file}: no such file") from None
    except (ValueError, TypeError) as error:
        raise UserError(f"bad config: {error}") from None


def resolve_job(args) -> TrainJob:
    """Check every setting and input; raises UserError with one line saying what to fix."""
    config = resolve_config(args.config, args.set)
    use_gpu = bool(args.gpus)
    if args.workers < 1:
        raise UserError("--workers must be >= 1")
    if config.generator.norm == "sync_batch" and not use_gpu:
        raise UserError(
            "generator.norm=sync_batch needs --gpus (SyncBatchNorm is GPU-only); "
            "use generator.norm=batch or instance on CPU"
        )
    for name in ("checkpoint_every", "keep_checkpoints", "report_every", "max_failures"):
        if getattr(args, name) < (0 if name == "max_failures" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    min_workers = args.workers if args.min_workers is None else args.min_workers
    if not 1 <= min_workers <= args.workers:
        raise UserError(f"--min-workers must be between 1 and --workers ({args.workers})")
    if args.wait_for_workers <= 0:
        raise UserError("--wait-for-workers must be > 0 seconds")
    global_batch = global_batch_size(config.optim.batch_size, min_workers, args.workers)
    options = storage.StorageOptions.from_args(args)
    data = storage.check_access(storage.resolve(args.data, options))
    manifest = shards.check_prepared(args.data, options)
    counts = {domain: int(manifest["domains"][domain]["written"]) for domain in DOMAINS}
    for domain, count in counts.items():
        if count < args.workers:
            raise UserError(
                f"the {domain} domain has {count} images, fewer than --workers "
                f"{args.workers}: every worker needs at least one"
            )
    steps_per_epoch = epoch_length(counts, global_batch)
    if args.steps is not None and args.steps < 1 or args.epochs is not None and args.epochs < 1:
        raise UserError("--steps and --epochs must be >= 1")
    epochs = args.epochs if args.epochs is not None else config.optim.total_epochs
    total_steps = args.steps if args.steps is not None else epochs * steps_per_epoch
    run = storage.check_access(storage.resolve(args.run, options))
    cpus = args.cpus_per_worker if args.cpus_per_worker is not None else (1.0 if use_gpu else 0.5)
    if cpus <= 0:
        raise UserError("--cpus-per-worker must be > 0")
    worker = WorkerSettings(
        config=config.to_dict(),
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        global_batch=global_batch,
        experiment_name=EXPERIMENT_NAME,
        checkpoint_every=args.checkpoint_every,
        sample_every=max(0, args.sample_every),
        report_every=args.report_every,
        precision=args.precision,
        shuffle_buffer=max(0, args.shuffle_buffer),
        fail_at_step=args.fail_at_step,
        in_memory_domains=in_memory_domains(args.data, options, min_workers, args.memory_mb),
        torch_threads=args.torch_threads,
    )
    return TrainJob(
        config,
        worker,
        data,
        run,
        args.workers,
        use_gpu,
        cpus,
        args.keep_checkpoints,
        args.max_failures,
        counts,
        options,
        args.placement,
        min_workers,
        args.wait_for_workers,
    )


def global_batch_size(batch_size: int, min_workers: int, max_workers: int) -> int:
    """The global batch every step takes, whatever the number of workers.

    A fixed worker count takes ``workers * (batch_size // workers)``. An elastic one (fewer
    workers allowed) keeps ``batch_size`` itself, so each count in the range must divide it:
    the learning-rate schedule counts epochs in steps of that global batch, and a resumed run
    must see the same epoch length on any number of workers.
    """
    if batch_size < max_workers and min_workers == max_workers:
        raise UserError(
            f"optim.batch_size {batch_size} is smaller than --workers "
            f"{max_workers}: each worker needs >= 1 image per step"
        )
    if min_workers == max_workers:
        return max_workers * (batch_size // max_workers)
    counts = range(min_workers, max_workers + 1)
    if any(batch_size % count for count in counts):
        multiple = math.lcm(*counts)
        raise UserError(
            f"optim.batch_size {batch_size} must be a multiple of each worker count from "
            f"--min-workers {min_workers} to --workers {max_workers}, i.e. of {multiple}, so "
            f"the global batch stays the same when nodes are lost; e.g. "
            f"--set optim.batch_size={multiple * max(1, round(batch_size / multiple))}"
        )
    return batch_size


def decoded_megabytes(data_uri: str, domain: str, options) -> float:
    """Decoded size of a domain (height x width x 3 bytes per row), read from two int columns."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    location, paths = shards.shard_paths(data_uri, domain, options)
    table = pq.read_table(paths, columns=["height", "width"], filesystem=location.filesystem)
    pixels = pc.multiply(table["height"].cast("int64"), table["width"].cast("int64"))
    return 3 * int(pc.sum(pixels).as_py() or 0) / 1e6


def in_memory_domains(data_uri: str, options, workers: int, budget_mb: float) -> tuple[str, ...]:
    """Domains whose per-worker share of decoded images fits the budget, smallest first."""
    if budget_mb <= 0:
        return ()
    per_worker = {d: decoded_megabytes(data_uri, d, options) / workers for d in DOMAINS}
    kept, used = [], 0.0
    for domain in sorted(per_worker, key=per_worker.get):
        if used + per_worker[domain] <= budget_mb:
            kept.append(domain)
            used += per_worker[domain]
    return tuple(kept)


def check_vgg_weights(config: EnlightenGANConfig) -> None:
    from enlightengan.vgg import resolve_vgg16_weights

    try:
        resolve_vgg16_weights(config.loss.vgg_weights)
    except FileNotFoundError as error:
        raise UserError(str(error).replace("\n", " ")) from None


def epoch_length(counts: dict[str, int], global_batch: int) -> int:
    """Steps per epoch: the larger domain seen once (the reference's epoch is the larger set)."""
    return math.ceil(max(counts.values()) / global_batch)


def write_run_config(job: TrainJob) -> None:
    """Write ``<run>/config.json``; a resumed run must keep the model and data settings."""
    target = job.run.child(RUN_CONFIG_FILE)
    described = job.describe()
    if storage.exists(target):
        previous = json.loads(storage.read_bytes(target))
        changed = _changed_settings(previous, described)
        if changed:
            raise UserError(
                f"{storage.display_uri(job.run.uri)} already holds a run with other "
                f"settings ({', '.join(changed)}): use a new --run or the same settings"
            )
    storage.write_bytes(target, (json.dumps(described, indent=2, sort_keys=True) + "\n").encode())


def _changed_settings(previous: dict, current: dict) -> list[str]:
    current = json.loads(json.dumps(current))  # tuples become lists, as in the stored file
    changed = [
        f"config.{section}"
        for section in current["config"]
        if previous.get("config", {}).get(section) != current["config"][section]
    ]
    old_job, new_job = previous.get("job", {}), current["job"]
    changed += [
        f"job.{key}"
        for key in ("data", "global_batch", "steps_per_epoch")
        if old_job.get(key) != new_job.get(key)
    ]
    return changed


def run_training(job: TrainJob):
    """Build the two datasets and the TorchTrainer, fit, and return Ray's Result."""
    import ray.train
    from ray.train.torch import TorchTrainer

    datasets = {
        domain: shards.read_domain(job.data.uri, domain, options=job.options, shuffle_files=True)
        for domain in DOMAINS
    }
    resources = {"CPU": job.cpus_per_worker, **({"GPU": 1} if job.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job.worker.to_dict(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=(job.min_workers, job.workers) if job.elastic else job.workers,
            use_gpu=job.use_gpu,
            resources_per_worker=resources,
            placement_strategy=job.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=job.worker.experiment_name,
            storage_path=job.run.path,
            storage_filesystem=job.run.filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.keep_checkpoints),
            failure_config=ray.train.FailureConfig(
                max_failures=job.max_failures,
                controller_failure_limit=startup_retries(job.wait_for_workers_s),
            ),
        ),
        datasets=datasets,
    )
    return trainer.fit()


def worker_group_start_timeout() -> float:
    """Seconds Ray Train waits for one worker group's resources (its own setting)."""
    from ray.train.v2._internal.constants import (
        DEFAULT_WORKER_GROUP_START_TIMEOUT_S,
        WORKER_GROUP_START_TIMEOUT_S_ENV_VAR,
    )

    return float(
        os.environ.get(WORKER_GROUP_START_TIMEOUT_S_ENV_VAR, DEFAULT_WORKER_GROUP_START_TIMEOUT_S)
    )


def startup_retries(wait_for_workers_s: float) -> int:
    """Ray Train retries a worker group that could not get its resources within its start
    timeout as a controller failure, without limit by default: the first try and this many
    retries make the ``--wait-for-workers`` deadline."""
    return max(0, math.ceil(wait_for_workers_s / worker_group_start_timeout()) - 1)


def failure_message(job: TrainJob, error: Exception) -> str:
    """One line on why training stopped, with what to do."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    run = storage.display_uri(job.run.uri)
    if isinstance(getattr(error, "controller_failure", None), WorkerGroupStartupTimeoutError):
        wanted = job.workers if not job.elastic else f"{job.min_workers}-{job.workers}"
        return (
            f"train: the cluster could not place {wanted} workers "
            f"({job.cpus_per_worker} CPUs{' and 1 GPU' if job.use_gpu else ''} each) within "
            f"--wait-for-workers {job.wait_for_workers_s:g} s (a node lost, or never there); "
            f"the checkpoints in {run} are kept: run the same command again when the capacity "
            f"is back, or add --min-workers to go on with fewer"
        )
    return (
        f"train: failed after {job.max_failures} retries: {error}; the checkpoints in {run} "
        f"are kept, run the same command again to resume"
    )


def run(args) -> int:
    job = resolve_job(args)
    check_vgg_weights(job.config)
    print(json.dumps(job.describe(), indent=2, sort_keys=True))
    write_run_config(job)
    if args.dry_run:
        print(
            f"dry run: config written to {storage.display_uri(job.run.child(RUN_CONFIG_FILE).uri)}"
        )
        return 0
    init_ray(args.address, args.num_cpus, training=True)
    import ray.train

    try:
        result = run_training(job)
    except ray.train.TrainingFailedError as error:
        print(failure_message(job, error))
        return 1
    pointer = json.loads(storage.read_bytes(job.run.child(LATEST_POINTER)))
    metrics = result.metrics or {}
    print(
        f"train: finished at step {pointer['step']} of {job.worker.total_steps}; latest "
        f"checkpoint {storage.display_uri(job.run.uri).rstrip('/')}/{pointer['path']}; "
        f"last metrics: "
        + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
    )
    return 0

"""``enlightengan train``: EnlightenGAN on prepared shards with Ray Train (TorchTrainer, DDP).

Everything is resolved and checked before any compute: the model config (defaults, then
``--model-config FILE.json``, then ``--set section.field=value``; with ``--init-from SOURCE`` the
source's config instead of the defaults, see :mod:`enlightengan.finetune`), the data (a complete
prepare run with both domains), the batch rule, the device and the run storage. The result is printed and
written to ``<run>/config.json`` (resolved config plus job settings, never a secret);
``--dry-run`` stops there.

Batch rule: ``optim.batch_size`` is the global batch; each of N workers takes
``batch_size // N`` (at least 1), so the effective global batch is ``N * (batch_size // N)``.
An epoch is ``ceil(larger domain / effective global batch)`` steps, as in the reference.

Run layout (``--output`` is a folder or an ``s3://`` prefix)::

    config.json                 resolved config and job settings
    metrics.jsonl, epochs.jsonl per-step and per-epoch metrics (rank 0)
    samples/step_XXXXXXXX.png   input | enhanced grids every --sample-every steps
    loss_curve.png              at the end
    latest_checkpoint.json      {"step": S, "path": "train/checkpoint_XXXXXXXX"}
    init_from/                  with --init-from: the starting weights (a checkpoint at step 0)
    train/checkpoint_XXXXXXXX/  checkpoints (enlightengan.checkpoint format), last K kept
    train/...                   Ray Train's own state (resume = rerun the same command)
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

from enlightengan.config import EnlightenGANConfig
from pipelines.errors import UserError
from pipelines.inference.backends import resolve_precision
from pipelines.io import shards, storage
from pipelines.io.shards import DOMAINS
from pipelines.ops.ray_runtime import init_ray
from pipelines.ops.resources import WORKER_FLAGS, Request, ensure_placeable
from pipelines.options import Summary, memory_bytes, storage_of
from pipelines.train import faults
from pipelines.train.init_source import (
    INIT_CHECKPOINT,
    given_settings,
    resolve_source,
    stored_init,
    write_init_checkpoint,
)
from pipelines.train.spec import TrainJob
from pipelines.train.worker import (
    LATEST_POINTER,
    WorkerSettings,
    train_loop_per_worker,
)

logger = logging.getLogger(__name__)

RUN_CONFIG_FILE = "config.json"
EXPERIMENT_NAME = "train"
# Ray Data's default request of a task reading and decoding the shards: one whole CPU, which
# must stay free beside the workers (workers holding every CPU starve it: the run hangs).
DATA_TASK_CPUS = 1.0


@dataclass(frozen=True)
class TrainPlan:
    """A :class:`TrainJob` resolved and checked: model config, worker settings, where things
    live and what the data holds."""

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
    init_record: dict | None = None
    init_source: object | None = field(default=None, repr=False, compare=False)
    memory_per_worker: float | None = None

    @property
    def elastic(self) -> bool:
        """Fewer workers allowed than asked for: Ray Train's elastic scaling."""
        return self.min_workers is not None and self.min_workers < self.workers

    def describe(self) -> dict:
        """What config.json holds: URIs as displayed, no credentials."""
        hidden = ("config", "ray_train_log_level")  # the model config is beside; not a setting
        job = {k: v for k, v in self.worker.to_dict().items() if k not in hidden}
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
            memory_per_worker_gib=self.memory_per_worker,
        )
        if self.init_record is not None:
            job["init_from"] = self.init_record
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


def resolve_start(job: TrainJob, run: storage.Location, options) -> tuple:
    """(config, init record, source to write or None) of a run: from scratch, from
    ``--init-from`` (read here, once), or from the starting weights a resumed run stored."""
    if job.init_from is None:
        return resolve_config(job.model_config, list(job.overrides)), None, None
    from enlightengan.finetune import fine_tune_config, lr_origin

    given = given_settings(job.model_config, options)
    overrides = dict(parse_override(item) for item in job.overrides)
    stored = stored_init(run)
    shown = storage.display_uri(job.init_from)
    if stored is not None and stored.record.get("source") != shown:
        raise UserError(
            f"{storage.display_uri(run.uri)} was initialised from {stored.record.get('source')}, "
            f"not {shown}: use a new --output, or the same --init-from to resume it"
        )
    source = None if stored is not None else resolve_source(job.init_from, options)
    try:
        config = fine_tune_config(source or stored.config, given, overrides)
    except (ValueError, TypeError) as error:
        raise UserError(f"bad config: {error}") from None
    if stored is not None:
        return config, stored.record, None
    record = {**source.record(), "lr": config.optim.lr, "lr_origin": lr_origin(given, overrides)}
    return config, record, source


def plan_training(job: TrainJob) -> TrainPlan:
    """Check every setting and input; raises UserError with one line saying what to fix."""
    options = storage_of(job)
    run = storage.check_access(storage.resolve(job.output, options))
    config, init_record, init_source = resolve_start(job, run, options)
    use_gpu = job.use_gpu
    if config.generator.norm == "sync_batch" and not use_gpu:
        raise UserError(
            "generator.norm=sync_batch needs --gpus-per-worker 1 (SyncBatchNorm is GPU-only); "
            "use generator.norm=batch or instance on CPU"
        )
    min_workers = job.workers if job.min_workers is None else job.min_workers
    global_batch = global_batch_size(config.optim.batch_size, min_workers, job.workers)
    data = storage.check_access(storage.resolve(job.data, options))
    counts = domain_counts(job, options)
    steps_per_epoch = epoch_length(counts, global_batch)
    epochs = job.epochs if job.epochs is not None else config.optim.total_epochs
    total_steps = job.steps if job.steps is not None else epochs * steps_per_epoch
    cpus = job.cpus_per_worker if job.cpus_per_worker is not None else (1.0 if use_gpu else 0.5)
    worker = WorkerSettings(
        config=config.to_dict(),
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        global_batch=global_batch,
        experiment_name=EXPERIMENT_NAME,
        checkpoint_every=job.checkpoint_every,
        sample_every=max(0, job.sample_every),
        report_every=job.report_every,
        precision=resolve_precision(job.precision, "cuda" if use_gpu else "cpu"),
        shuffle_buffer=max(0, job.shuffle_buffer),
        in_memory_domains=in_memory_domains(job.data, options, min_workers, job.memory_mb),
        torch_threads=job.threads_per_worker,
        init_checkpoint=None if init_record is None else INIT_CHECKPOINT,
        ray_train_log_level=ray_train_log_level(),
    )
    return TrainPlan(
        config,
        worker,
        data,
        run,
        job.workers,
        use_gpu,
        cpus,
        job.keep_checkpoints,
        job.max_failures,
        counts,
        options,
        job.placement,
        min_workers,
        job.wait_for_workers,
        init_record,
        init_source,
        job.memory_per_worker,
    )


def domain_counts(job: TrainJob, options) -> dict[str, int]:
    """The images prepare wrote per domain; every worker needs at least one of each."""
    manifest = shards.check_prepared(job.data, options)
    counts = {domain: int(manifest["domains"][domain]["written"]) for domain in DOMAINS}
    for domain, count in counts.items():
        if count < job.workers:
            raise UserError(
                f"the {domain} domain has {count} images, fewer than --workers "
                f"{job.workers}: every worker needs at least one"
            )
    return counts


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


def write_run_config(plan: TrainPlan) -> None:
    """Write ``<run>/config.json``; a resumed run must keep the model and data settings."""
    target = plan.run.child(RUN_CONFIG_FILE)
    described = plan.describe()
    if storage.exists(target):
        previous = json.loads(storage.read_bytes(target))
        changed = _changed_settings(previous, described)
        if changed:
            raise UserError(
                f"{storage.display_uri(plan.run.uri)} already holds a run with other "
                f"settings ({', '.join(changed)}): use a new --output or the same settings"
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
    if (old_job.get("init_from") or {}).get("source") != (new_job.get("init_from") or {}).get(
        "source"
    ):
        changed.append("job.init_from")
    return changed


def start_line(plan: TrainPlan, written: bool) -> str:
    """One line on where a fine-tune run starts (writing its starting weights first when
    ``written`` and the run has none yet) and whether its discriminators are loaded or fresh."""
    from enlightengan.finetune import discriminator_line

    record = plan.init_record
    where = storage.display_uri(plan.run.child(INIT_CHECKPOINT).uri)
    if plan.init_source is None:
        return (
            f"train: resuming a run initialised from {record['source']} (sha256 "
            f"{record['sha256'][:12]}...); the source is not read again; {where} holds its "
            f"starting weights; {discriminator_line(record)}"
        )
    if written:
        write_init_checkpoint(plan.run, plan.config, plan.init_source, record)
    return (
        f"train: initialised from {record['source']} (sha256 {record['sha256'][:12]}...): "
        f"generator loaded, {discriminator_line(record)}; step, optimiser moments and "
        f"learning-rate schedule start fresh, lr {record['lr']:g} ({record['lr_origin']})"
        + (f"; starting weights in {where}" if written else "")
    )


def run_training(plan: TrainPlan):
    """Build the two datasets and the TorchTrainer, fit, and return Ray's Result."""
    import ray.train
    from ray.train.torch import TorchTrainer

    datasets = {
        domain: shards.read_domain(plan.data.uri, domain, options=plan.options, shuffle_files=True)
        for domain in DOMAINS
    }
    resources = plan_resources(plan)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=plan.worker.to_dict(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=(plan.min_workers, plan.workers) if plan.elastic else plan.workers,
            use_gpu=plan.use_gpu,
            resources_per_worker=resources,
            placement_strategy=plan.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=plan.worker.experiment_name,
            storage_path=plan.run.path,
            storage_filesystem=plan.run.filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=plan.keep_checkpoints),
            logging_config=ray.train.LoggingConfig(log_level=plan.worker.ray_train_log_level),
            worker_runtime_env=faults.worker_environment(),
            failure_config=ray.train.FailureConfig(
                max_failures=plan.max_failures,
                controller_failure_limit=startup_retries(plan.wait_for_workers_s),
            ),
        ),
        datasets=datasets,
    )
    return trainer.fit()


def ray_train_log_level() -> str:
    """The level of Ray Train's own lines on the console: INFO with ``-v`` (debug logging),
    else WARNING. Its INFO lines are a ``Reporting training result N: TrainingReport(...)`` of
    several hundred characters per report, worker-group starts, device moves and checkpoint
    paths, between the job's progress lines (the workers apply it to the report lines with
    ``report_lines_at``); Ray Train's own system log files keep them either way. A restarted
    worker group still shows: the workers' "resuming from" line."""
    return "INFO" if logging.getLogger().isEnabledFor(logging.DEBUG) else "WARNING"


def worker_group_start_timeout() -> float:
    """Seconds Ray Train waits for one worker group's resources (its own setting)."""
    from pipelines.ops.ray_internals import (
        DEFAULT_WORKER_GROUP_START_TIMEOUT_S,
        WORKER_GROUP_START_TIMEOUT_VARIABLE,
    )

    return float(
        os.environ.get(WORKER_GROUP_START_TIMEOUT_VARIABLE, DEFAULT_WORKER_GROUP_START_TIMEOUT_S)
    )


def startup_retries(wait_for_workers_s: float) -> int:
    """Ray Train retries a worker group that could not get its resources within its start
    timeout as a controller failure, without limit by default: the first try and this many
    retries make the ``--wait-for-workers`` deadline."""
    return max(0, math.ceil(wait_for_workers_s / worker_group_start_timeout()) - 1)


def failure_message(plan: TrainPlan, error: Exception) -> str:
    """One line on why training stopped, with what to do."""
    from pipelines.ops.ray_internals import is_worker_group_start_timeout

    run = storage.display_uri(plan.run.uri)
    if is_worker_group_start_timeout(getattr(error, "controller_failure", None)):
        wanted = plan.workers if not plan.elastic else f"{plan.min_workers}-{plan.workers}"
        return (
            f"train: the cluster could not place {wanted} workers "
            f"({plan.cpus_per_worker} CPUs{' and 1 GPU' if plan.use_gpu else ''} each) within "
            f"--wait-for-workers {plan.wait_for_workers_s:g} s (a node lost, or never there); "
            f"the checkpoints in {run} are kept: run the same command again when the capacity "
            f"is back, or add --min-workers to go on with fewer"
        )
    return (
        f"train: failed after {plan.max_failures} retries: {error}; the checkpoints in {run} "
        f"are kept, run the same command again to resume"
    )


def plan_resources(plan: TrainPlan) -> dict[str, float]:
    """Ray resources of each training worker."""
    resources = {"CPU": plan.cpus_per_worker}
    if plan.use_gpu:
        resources["GPU"] = 1.0
    if plan.memory_per_worker is not None:
        resources["memory"] = float(memory_bytes(plan.memory_per_worker))
    return resources


def resource_request(plan: TrainPlan) -> Request:
    """What the run needs from the cluster: its workers (at least ``--min-workers`` of them),
    and a CPU for Ray Data's shard-reading tasks beside them."""
    return Request(
        "train",
        task_cpus=DATA_TASK_CPUS,
        workers=plan.workers,
        per_worker=plan_resources(plan),
        min_workers=plan.min_workers if plan.elastic else None,
        one_per_node=plan.placement_strategy == "STRICT_SPREAD",
        flags={**WORKER_FLAGS, "one_per_node": "--placement PACK"},
        tasks="shard-reading tasks (Ray Data)",
    )


def run_train(job: TrainJob) -> Summary:
    """Resolve, check and write the run's config, then train (unless ``dry_run``); the
    summary's text starts with the resolved plan and, for a fine-tune, where it starts."""
    plan = plan_training(job)
    check_vgg_weights(plan.config)
    lines = [json.dumps(plan.describe(), indent=2, sort_keys=True)]
    if not job.dry_run:
        # Before anything is written: a run the cluster cannot place leaves no trace.
        init_ray(job.address, job.num_cpus, training=True)
        ensure_placeable(resource_request(plan), wait_s=job.wait_for_resources)
    write_run_config(plan)
    config_uri = storage.display_uri(plan.run.child(RUN_CONFIG_FILE).uri)
    if plan.init_record is not None:
        lines.append(start_line(plan, written=not job.dry_run))
        # Also logged now: the result text comes only after the training, which takes long.
        logger.info("%s", lines[-1])
    if job.dry_run:
        lines.append(f"dry run: config written to {config_uri}")
        data = {"dry_run": True, "config": config_uri, **plan.describe()}
        return Summary("train", data, text="\n".join(lines))
    import ray.train

    try:
        result = run_training(plan)
    except ray.train.TrainingFailedError as error:
        lines.append(failure_message(plan, error))
        return Summary("train", {"error": lines[-1]}, exit_code=1, text="\n".join(lines))
    return _finished(plan, result, lines)


def _finished(plan: TrainPlan, result, lines: list[str]) -> Summary:
    """The summary of a finished run: its last step, latest checkpoint and last metrics."""
    pointer = json.loads(storage.read_bytes(plan.run.child(LATEST_POINTER)))
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, float)}
    latest = f"{storage.display_uri(plan.run.uri).rstrip('/')}/{pointer['path']}"
    lines.append(
        f"train: finished at step {pointer['step']} of {plan.worker.total_steps}; latest "
        f"checkpoint {latest}; last metrics: "
        + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    )
    return Summary(
        "train",
        {
            "step": pointer["step"],
            "total_steps": plan.worker.total_steps,
            "latest_checkpoint": latest,
            "metrics": metrics,
        },
        text="\n".join(lines),
    )

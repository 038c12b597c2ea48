"""The settings of ``enlightengan train`` (:class:`TrainJob`) and its flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipelines.options import (
    PRECISIONS,
    RayFields,
    StorageFields,
    add_common_arguments,
    add_precision_arguments,
    add_ray_arguments,
    add_storage_arguments,
    add_worker_arguments,
    check_worker_resources,
    deprecated_flag,
)
from pipelines.specs import SpecError, choice

PLACEMENTS = ("PACK", "SPREAD", "STRICT_SPREAD")
# Top-level keys of an EnlightenGANConfig file: such a file given as --config is a model config.
MODEL_CONFIG_KEYS = frozenset({"generator", "discriminator", "loss", "optim", "augment"})


def explain_unknown_settings(names: set[str]) -> str | None:
    """A --config file holding a model config instead of job settings."""
    if names and names <= MODEL_CONFIG_KEYS:
        return "that file is a model config: pass it as --model-config"
    return None


@dataclass(frozen=True)
class TrainJob(StorageFields, RayFields):
    """Train EnlightenGAN on the shards in ``data``; checkpoints and logs go to ``output``.

    Field names are the flags' names with underscores (``overrides`` is ``--set``); see
    ``enlightengan train --help``. ``init_from``: fine-tune from ``"starter"``, a checkpoint or
    training run (local or ``s3://``) or an authors'-layout ``.pth`` (see
    :mod:`pipelines.train.init_source`). ``precision`` auto: bf16 autocast on GPUs and on CPUs with
    AMX, fp32 elsewhere (fp16 is not offered for training: the losses need bf16's range).
    """

    data: str
    output: str
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    threads_per_worker: int | None = None
    memory_per_worker: float | None = None
    model_config: str | None = None
    overrides: tuple[str, ...] = ()
    init_from: str | None = None
    steps: int | None = None
    epochs: int | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 500
    report_every: int = 50
    precision: str = choice(PRECISIONS, "auto")
    shuffle_buffer: int = 64
    memory_mb: float = 1024.0
    placement: str = choice(PLACEMENTS, "PACK")
    min_workers: int | None = None
    wait_for_workers: float = 600.0
    max_failures: int = 3
    dry_run: bool = False

    def validate(self) -> None:
        check_worker_resources(self)
        if self.workers < 1:
            raise SpecError("{workers} must be >= 1")
        if self.gpus_per_worker not in (0, 1):
            raise SpecError("train runs one process per GPU: {gpus_per_worker} is 0 or 1")
        if self.precision == "fp16":
            raise SpecError("train's {precision} is auto, fp32 or bf16")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise SpecError("{cpus_per_worker} must be > 0")
        if (self.steps is not None and self.steps < 1) or (
            self.epochs is not None and self.epochs < 1
        ):
            raise SpecError("{steps} and {epochs} must be >= 1")
        if self.steps is not None and self.epochs is not None:
            raise SpecError("give {steps} or {epochs}, not both")
        for name in ("checkpoint_every", "keep_checkpoints", "report_every"):
            if getattr(self, name) < 1:
                raise SpecError("{" + name + "} must be positive")
        if self.max_failures < 0:
            raise SpecError("{max_failures} must be >= 0")
        min_workers = self.workers if self.min_workers is None else self.min_workers
        if not 1 <= min_workers <= self.workers:
            raise SpecError(
                "{min_workers} must be between 1 and {workers} ({count})", count=self.workers
            )
        if self.wait_for_workers <= 0:
            raise SpecError("{wait_for_workers} must be > 0 seconds")

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", default=None, help="prepared shards: folder or s3:// prefix (required)"
    )
    parser.add_argument(
        "--output",
        "--run",
        dest="output",
        default=None,
        help="run folder or s3:// prefix; rerunning the same command resumes it (required)",
    )
    add_worker_arguments(
        parser,
        "Ray Train workers (one process each; DDP)",
        cpus_per_worker=None,
        cpus_help="CPUs each worker reserves (default 0.5 on CPU, 1 with a GPU); leave some "
        "free for Ray Data's decode tasks",
    )
    deprecated_flag(parser, "--gpus", "--gpus-per-worker 1", "gpus_per_worker", nargs=0, const=1.0)
    deprecated_flag(parser, "--cpu", "no flag (CPU workers are the default)", "cpu", nargs=0)
    deprecated_flag(
        parser, "--torch-threads", "--threads-per-worker", "threads_per_worker", type=int
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model-config",
        default=None,
        metavar="FILE",
        help="EnlightenGANConfig JSON (full or partial) over the paper's defaults",
    )
    model.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        metavar="SECTION.FIELD=VALUE",
        help="override a model config field, e.g. optim.lr=2e-4 (repeatable)",
    )
    model.add_argument(
        "--init-from",
        default=None,
        metavar="SOURCE",
        help="fine-tune instead of starting from random weights. SOURCE: 'starter' (the model "
        "shipped in the package), a checkpoint folder or training run (its latest complete "
        "checkpoint; local or s3://, as --checkpoint elsewhere), or a .pth generator in the "
        "authors' layout (as import-official reads it). The generator's architecture and the "
        "source's config (its recipe) come from SOURCE: --set / --model-config change the "
        "rest, and a generator setting that contradicts SOURCE is an error. Discriminators are "
        "loaded where SOURCE has them (a training checkpoint), fresh otherwise. The step "
        "counter, Adam's moments and the learning-rate schedule start fresh, and optim.lr "
        "defaults to 2e-5 (enlightengan.finetune.FINETUNE_LR) instead of 1e-4 unless given. "
        "The source (URI, sha256) is recorded in config.json; rerunning the same command "
        "resumes the run and never reads SOURCE again",
    )
    add_precision_arguments(model, backend=None)
    schedule = parser.add_argument_group("schedule")
    length = schedule.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="total optimisation steps")
    length.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="total epochs (default: optim.epochs_constant + epochs_decay)",
    )
    schedule.add_argument("--checkpoint-every", type=int, default=500, help="steps")
    schedule.add_argument("--keep-checkpoints", type=int, default=3, help="last K kept")
    schedule.add_argument(
        "--sample-every", type=int, default=500, help="sample grid every N steps (0: never)"
    )
    schedule.add_argument(
        "--report-every",
        type=int,
        default=50,
        help="ray.train.report metrics every N steps (checkpoints always report; each report "
        "is a barrier across workers); metrics.jsonl records every step whatever this is",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--shuffle-buffer",
        type=int,
        default=64,
        help="rows in each worker's local shuffle buffer per domain (0: off)",
    )
    data.add_argument(
        "--memory-mb",
        type=float,
        default=1024.0,
        help="per-worker budget for keeping its decoded shard in memory after the first pass "
        "(smaller domain first); larger shards stream every epoch (0: always stream)",
    )
    cluster = parser.add_argument_group("placement and failures")
    cluster.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="PACK",
        help="worker placement across nodes (STRICT_SPREAD: one worker per node)",
    )
    cluster.add_argument(
        "--min-workers",
        type=int,
        default=None,
        help="continue on this many workers or more when nodes are lost, with the same global "
        "batch (default: --workers, i.e. wait for the lost capacity to come back)",
    )
    cluster.add_argument(
        "--wait-for-workers",
        type=float,
        default=600.0,
        help="seconds to wait for the workers' resources (at the start, while other work "
        "holds them, and after a node is lost) before the job ends with a message; with "
        "--min-workers, Ray waits below the minimum without a deadline. A cluster too small "
        "for the workers stops the job at once (see --wait-for-resources)",
    )
    cluster.add_argument("--max-failures", type=int, default=3, help="worker-group retries")
    add_common_arguments(
        parser, dry_run="resolve and print the settings, write config.json; train nothing"
    )
    add_storage_arguments(parser)
    add_ray_arguments(parser)

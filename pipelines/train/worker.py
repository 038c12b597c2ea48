"""The loop each Ray Train worker runs: stream both domains, call the unchanged training step.

Ray appears in a few easy-to-spot places only: ``get_dataset_shard`` (one streaming shard per
domain), ``prepare_model`` (DDP for G, D and D_patch; the frozen VGG just moves to the device),
``get_checkpoint`` (resume) and ``report`` (metrics and checkpoints; a barrier, so every rank
calls it at the same steps). Everything else is the plain loop that
:func:`enlightengan.training.training_step` documents.

Unpaired sampling (as the reference): each worker cycles through its shard of each domain
independently, with its own shuffle per pass, so a training epoch is ``steps_per_epoch`` steps
(the larger domain over the global batch) and the smaller domain simply wraps around.
A background thread fetches rows and augments them while the current step computes; the time
the step loop still waits for a batch is reported as ``data_wait_share``.
"""

from __future__ import annotations

import json
import logging
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch

from enlightengan.augment import make_training_batch
from enlightengan.checkpoint import load_checkpoint, save_checkpoint
from enlightengan.config import AugmentConfig, EnlightenGANConfig
from enlightengan.training import (
    LOSS_TERMS,
    OPTIONAL_LOSS_TERMS,
    autocast_context,
    build_modules,
    build_optimizers,
    learning_rate,
    set_learning_rate,
    step_generator,
    training_step,
)
from enlightengan.vgg import build_vgg_features
from pipelines import plots
from pipelines.io import storage
from pipelines.io.images import decode_png
from pipelines.io.shards import DOMAINS
from pipelines.train import faults

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint_"
LATEST_POINTER = "latest_checkpoint.json"
SAMPLE_COUNT = 4


@dataclass(frozen=True)
class WorkerSettings:
    """What the driver resolved for the workers (JSON-friendly, never a secret)."""

    config: dict
    total_steps: int
    steps_per_epoch: int
    global_batch: int
    experiment_name: str = "train"
    checkpoint_every: int = 500
    sample_every: int = 500
    report_every: int = 1
    precision: str = "fp32"
    shuffle_buffer: int = 64
    in_memory_domains: tuple[str, ...] = ()
    torch_threads: int | None = None
    init_checkpoint: str | None = None
    ray_train_log_level: str = "WARNING"

    def __post_init__(self):
        object.__setattr__(self, "in_memory_domains", tuple(self.in_memory_domains))

    def per_worker_batch(self, world_size: int) -> int:
        """Each worker's share of the global batch: an elastic run that lost workers keeps the
        global batch (the driver checked that every allowed worker count divides it)."""
        return self.global_batch // world_size

    def model_config(self) -> EnlightenGANConfig:
        return EnlightenGANConfig.from_dict(self.config).validate()

    def to_dict(self) -> dict:
        return asdict(self)


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def augment_generator(seed: int, rank: int) -> torch.Generator:
    """The augmentation rng of one worker: distinct per rank, fixed by the seed.

    Darkening and patch corners do not come from it: each step draws them from
    ``step_generator(seed, step)``, the same on every rank.
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + 2 * rank)


def _as_image(value) -> np.ndarray:
    """A shard's ``image`` cell: PNG bytes (decoded here) or an already decoded array."""
    if isinstance(value, bytes | bytearray | memoryview):
        return decode_png(bytes(value))
    return np.asarray(value, dtype=np.uint8)


def cycle_rows(
    shard, batch_size: int, shuffle_buffer: int, seed: int, keep_in_memory: bool = False
) -> Iterator[np.ndarray]:
    """Images of a dataset shard forever, one shuffled pass after another.

    Every pass streams the shard again (a new Ray Data execution) unless ``keep_in_memory``:
    then the first pass is streamed and kept, and later passes reshuffle it in memory. The
    driver decides that per domain for all workers alike (a pass of a streaming split is a
    barrier across workers), and only when the shard fits the memory budget.
    """
    pass_seed = seed
    while True:
        kept: list[np.ndarray] = []
        seen = 0
        for batch in shard.iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=shuffle_buffer or None,
            local_shuffle_seed=pass_seed if shuffle_buffer else None,
        ):
            for value in batch["image"]:
                seen += 1
                image = _as_image(value)
                if keep_in_memory:
                    kept.append(image)
                yield image
        if seen == 0:
            raise RuntimeError("a dataset shard is empty: each domain needs >= 1 image per worker")
        if keep_in_memory:
            order_rng = np.random.default_rng(pass_seed)
            while True:
                for index in order_rng.permutation(len(kept)):
                    yield kept[index]
        pass_seed += 7919


@dataclass
class PreparedBatch:
    low: torch.Tensor
    normal: torch.Tensor
    augment_state: torch.Tensor  # the augmentation rng right after this batch was drawn


class BatchPrefetcher:
    """Fetch and augment the next batches in a thread while the current step computes."""

    def __init__(self, low_rows, normal_rows, batch_size, augment: AugmentConfig, rng, depth=2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._args = (low_rows, normal_rows, batch_size, augment, rng)
        self._thread = threading.Thread(target=self._produce, daemon=True, name="batch-prefetch")
        self._thread.start()

    def _produce(self) -> None:
        low_rows, normal_rows, batch_size, augment, rng = self._args
        try:
            while not self._stop.is_set():
                lows = [next(low_rows) for _ in range(batch_size)]
                normals = [next(normal_rows) for _ in range(batch_size)]
                low, normal = make_training_batch(lows, normals, augment, rng)
                item = PreparedBatch(low, normal, rng.get_state())
                while not self._stop.is_set() and not self._put(item):
                    pass
        except BaseException as error:  # surfaced to the training thread by next()
            self._queue.put(error)

    def _put(self, item) -> bool:
        try:
            self._queue.put(item, timeout=0.2)
        except queue.Full:
            return False
        return True

    def next(self) -> PreparedBatch:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"the input pipeline failed: {item}") from item
        return item

    def close(self) -> None:
        self._stop.set()


class RunFiles:
    """Files rank 0 keeps in the run folder (beside Ray's ``<name>/checkpoint_*``)."""

    def __init__(self, filesystem, run_path: str):
        self.filesystem, self.run_path = filesystem, run_path.rstrip("/")

    def location(self, key: str) -> storage.Location:
        path = f"{self.run_path}/{key}"
        return storage.Location(self.filesystem, path, path)

    def write(self, key: str, data: bytes) -> None:
        storage.write_bytes(self.location(key), data)

    def read_text(self, key: str) -> str | None:
        location = self.location(key)
        return storage.read_bytes(location).decode() if storage.exists(location) else None

    def load_history(self, up_to_step: int) -> list[dict]:
        text = self.read_text("metrics.jsonl") or ""
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [record for record in records if record.get("step", 0) <= up_to_step]

    def write_history(self, history: list[dict], steps_per_epoch: int) -> None:
        self.write("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history).encode())
        self.write(
            "epochs.jsonl",
            "".join(json.dumps(r) + "\n" for r in epoch_means(history, steps_per_epoch)).encode(),
        )


def epoch_means(history: list[dict], steps_per_epoch: int) -> list[dict]:
    """Per-epoch means of every numeric metric of the step records."""
    by_epoch: dict[int, list[dict]] = {}
    for record in history:
        by_epoch.setdefault((record["step"] - 1) // steps_per_epoch, []).append(record)
    summaries = []
    for epoch, records in sorted(by_epoch.items()):
        keys = [
            k
            for k in records[0]
            if k not in ("step", "epoch", "time") and isinstance(records[0][k], float | int)
        ]
        summary = {"epoch": epoch, "steps": len(records), "last_step": records[-1]["step"]}
        summary.update({k: float(np.mean([r[k] for r in records if k in r])) for k in keys})
        summaries.append(summary)
    return summaries


def _restore_state(checkpoint) -> object | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_checkpoint(directory)


def _latest_state(run: RunFiles) -> object | None:
    """The newer of Ray Train's latest checkpoint and the run's ``latest_checkpoint.json``.

    Ray Train counts a reported checkpoint only once its controller has collected the report;
    a node lost right after a checkpoint can take the report with it, and Ray would restart
    from an older checkpoint (or from scratch). The pointer is written after the checkpoint is
    complete in storage, so it is safe to resume from."""
    restored = _restore_state(ray.train.get_checkpoint())
    text = run.read_text(LATEST_POINTER)
    if text is None:
        return restored
    pointer = json.loads(text)
    if restored is not None and restored.step >= pointer["step"]:
        return restored
    location = run.location(pointer["path"])
    log.info(f"train: resuming from {pointer['path']} (step {pointer['step']})")
    return _restore_state(ray.train.Checkpoint(location.path, filesystem=run.filesystem))


def load_starting_weights(modules, run: RunFiles, key: str) -> list[str]:
    """Load a fine-tune run's starting checkpoint (``<run>/<key>``, written by the driver) into
    freshly built ``modules``; returns the networks loaded (discriminators it lacks stay
    fresh). Only a run with no checkpoint of its own starts here."""
    from enlightengan.finetune import apply_init_checkpoint

    location = run.location(key)
    state = _restore_state(ray.train.Checkpoint(location.path, filesystem=run.filesystem))
    return apply_init_checkpoint(modules, state)


def _average_over_workers(losses: dict[str, float], world_size: int) -> dict[str, float]:
    if world_size == 1:
        return losses
    names = list(losses)
    values = torch.tensor([losses[name] for name in names], dtype=torch.float64)
    torch.distributed.all_reduce(values)
    return {name: float(v) / world_size for name, v in zip(names, values, strict=True)}


def _gather_worker_states(rng: dict[str, torch.Tensor], world_size: int) -> tuple[dict, list]:
    """Every rank's generator states (keyed ``<name>_rank<r>``) and Ray node id, gathered on
    all ranks (a collective: every rank calls it at the same step)."""
    local = {"rng": rng, "node": ray.get_runtime_context().get_node_id()}
    gathered = [local] if world_size == 1 else [None] * world_size
    if world_size > 1:
        torch.distributed.all_gather_object(gathered, local)
    states = {
        f"{name}_rank{r}": s for r, part in enumerate(gathered) for name, s in part["rng"].items()
    }
    return states, [part["node"] for part in gathered]


def _sample_grid(generator: torch.nn.Module, low: torch.Tensor, device, autocast, caption) -> bytes:
    network = getattr(generator, "module", generator)  # never a DDP forward on one rank
    inputs = low[:SAMPLE_COUNT]
    network.eval()
    try:
        with torch.no_grad(), autocast_context(device, autocast):
            enhanced = network(inputs.to(device)).float().cpu()
    finally:
        network.train()
    return plots.sample_grid_png({"input": list(inputs), "enhanced": list(enhanced)}, caption)


def report_lines_at(level: str) -> None:
    """Ray Train logs a line per ``ray.train.report`` in each worker ("Reporting training result
    N: TrainingReport(...)", several hundred characters) on a logger named after its source
    file, outside the ``ray.train`` loggers that its ``LoggingConfig`` filters (Ray 2.60): give
    that logger the run's level for Ray Train's lines (WARNING unless ``-v``)."""
    from pipelines.ops.ray_internals import report_logger_names

    for name in report_logger_names():
        logging.getLogger(name).setLevel(level)


@dataclass(frozen=True)
class WorkerPlace:
    """Where this worker runs: its rank among ``world`` workers, the run folder and the device."""

    rank: int
    world: int
    run: RunFiles
    device: torch.device
    autocast: torch.dtype | None


@dataclass
class TrainingState:
    """What the step loop advances: the networks, their optimisers, the augmentation rng, the
    steps done and (rank 0 only) the step records so far."""

    config: EnlightenGANConfig
    modules: object
    optimizers: object
    augment_rng: torch.Generator
    step: int
    history: list[dict]


def train_loop_per_worker(loop_config: dict) -> None:
    """Entry point given to ``TorchTrainer``; ``loop_config`` is ``WorkerSettings.to_dict()``."""
    settings = WorkerSettings(**loop_config)
    place = _set_up_worker(settings)
    state = _start_or_resume(settings, place)
    if state.step >= settings.total_steps:
        return
    prefetcher = _start_prefetcher(settings, place, state)
    try:
        _train_until_done(settings, place, state, prefetcher)
    finally:
        prefetcher.close()
    if place.rank == 0:
        curve = plots.loss_curve_png(state.history, LOSS_TERMS + tuple(OPTIONAL_LOSS_TERMS))
        place.run.write("loss_curve.png", curve)


def _set_up_worker(settings: WorkerSettings) -> WorkerPlace:
    """This worker's rank, run folder and device; its torch threads and log levels."""
    context = ray.train.get_context()
    ray_storage = context.get_storage()
    device = ray.train.torch.get_device()
    report_lines_at(settings.ray_train_log_level)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return WorkerPlace(
        rank=context.get_world_rank(),
        world=context.get_world_size(),
        run=RunFiles(ray_storage.storage_filesystem, ray_storage.storage_fs_path),
        device=device,
        autocast=torch.bfloat16 if settings.precision == "bf16" else None,
    )


def _start_or_resume(settings: WorkerSettings, place: WorkerPlace) -> TrainingState:
    """The networks (DDP-wrapped), optimisers and rng at step 0, or as the latest checkpoint
    left them."""
    config = settings.model_config()
    restored = _latest_state(place.run)
    modules = _build_networks(settings, config, place, restored)
    optimizers = build_optimizers(modules, config.optim)
    augment_rng = augment_generator(config.seed, place.rank)
    step = 0
    if restored is not None:
        step = restored.step
        augment_rng = _resume_optimizers_and_rng(restored, optimizers, config, place.rank)
    history = place.run.load_history(step) if place.rank == 0 else []
    return TrainingState(config, modules, optimizers, augment_rng, step, history)


def _build_networks(settings: WorkerSettings, config, place: WorkerPlace, restored):
    """The modules with the restored (or fine-tune starting) weights, prepared for DDP."""
    vgg = build_vgg_features(config.loss.vgg_weights, flavour=config.loss.vgg_flavour)
    torch.manual_seed(config.seed)  # identical initial weights on every rank and attempt
    modules = build_modules(config, vgg)
    if restored is not None:
        for name, network in modules.trainable().items():
            network.load_state_dict(restored.network_states[name])
    elif settings.init_checkpoint:
        loaded = load_starting_weights(modules, place.run, settings.init_checkpoint)
        if place.rank == 0:
            log.info(f"train: step 0 from {settings.init_checkpoint}/: {', '.join(loaded)} loaded")
    modules.sfp.to(place.device)
    modules.generator = ray.train.torch.prepare_model(modules.generator)
    modules.global_d = ray.train.torch.prepare_model(modules.global_d)
    modules.patch_d = ray.train.torch.prepare_model(modules.patch_d)
    return modules


def _resume_optimizers_and_rng(restored, optimizers, config, rank: int) -> torch.Generator:
    """Load the optimiser states and torch's rng from the checkpoint; return this rank's
    augmentation rng as it was saved."""
    for name, optimizer in optimizers.as_dict().items():
        optimizer.load_state_dict(restored.optimizer_states[name])
    rng = restored.rng_state
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if f"augment_rank{rank}" not in rng:
        # A different worker count: a fresh stream, still reproducible from the step.
        return augment_generator(config.seed + restored.step, rank)
    augment_rng = augment_generator(config.seed, rank)
    augment_rng.set_state(rng[f"augment_rank{rank}"])
    return augment_rng


def _start_prefetcher(settings: WorkerSettings, place: WorkerPlace, state: TrainingState):
    """The background thread that draws and augments this worker's batches from both domains."""
    shuffle_seed = state.config.seed * 101 + place.rank * 13 + state.step
    per_worker_batch = settings.per_worker_batch(place.world)
    return BatchPrefetcher(
        *(
            cycle_rows(
                ray.train.get_dataset_shard(domain),
                per_worker_batch,
                settings.shuffle_buffer,
                shuffle_seed + index,
                keep_in_memory=domain in settings.in_memory_domains,
            )
            for index, domain in enumerate(DOMAINS)
        ),
        per_worker_batch,
        state.config.augment,
        state.augment_rng,
    )


def _train_until_done(settings, place: WorkerPlace, state: TrainingState, prefetcher) -> None:
    """Steps until ``total_steps``: each one recorded, sampled, checkpointed or reported as the
    settings say."""
    fail_step = faults.fault_step()
    current_lr = None
    progress = ProgressLine(settings.total_steps, state.step)
    while state.step < settings.total_steps:
        epoch = state.step // settings.steps_per_epoch
        lr = learning_rate(epoch, state.config.optim)
        if lr != current_lr:
            set_learning_rate(state.optimizers, lr)
            current_lr = lr
        batch, record = _take_step(settings, place, state, prefetcher)
        faults.fail_once_at(fail_step, state.step, place.rank, place.world, place.run)
        record = {"step": state.step, "epoch": epoch, "lr": lr, **record}
        if place.rank == 0:
            state.history.append(record)
            progress.update(record)
            _write_sample(settings, place, state, batch, record)
        _checkpoint_or_report(settings, place, state, batch, record)


def _take_step(settings, place: WorkerPlace, state: TrainingState, prefetcher) -> tuple:
    """One training step on the next batch (``state.step`` advances): the batch and the step's
    losses averaged over the workers, with its timings."""
    started = time.perf_counter()
    batch = prefetcher.next()
    waited = time.perf_counter() - started
    low = batch.low.to(place.device, non_blocking=True)
    normal = batch.normal.to(place.device, non_blocking=True)
    step_rng = step_generator(state.config.seed, state.step)
    losses = training_step(
        state.modules, state.optimizers, low, normal, state.config, step_rng, place.autocast
    )
    losses = _average_over_workers(losses, place.world)
    elapsed = time.perf_counter() - started
    state.step += 1
    return batch, {
        **losses,
        "workers": place.world,
        "images_per_s": settings.per_worker_batch(place.world) * place.world / elapsed,
        "step_time_s": elapsed,
        "data_wait_share": waited / elapsed,
        "time": time.time(),
    }


def _write_sample(settings, place: WorkerPlace, state: TrainingState, batch, record) -> None:
    """Rank 0, every ``sample_every`` steps: a grid of the batch's inputs and outputs."""
    step = record["step"]
    if not settings.sample_every or step % settings.sample_every:
        return
    caption = f"step {step} epoch {record['epoch']}"
    grid = _sample_grid(state.modules.generator, batch.low, place.device, place.autocast, caption)
    place.run.write(f"samples/step_{step:08d}.png", grid)


def _checkpoint_or_report(settings, place: WorkerPlace, state: TrainingState, batch, record):
    """Every ``checkpoint_every`` steps and at the end, a checkpoint (then rank 0 writes the
    metrics and the latest-checkpoint pointer); else every ``report_every`` steps, the metrics
    alone. Every rank calls it at the same steps (``ray.train.report`` is a barrier)."""
    step = record["step"]
    if step % settings.checkpoint_every == 0 or step == settings.total_steps:
        rng_state, nodes = _gather_worker_states({"augment": batch.augment_state}, place.world)
        rng_state["torch"] = torch.get_rng_state()
        _checkpoint_and_report(
            settings, state.config, state.modules, state.optimizers, record, rng_state, nodes
        )
        if place.rank == 0:
            place.run.write_history(state.history, settings.steps_per_epoch)
            pointer = {
                "step": step,
                "path": f"{settings.experiment_name}/{checkpoint_dir_name(step)}",
            }
            place.run.write(LATEST_POINTER, json.dumps(pointer, indent=2).encode())
    elif step % settings.report_every == 0:
        ray.train.report(record)


class ProgressLine:
    """Rank 0 prints one line at most every ``interval`` seconds, and at the last step: step,
    epoch, learning rate, the main losses, throughput and the time left.

    This process's first step is start-up (the data pipeline's first blocks, DDP's first
    synchronisation, allocator warm-up: tens of seconds on a small machine, where a step then
    takes a fraction of that), so it counts in neither speed nor time left: those come from the
    steps after it, over the last ``window`` steps (a moving average), and only once
    :data:`ETA_AFTER_STEPS` of them are timed; until then the line says so. ``clock``: seconds,
    as ``time.perf_counter``."""

    def __init__(
        self,
        total_steps: int,
        first_step: int,
        interval: float = 10.0,
        window: int = 50,
        clock=time.perf_counter,
    ):
        self.total_steps, self.interval, self.clock = total_steps, interval, clock
        self.first_step, self.started = first_step, clock()
        self.last_print = self.started
        self.timed: deque[tuple[int, float]] = deque(maxlen=window + 1)

    def update(self, record: dict) -> None:
        now = self.clock()
        step = record["step"]
        self.timed.append((step, now))  # the first entry: the end of the start-up step
        if now - self.last_print < self.interval and step < self.total_steps:
            return
        self.last_print = now
        # A logger, not print: Ray Train patches print to both echo and log it (two lines).
        log.info(
            f"train: step {step}/{self.total_steps} ({100 * step / self.total_steps:.0f}%), "
            f"epoch {record['epoch']}, lr {record['lr']:.2e}, g_total {record['g_total']:.3f}, "
            f"d_global {record['d_global']:.3f}, {self.pace(step, now)}"
        )

    def pace(self, step: int, now: float) -> str:
        """Speed and time left, or what the first step took while too few are timed."""
        (first, first_end), (last, last_end) = self.timed[0], self.timed[-1]
        timed = last - first
        if timed < ETA_AFTER_STEPS or last_end <= first_end:
            startup = first_end - self.started
            if step >= self.total_steps:
                return f"{step - self.first_step} steps in {format_duration(now - self.started)}"
            return (
                f"first step {startup:.1f} s (start-up); time left once "
                f"{ETA_AFTER_STEPS} more steps are timed"
            )
        rate = timed / (last_end - first_end)
        left = (self.total_steps - step) / rate
        return f"{rate:.2f} steps/s, {format_duration(left)} left"


# Steps timed after the first one before the progress line estimates the time left.
ETA_AFTER_STEPS = 3


def format_duration(seconds: float) -> str:
    """``42 s``, ``17 min``, ``3.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _checkpoint_and_report(
    settings, config, modules, optimizers, record, rng_state, worker_nodes
) -> None:
    """Rank 0 writes the checkpoint into a temporary folder; every rank reports (a barrier)."""
    rank = ray.train.get_context().get_world_rank()
    name = checkpoint_dir_name(record["step"])
    with tempfile.TemporaryDirectory(prefix="enlightengan-ckpt-") as directory:
        checkpoint = None
        if rank == 0:
            save_checkpoint(
                directory,
                config=config,
                networks=modules.trainable(),
                optimizers=optimizers.as_dict(),
                trainer_state={
                    "step": record["step"],
                    "epoch": record["epoch"],
                    "lr": record["lr"],
                    "steps_per_epoch": settings.steps_per_epoch,
                    "total_steps": settings.total_steps,
                    "per_worker_batch": settings.per_worker_batch(
                        ray.train.get_context().get_world_size()
                    ),
                    "world_size": ray.train.get_context().get_world_size(),
                    "worker_nodes": worker_nodes,
                },
                rng_state=rng_state,
            )
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(record, checkpoint=checkpoint, checkpoint_dir_name=name)

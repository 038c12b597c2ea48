"""``enlightengan demo``: the whole pipeline on photos that ship inside installed wheels.

No network, no GPU, no S3 server: builds a small unpaired set from scikit-image,
scikit-learn and matplotlib sample photos (low-light copies darkened with gamma 2.2 then
x0.25), then runs prepare -> a short CPU fine-tune of the shipped starter model on those photos
(``train --init-from starter``; ``--from-scratch``: a tiny model from random weights instead) ->
enhance -> evaluate, all through local folders and one in-process Ray. The contact sheet's
columns: input | gamma | histogram equalisation | starter | the model trained here. A second
run reuses the photos, shards, training run and enhanced images. ``--s3`` runs the same jobs
against a bucket on a local SeaweedFS server instead of folders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.demo.spec import DemoJob
from pipelines.enhance.spec import EnhanceJob
from pipelines.errors import UserError
from pipelines.evaluate.spec import EvaluateJob
from pipelines.options import STARTER_NAME, Summary
from pipelines.prepare.spec import PrepareJob
from pipelines.train.spec import TrainJob

logger = logging.getLogger(__name__)

DEMO_BUCKET = "enlightengan-demo"
DEMO_PROFILE = "enlightengan-demo"
EXPOSURE_TARGET = 0.5
STARTER_TITLE = "starter"
FINETUNED_TITLE = "starter fine-tuned on these photos"
# Fine-tuning keeps the starter's recipe (its config: losses, crops, discriminators) except
# the batch, which sets the epoch length the schedule below is fitted with.
FINETUNE_BATCH = 4
FINETUNE_SETTINGS = (f"optim.batch_size={FINETUNE_BATCH}",)
TINY_BATCH = 2
TINY_MODEL = (
    "generator.base_channels=8",
    "discriminator.base_channels=16",
    "discriminator.patch_size=16",
    "discriminator.num_patches=2",
    "augment.crop_size=64",
    f"optim.batch_size={TINY_BATCH}",
)


def run_demo(job: DemoJob) -> Summary:
    """The five steps (see the module notes); returns the demo's brightness and NIQE summary."""
    out = Path(job.output).resolve()
    if job.dry_run:
        base = f"s3://{DEMO_BUCKET}" if job.s3 else str(out)
        run_name = f"{_mode(job)}-{job.train_steps}-steps-<settings hash>"
        steps = {
            "photos": f"{out}/photos (from installed wheels)",
            "prepare": f"{base}/shards",
            "train": f"{base}/{run_name}",
            "enhance": f"{base}/enhanced/{run_name}",
            "evaluate": f"{out}/evaluation",
        }
        lines = [
            f"[demo {number}/5] {step} -> {where}"
            for number, (step, where) in enumerate(steps.items(), start=1)
        ]
        return Summary("demo", {"dry_run": True, "steps": steps}, text="\n".join(lines))
    transcript = _Transcript()
    if not job.s3:
        return _run_steps(job, out, str(out), transcript, {})
    from pipelines.ops.local_services import create_bucket, start_object_store, stop_process

    transcript.note(
        f"[demo] starting a local SeaweedFS S3 server on 127.0.0.1, data in {out / 's3'}"
    )
    store = start_object_store(out / "s3")
    try:
        create_bucket(store, DEMO_BUCKET)
        storage_fields = _demo_storage(store, out / "s3" / "credentials")
        transcript.note(f"[demo] bucket s3://{DEMO_BUCKET} at {store.endpoint_url}")
        return _run_steps(job, out, f"s3://{DEMO_BUCKET}", transcript, storage_fields)
    finally:
        stop_process(store.pid, str(out / "s3"))


def _demo_storage(store, credentials_file: Path) -> dict:
    """The storage fields every step's spec gets for the local server: its keys in a
    credentials file of their own (owner-only) under a profile of their own, so that neither
    the process environment nor the user's AWS profiles are touched."""
    keys = store.environment()
    credentials_file.unlink(missing_ok=True)
    # Created owner-only, so the keys are never readable by others, not even for a moment.
    descriptor = os.open(credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(
            f"[{DEMO_PROFILE}]\n"
            f"aws_access_key_id = {keys['AWS_ACCESS_KEY_ID']}\n"
            f"aws_secret_access_key = {keys['AWS_SECRET_ACCESS_KEY']}\n"
        )
    return {
        "endpoint_url": store.endpoint_url,
        "profile": DEMO_PROFILE,
        "region": store.region,
        "credentials_file": str(credentials_file),
    }


@dataclass
class _Transcript:
    """What the demo says as it goes: each step's line, logged at once as progress, and the
    result texts of the jobs it runs; the demo's summary text is the whole of it."""

    lines: list[str] = field(default_factory=list)

    def note(self, line: str) -> None:
        logger.info("%s", line)
        self.lines.append(line)

    def run(self, runner, job) -> None:
        """Run one of the demo's jobs; its result text joins the transcript."""
        summary = runner(job)
        if summary.text:
            self.lines.append(summary.text)
        if summary.exit_code != 0:
            raise UserError(f"demo step {summary.job} failed with exit code {summary.exit_code}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass(frozen=True)
class _TrainedRun:
    """The demo's training run: its folder name (one per setting), location and title."""

    name: str
    folder: str
    title: str


def _run_steps(
    job: DemoJob, out: Path, base: str, transcript: _Transcript, storage_fields: dict
) -> Summary:
    """The five steps with every job's data under ``base`` (``out`` itself, or a bucket, which
    ``storage_fields`` reach); the evaluation report and a copy of the enhanced images always
    land in ``out``."""
    from pipelines.io.storage import StorageOptions
    from pipelines.ops.ray_runtime import init_ray

    # One Ray for all five steps, started as training needs it (the first step would not).
    init_ray(job.address, job.num_cpus, training=True)
    started = time.perf_counter()
    shared = {
        "address": job.address,
        "num_cpus": job.num_cpus,
        "wait_for_resources": job.wait_for_resources,
        **storage_fields,
    }
    options = StorageOptions(**storage_fields)
    photos_dir = out / "photos"
    photos = _photos_step(photos_dir, base, out, transcript, options)
    shards = _prepare_step(photos, f"{base}/shards", shared, transcript, options)
    run = _train_step(job, shards, base, shared, transcript, options)
    enhanced = f"{base}/enhanced/{run.name}"
    enhanced_dir = out / "enhanced" / run.name
    _enhance_step(photos, enhanced, run, shared, transcript)
    if base != str(out):
        _download(enhanced, enhanced_dir, options)
    evaluation = out / "evaluation"
    _evaluate_step(photos, evaluation, run, shared, transcript)
    summary = _demo_summary(job, run, photos_dir / "low", enhanced_dir, evaluation)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    closing = _results(summary, run, enhanced, evaluation, out, time.perf_counter() - started)
    transcript.lines.append(closing)
    return Summary("demo", summary, text=transcript.text)


def _photos_step(photos_dir: Path, base: str, out: Path, transcript: _Transcript, options) -> str:
    """Step 1: the photo set in ``photos_dir`` (built once), uploaded when ``base`` is a
    bucket; returns where the jobs read it."""
    from pipelines.demo.sample_photos import build_photo_dataset, upload_folder
    from pipelines.io import storage

    if not (photos_dir / "low").is_dir():
        transcript.note(
            f"[demo 1/5] building an unpaired photo set from installed wheels in {photos_dir}"
        )
        build_photo_dataset(photos_dir)
    else:
        transcript.note(f"[demo 1/5] reusing photos in {photos_dir}")
    photos = f"{base}/photos"
    if base != str(out):
        bucket = storage.resolve(photos, options)
        if not storage.list_files(bucket.child("low")):
            upload_folder(photos_dir, bucket.filesystem, bucket.path)
            transcript.note(f"[demo 1/5] uploaded the photos to {photos}")
    return photos


def _prepare_step(photos: str, shards: str, shared: dict, transcript: _Transcript, options) -> str:
    """Step 2: the photos as training shards in ``shards``, unless a finished prepare left them."""
    from pipelines.io import storage
    from pipelines.prepare.job import run_prepare

    if storage.exists(storage.resolve(shards, options).child("manifest.json")):
        transcript.note(f"[demo 2/5] reusing shards in {shards}")
        return shards
    transcript.note("[demo 2/5] prepare: photos -> Parquet shards")
    # Shards without a manifest are an interrupted earlier prepare: replace them.
    job = PrepareJob(
        low=f"{photos}/low", normal=f"{photos}/normal", output=shards, overwrite=True, **shared
    )
    transcript.run(run_prepare, job)
    return shards


def _train_step(
    job: DemoJob, shards: str, base: str, shared: dict, transcript: _Transcript, options
) -> _TrainedRun:
    """Step 3: fine-tune the starter (or train the tiny model from scratch); resumes a run of
    the same settings."""
    from pipelines.train.job import run_train

    steps = job.train_steps
    overrides = _overrides(job, shards, options)
    # One run folder per setting, so a rerun with other --steps/--lr/--exposure or the other
    # mode trains anew instead of being refused as a changed run, and the same settings resume.
    tag = hashlib.sha256(repr((steps, job.from_scratch, overrides)).encode()).hexdigest()[:8]
    name = f"{_mode(job)}-{steps}-steps-{tag}"
    title = f"{steps}-step model from scratch" if job.from_scratch else FINETUNED_TITLE
    run = _TrainedRun(name, f"{base}/{name}", title)
    if job.from_scratch:
        transcript.note(
            f"[demo 3/5] train: {steps} steps of a tiny model from random weights on CPU "
            "(resumes if already done)"
        )
    else:
        transcript.note(
            f"[demo 3/5] train: fine-tune the shipped starter model on these photos, {steps} "
            "steps on CPU (resumes if already done)"
        )
    every = max(1, steps // 2)
    transcript.run(
        run_train,
        TrainJob(
            data=shards,
            output=run.folder,
            init_from=None if job.from_scratch else STARTER_NAME,
            steps=steps,
            checkpoint_every=every,
            sample_every=every,
            overrides=overrides,
            # fp32 everywhere: the demo's figures in the docs hold on any CPU.
            precision="fp32",
            # One worker on a laptop: let it use every core, not Ray's one thread per worker.
            threads_per_worker=os.cpu_count() or 1,
            **shared,
        ),
    )
    return run


def _enhance_step(
    photos: str, enhanced: str, run: _TrainedRun, shared: dict, transcript: _Transcript
) -> None:
    """Step 4: the low-light photos enhanced by the trained model into ``enhanced``."""
    from pipelines.enhance.job import run_enhance

    # One folder per run: a rerun with other settings must not skip images another model made.
    transcript.note(f"[demo 4/5] enhance: {photos}/low -> {enhanced}")
    transcript.run(
        run_enhance,
        EnhanceJob(
            input=f"{photos}/low",
            output=enhanced,
            checkpoint=run.folder,
            image_format="png",
            precision="fp32",
            **shared,
        ),
    )


def _evaluate_step(
    photos: str, evaluation: Path, run: _TrainedRun, shared: dict, transcript: _Transcript
) -> None:
    """Step 5: NIQE and the contact sheet of the inputs, baselines, starter and trained model."""
    from pipelines.evaluate.job import run_evaluate

    transcript.note(
        f"[demo 5/5] evaluate: NIQE of the inputs, baselines, the shipped starter model and the "
        f"{run.title} -> {evaluation}"
    )
    transcript.run(
        run_evaluate,
        EvaluateJob(
            input=f"{photos}/low",
            output=str(evaluation),
            checkpoint=run.folder,
            compare=STARTER_NAME,
            title=run.title,
            compare_title=STARTER_TITLE,
            samples=5,
            precision="fp32",
            **shared,
        ),
    )


def _demo_summary(
    job: DemoJob, run: _TrainedRun, inputs: Path, enhanced_dir: Path, evaluation: Path
) -> dict:
    """Brightness of the inputs and outputs, and the evaluation's NIQE means per variant."""
    summary = _brightness_summary(inputs, enhanced_dir)
    evaluated = json.loads((evaluation / "summary.json").read_text())
    scores = evaluated["means"]
    summary.update(
        mode="from scratch" if job.from_scratch else "fine-tuned from the starter",
        model=run.title,
        steps=job.train_steps,
        run=run.folder,
        contact_sheet_columns=list(evaluated["contact_sheet_columns"].values()),
        niqe={variant: values["niqe"] for variant, values in scores.items()},
        starter_mean_luma=scores["compared"]["luma"],
    )
    return summary


def _results(
    summary: dict, run: _TrainedRun, enhanced: str, evaluation: Path, out: Path, seconds: float
) -> str:
    """The closing paragraph: brightness, NIQE, and where each result is."""
    niqe, title, run_dir = summary["niqe"], run.title, run.folder
    columns = summary["contact_sheet_columns"]
    return (
        f"\nDemo finished in {seconds:.0f} s. Mean luminance (0-255) of the "
        f"low-light inputs {summary['input_mean_luma']:.1f} -> starter "
        f"{summary['starter_mean_luma']:.1f}, {title} {summary['enhanced_mean_luma']:.1f}. "
        f"NIQE (lower is better): input {_fmt(niqe['input'])}, gamma {_fmt(niqe['gamma'])}, "
        f"histogram equalisation {_fmt(niqe['histeq'])}, starter {_fmt(niqe['compared'])}, "
        f"{title} {_fmt(niqe['enhanced'])}.\n"
        f"  contact sheet:   {evaluation / 'contact_sheet.png'} ({' | '.join(columns)})\n"
        f"  NIQE table:      {evaluation / 'summary.md'} (per image: scores.csv)\n"
        f"  loss curve:      {run_dir}/loss_curve.png\n"
        f"  enhanced images: {enhanced}\n"
        f"  metrics:         {run_dir}/metrics.jsonl\n  samples:         {run_dir}/samples\n"
        f"  summary:         {out / 'summary.json'}"
    )


def _mode(job: DemoJob) -> str:
    return "scratch" if job.from_scratch else "finetune"


def _overrides(job: DemoJob, shards: str, options=None) -> tuple[str, ...]:
    """The model settings of the demo's run: the tiny model from scratch, or the starter's
    own recipe (its config) when fine-tuning; both with the schedule fitted into the steps."""
    if job.from_scratch:
        overrides = (*TINY_MODEL, *_schedule(shards, job.train_steps, TINY_BATCH, options))
    else:
        overrides = (
            *FINETUNE_SETTINGS,
            *_schedule(shards, job.train_steps, FINETUNE_BATCH, options),
        )
    overrides += (f"seed={job.seed}",)
    if job.train_lr is not None:
        overrides += (f"optim.lr={job.train_lr}",)
    exposure = job.train_exposure
    if exposure is not None and not job.from_scratch:
        overrides += (f"loss.exposure={exposure}",)
    elif exposure:
        overrides += (f"loss.exposure={exposure}", f"loss.exposure_target={EXPOSURE_TARGET}")
    return overrides


def _schedule(shards: str, steps: int, batch: int, options=None) -> tuple[str, str]:
    """Epoch settings that fit the paper's schedule (constant, then linear decay to 0) into
    ``steps``: the epoch length comes from the prepared image counts, as train computes it."""
    from pipelines.io.shards import check_prepared
    from pipelines.train.job import epoch_length

    domains = check_prepared(shards, options)["domains"]
    per_epoch = epoch_length({name: d["written"] for name, d in domains.items()}, batch)
    epochs = max(1, math.ceil(steps / per_epoch))
    constant = math.ceil(epochs / 2)
    return f"optim.epochs_constant={constant}", f"optim.epochs_decay={epochs - constant}"


def _download(uri: str, folder: Path, options) -> None:
    """Copy the enhanced images (not the manifest) from the bucket into ``folder``."""
    from pipelines.io import storage

    location = storage.resolve(uri, options)
    for key in storage.list_files(location, extensions=None):
        if key.split("/", 1)[0] != "_manifest":
            target = folder / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(location.child(key)))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _mean_luma(path: Path) -> float:
    with Image.open(path) as image:
        return float(np.asarray(image.convert("L"), dtype=np.float64).mean())


def _brightness_summary(input_dir: Path, enhanced_dir: Path) -> dict[str, float]:
    inputs, outputs = [], []
    for source in sorted(p for p in input_dir.rglob("*") if p.is_file()):
        target = (enhanced_dir / source.relative_to(input_dir)).with_suffix(".png")
        if target.exists():
            inputs.append(_mean_luma(source))
            outputs.append(_mean_luma(target))
    if not outputs:
        raise UserError(f"demo: no enhanced images found under {enhanced_dir}")
    return {
        "images": len(outputs),
        "input_mean_luma": float(np.mean(inputs)),
        "enhanced_mean_luma": float(np.mean(outputs)),
    }

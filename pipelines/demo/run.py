"""``enlightengan demo``: the whole pipeline on photos that ship inside installed wheels.

No network, no GPU, no S3 server: builds a small unpaired set from scikit-image,
scikit-learn and matplotlib sample photos (low-light copies darkened with gamma 2.2 then
x0.25), then runs prepare -> a short CPU train of a tiny model -> enhance -> evaluate, all through local
folders and one in-process Ray. A second run reuses the photos, shards and training run.
``--s3`` runs the same jobs against a bucket on a local SeaweedFS server instead of folders.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.errors import UserError
from pipelines.ops.ray_runtime import add_ray_arguments

DEMO_BUCKET = "enlightengan-demo"
EXPOSURE_TARGET = 0.5
TINY_BATCH = 2
TINY_MODEL = (
    "generator.base_channels=8",
    "discriminator.base_channels=16",
    "discriminator.patch_size=16",
    "discriminator.num_patches=2",
    "augment.crop_size=64",
    f"optim.batch_size={TINY_BATCH}",
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--out", default="demo-output", help="folder for everything (default demo-output)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=400,
        help="training steps (default 400: about 2 minutes on 2 cores; 2 for a smoke run). "
        "The learning rate is constant for the first half, then decays linearly to 0, as the "
        "paper's 100 + 100 epochs do",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=5e-4,
        help="learning rate (default 5e-4, 5x the paper's 1e-4; the paper trains about 6,400 "
        "steps, 200 epochs of 32 batches of 32, with 4x the channels)",
    )
    parser.add_argument(
        "--exposure",
        type=float,
        default=10.0,
        help="weight of the exposure-control term (Zero-DCE's L_exp, target mean intensity "
        "0.5; default 10). It is not in the paper: with the paper's losses alone a few hundred "
        "steps of a tiny model barely brighten. 0 trains with the paper's losses only",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the quick model's initialisation and random draws (default 0)",
    )
    parser.add_argument(
        "--s3",
        action="store_true",
        help="run the same steps through a local SeaweedFS S3 server (started on 127.0.0.1 "
        "with random credentials, stopped at the end; data kept in OUT/s3)",
    )
    add_ray_arguments(parser)


def run(args) -> int:
    out = Path(args.out).resolve()
    if not args.s3:
        return _run_steps(args, out, str(out))
    from pipelines.ops.local_services import create_bucket, start_object_store, stop_process

    print(f"[demo] starting a local SeaweedFS S3 server on 127.0.0.1, data in {out / 's3'}")
    store = start_object_store(out / "s3")
    saved = {name: os.environ.get(name) for name in (*store.environment(), "AWS_PROFILE")}
    try:
        create_bucket(store, DEMO_BUCKET)
        os.environ.pop("AWS_PROFILE", None)
        os.environ.update(store.environment())
        print(f"[demo] bucket s3://{DEMO_BUCKET} at {store.endpoint_url}")
        return _run_steps(args, out, f"s3://{DEMO_BUCKET}")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stop_process(store.pid, str(out / "s3"))


def _run_steps(args, out: Path, base: str) -> int:
    """The five steps with every job's data under ``base`` (``out`` itself, or a bucket);
    the evaluation report and a copy of the enhanced images always land in ``out``."""
    from pipelines.cli import main as cli_main
    from pipelines.demo.sample_photos import build_photo_dataset, upload_folder
    from pipelines.io import storage
    from pipelines.ops.ray_runtime import init_ray

    # One Ray for all five steps, started as training needs it (the first step would not).
    init_ray(args.address, args.num_cpus, training=True)
    started = time.perf_counter()
    photos_dir = out / "photos"
    ray_args = ["--num-cpus", str(args.num_cpus)] if args.num_cpus else []
    if not (photos_dir / "low").is_dir():
        print(f"[demo 1/5] building an unpaired photo set from installed wheels in {photos_dir}")
        build_photo_dataset(photos_dir)
    else:
        print(f"[demo 1/5] reusing photos in {photos_dir}")
    photos = f"{base}/photos"
    if base != str(out):
        bucket = storage.resolve(photos)
        if not storage.list_files(bucket.child("low")):
            upload_folder(photos_dir, bucket.filesystem, bucket.path)
            print(f"[demo 1/5] uploaded the photos to {photos}")

    shards = f"{base}/shards"
    if not storage.exists(storage.resolve(shards).child("manifest.json")):
        print("[demo 2/5] prepare: photos -> Parquet shards")
        _step(
            cli_main,
            ["prepare", "--low", f"{photos}/low", "--normal", f"{photos}/normal"]
            + ["--out", shards, *ray_args],
        )
    else:
        print(f"[demo 2/5] reusing shards in {shards}")

    overrides = (
        *TINY_MODEL,
        *_schedule(shards, args.steps),
        f"optim.lr={args.lr}",
        f"seed={args.seed}",
    )
    if args.exposure > 0:
        overrides += (f"loss.exposure={args.exposure}", f"loss.exposure_target={EXPOSURE_TARGET}")
    # One run folder per setting, so a rerun with other --steps/--lr/--exposure trains anew
    # instead of being refused as a changed run, and the same settings resume.
    tag = hashlib.sha256(repr((args.steps, overrides)).encode()).hexdigest()[:8]
    run_dir = f"{base}/run-{args.steps}-steps-{tag}"
    print(f"[demo 3/5] train: {args.steps} steps of a tiny model on CPU (resumes if already done)")
    settings = [item for pair in overrides for item in ("--set", pair)]
    every = str(max(1, args.steps // 2))
    _step(
        cli_main,
        ["train", "--data", shards, "--run", run_dir, "--steps", str(args.steps)]
        + ["--checkpoint-every", every, "--sample-every", every]
        # One worker on a laptop: let it use every core, not Ray's one thread per worker.
        + ["--torch-threads", str(os.cpu_count() or 1), *settings, *ray_args],
    )

    enhanced = f"{base}/enhanced"
    print(f"[demo 4/5] enhance: {photos}/low -> {enhanced}")
    _step(
        cli_main,
        ["enhance", "--checkpoint", run_dir, "--input", f"{photos}/low", "--output", enhanced]
        + ["--format", "png", *ray_args],
    )
    enhanced_dir = out / "enhanced"
    if base != str(out):
        _download(storage.resolve(enhanced), enhanced_dir)

    evaluation = out / "evaluation"
    print(
        f"[demo 5/5] evaluate: NIQE of inputs, the quick model, the shipped starter model and "
        f"baselines -> {evaluation}"
    )
    _step(
        cli_main,
        ["evaluate", "--checkpoint", run_dir, "--compare", "starter", "--input", f"{photos}/low"]
        + ["--output", str(evaluation), "--samples", "5", *ray_args],
    )

    summary = _brightness_summary(photos_dir / "low", enhanced_dir)
    scores = json.loads((evaluation / "summary.json").read_text())["means"]
    summary["niqe"] = {variant: values["niqe"] for variant, values in scores.items()}
    summary["starter_mean_luma"] = scores["compared"]["luma"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    niqe = summary["niqe"]
    print(
        f"\nDemo finished in {time.perf_counter() - started:.0f} s. Mean luminance (0-255) of the "
        f"low-light inputs {summary['input_mean_luma']:.1f} -> quick model "
        f"{summary['enhanced_mean_luma']:.1f}, shipped starter model "
        f"{summary['starter_mean_luma']:.1f}. NIQE (lower is better): input "
        f"{_fmt(niqe['input'])}, quick model {_fmt(niqe['enhanced'])}, starter model "
        f"{_fmt(niqe['compared'])}, gamma {_fmt(niqe['gamma'])}, histogram equalisation "
        f"{_fmt(niqe['histeq'])}.\n"
        f"  contact sheet:   {evaluation / 'contact_sheet.png'} (input | quick model | gamma | "
        "histogram equalisation | starter model)\n"
        f"  NIQE table:      {evaluation / 'summary.md'} (per image: scores.csv)\n"
        f"  loss curve:      {run_dir}/loss_curve.png\n"
        f"  enhanced images: {enhanced}\n"
        f"  metrics:         {run_dir}/metrics.jsonl\n  samples:         {run_dir}/samples\n"
        f"  summary:         {out / 'summary.json'}"
    )
    return 0


def _schedule(shards: str, steps: int) -> tuple[str, str]:
    """Epoch settings that fit the paper's schedule (constant, then linear decay to 0) into
    ``steps``: the epoch length comes from the prepared image counts, as train computes it."""
    from pipelines.io.shards import check_prepared
    from pipelines.train.job import epoch_length

    domains = check_prepared(shards)["domains"]
    per_epoch = epoch_length({name: d["written"] for name, d in domains.items()}, TINY_BATCH)
    epochs = max(1, math.ceil(steps / per_epoch))
    constant = math.ceil(epochs / 2)
    return f"optim.epochs_constant={constant}", f"optim.epochs_decay={epochs - constant}"


def _download(location, folder: Path) -> None:
    """Copy the enhanced images (not the manifest) from the bucket into ``folder``."""
    from pipelines.io import storage

    for key in storage.list_files(location, extensions=None):
        if key.split("/", 1)[0] != "_manifest":
            target = folder / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(location.child(key)))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _step(cli_main, argv: list[str]) -> None:
    code = cli_main(argv)
    if code != 0:
        raise UserError(
            f"demo step `enlightengan {' '.join(argv[:1])}` failed with exit code {code}"
        )


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

"""``enlightengan demo``: the whole pipeline on photos that ship inside installed wheels.

No network, no GPU, no S3 server: builds a small unpaired set from scikit-image,
scikit-learn and matplotlib sample photos (low-light copies darkened with gamma 2.2 then
x0.25), then runs prepare -> a short CPU train of a tiny model -> enhance -> evaluate, all through local
folders and one in-process Ray. A second run reuses the photos, shards and training run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.errors import UserError
from pipelines.ray_runtime import add_ray_arguments

TINY_MODEL = (
    "generator.base_channels=8",
    "discriminator.base_channels=16",
    "discriminator.patch_size=16",
    "discriminator.num_patches=2",
    "augment.crop_size=64",
    "optim.batch_size=2",
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--out", default="demo-output", help="folder for everything (default demo-output)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=100,
        help="training steps (default 100: about 4 minutes on 2 cores; 2 for a smoke run)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=0.002,
        help="learning rate (default 0.002, 20x the paper's 1e-4, so that a few hundred CPU "
        "steps of a tiny model already brighten; the paper trains ~6,000 steps at 1e-4)",
    )
    add_ray_arguments(parser)


def run(args) -> int:
    from pipelines.cli import main as cli_main
    from pipelines.sample_photos import build_photo_dataset

    started = time.perf_counter()
    out = Path(args.out).resolve()
    photos = out / "photos"
    ray_args = ["--num-cpus", str(args.num_cpus)] if args.num_cpus else []
    if not (photos / "low").is_dir():
        print(f"[demo 1/5] building an unpaired photo set from installed wheels in {photos}")
        build_photo_dataset(photos)
    else:
        print(f"[demo 1/5] reusing photos in {photos}")

    shards = out / "shards"
    if not (shards / "manifest.json").exists():
        print("[demo 2/5] prepare: photos -> Parquet shards")
        _step(
            cli_main,
            [
                "prepare",
                "--low",
                str(photos / "low"),
                "--normal",
                str(photos / "normal"),
                "--out",
                str(shards),
                *ray_args,
            ],
        )
    else:
        print(f"[demo 2/5] reusing shards in {shards}")

    run_dir = out / "run"
    print(f"[demo 3/5] train: {args.steps} steps of a tiny model on CPU (resumes if already done)")
    settings = [item for pair in (*TINY_MODEL, f"optim.lr={args.lr}") for item in ("--set", pair)]
    _step(
        cli_main,
        [
            "train",
            "--data",
            str(shards),
            "--run",
            str(run_dir),
            "--steps",
            str(args.steps),
            "--checkpoint-every",
            str(max(1, args.steps // 2)),
            "--sample-every",
            str(max(1, args.steps // 2)),
            # One worker on a laptop: let it use every core, not Ray's one thread per worker.
            "--torch-threads",
            str(os.cpu_count() or 1),
            *settings,
            *ray_args,
        ],
    )

    enhanced = out / "enhanced"
    print(f"[demo 4/5] enhance: {photos / 'low'} -> {enhanced}")
    _step(
        cli_main,
        [
            "enhance",
            "--checkpoint",
            str(run_dir),
            "--input",
            str(photos / "low"),
            "--output",
            str(enhanced),
            "--format",
            "png",
            *ray_args,
        ],
    )

    evaluation = out / "evaluation"
    print(f"[demo 5/5] evaluate: NIQE of inputs, enhanced and baselines -> {evaluation}")
    _step(
        cli_main,
        [
            "evaluate",
            "--checkpoint",
            str(run_dir),
            "--input",
            str(photos / "low"),
            "--output",
            str(evaluation),
            *ray_args,
        ],
    )

    summary = _brightness_summary(photos / "low", enhanced)
    scores = json.loads((evaluation / "summary.json").read_text())["means"]
    summary["niqe"] = {variant: values["niqe"] for variant, values in scores.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\nDemo finished in {time.perf_counter() - started:.0f} s. Mean luminance of the low-light "
        f"inputs {summary['input_mean_luma']:.1f} -> enhanced {summary['enhanced_mean_luma']:.1f} "
        f"(0-255); NIQE (lower is better) input {_fmt(summary['niqe']['input'])} -> enhanced "
        f"{_fmt(summary['niqe']['enhanced'])}.\n"
        f"  contact sheet:   {evaluation / 'contact_sheet.png'}\n"
        f"  NIQE table:      {evaluation / 'summary.md'} (per image: scores.csv)\n"
        f"  loss curve:      {run_dir / 'loss_curve.png'}\n"
        f"  enhanced images: {enhanced}\n"
        f"  metrics:         {run_dir / 'metrics.jsonl'}\n  samples:         {run_dir / 'samples'}\n"
        f"  summary:         {out / 'summary.json'}"
    )
    return 0


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

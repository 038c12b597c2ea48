"""How well do the models enhance? NIQE, PSNR, SSIM and luma against training-free baselines.

Two test sets, both darkened the demo's way (``x**2.2 * 0.25``, unlike the starter corpus's
camera-like degradation), so each dark input has its undarkened original to compare with:

* ``demo``: the five wheel photos the demo enhances (coffee, astronaut, rocket, china,
  grace_hopper), fitted into 600x400;
* ``holdout``: the starter corpus's ten held-out photographs (``--corpus``, built by
  ``python -m pipelines.starter.corpus``); skipped when no corpus is given.

Variants: the dark input, gamma 1/2.2, luminance histogram equalisation, the shipped starter
model, and any ``--checkpoint NAME=PATH`` (a checkpoint or run folder, e.g. the demo's quick
model). Prints one table per set (mean over its images) and writes ``--out``/quality.md,
quality.json and a contact sheet per set (``contact_<set>.png``).

    python benchmarks/bench_quality.py --corpus starter-corpus \\
        --checkpoint quick=demo-output/run-400-steps-XXXX --out quality-report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enlightengan.baselines import gamma_correction, histogram_equalization  # noqa: E402
from enlightengan.metrics import niqe, psnr, ssim  # noqa: E402
from pipelines.inference.scores import luma_mean  # noqa: E402

METRICS = ("niqe", "psnr", "ssim", "luma")
Variant = Callable[[list[np.ndarray]], list[np.ndarray]]


def demo_set() -> list[tuple[str, np.ndarray]]:
    """The demo's five low-light photos as undarkened originals (name, uint8 RGB)."""
    from pipelines.demo.sample_photos import demo_originals

    return demo_originals()


def holdout_set(corpus: Path) -> list[tuple[str, np.ndarray]]:
    """The corpus's held-out photographs (name, uint8 RGB)."""
    paths = sorted((corpus / "holdout").glob("*.png"))
    if not paths:
        raise SystemExit(f"no holdout/*.png under {corpus}: build it with pipelines.starter.corpus")
    return [(path.stem, np.asarray(Image.open(path).convert("RGB"))) for path in paths]


def darken_like_demo(rgb: np.ndarray) -> np.ndarray:
    from pipelines.demo.sample_photos import darken

    return darken(rgb)


def model_variant(generator) -> Variant:
    """Enhance with a generator in fp32 (the reference precision), one image at a time."""
    from enlightengan.inference import Enhancer, EnhancerSettings

    enhancer = Enhancer(generator, EnhancerSettings(batch_size=1))
    return lambda images: enhancer(images)


def checkpoint_variant(path: str) -> Variant:
    from enlightengan.inference import Enhancer, EnhancerSettings

    enhancer = Enhancer.from_checkpoint(path, EnhancerSettings(batch_size=1))
    return lambda images: enhancer(images)


def baseline_variants() -> dict[str, Variant]:
    return {
        "input": lambda images: images,
        "gamma": lambda images: [gamma_correction(image) for image in images],
        "histeq": lambda images: [histogram_equalization(image) for image in images],
    }


def score_set(
    photos: list[tuple[str, np.ndarray]], variants: dict[str, Variant]
) -> tuple[dict[str, dict[str, float]], dict[str, list[np.ndarray]]]:
    """Mean NIQE / PSNR / SSIM (against the originals) / luma per variant, and the outputs."""
    originals = [rgb for _, rgb in photos]
    dark = [darken_like_demo(rgb) for rgb in originals]
    means, outputs = {}, {}
    for name, variant in variants.items():
        results = variant(dark)
        outputs[name] = results
        rows = [
            {
                "niqe": niqe(result),
                "psnr": psnr(result, original),
                "ssim": ssim(result, original),
                "luma": luma_mean(result),
            }
            for result, original in zip(results, originals, strict=True)
        ]
        means[name] = {metric: float(np.nanmean([r[metric] for r in rows])) for metric in METRICS}
    outputs["original"] = originals
    return means, outputs


def contact_sheet(outputs: dict[str, list[np.ndarray]], names: list[str], path: Path) -> None:
    """Rows: images; columns: variants then the original; 240-pixel-wide thumbnails."""
    columns = list(outputs)
    width, height, label = 240, 160, 14
    sheet = Image.new("RGB", (width * len(columns), (height + label) * len(names) + label), "white")
    draw = ImageDraw.Draw(sheet)
    for column, variant in enumerate(columns):
        draw.text((column * width + 4, 1), variant, fill="black")
        for row, image in enumerate(outputs[variant]):
            thumb = Image.fromarray(image)
            thumb.thumbnail((width, height))
            sheet.paste(thumb, (column * width, label + row * (height + label)))
            if column == 0:
                draw.text((4, label + row * (height + label) + height), names[row], fill="black")
    sheet.save(path)


def format_table(title: str, means: dict[str, dict[str, float]]) -> str:
    lines = [
        f"### {title}",
        "",
        "| variant | NIQE (lower better) | PSNR dB | SSIM | mean luma |",
        "|---|---|---|---|---|",
    ]
    for name, values in means.items():
        lines.append(
            f"| {name} | {values['niqe']:.2f} | {values['psnr']:.2f} | {values['ssim']:.3f} "
            f"| {values['luma']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=None, help="starter corpus folder")
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another model to score (repeatable)",
    )
    parser.add_argument("--no-starter", action="store_true", help="leave the shipped model out")
    parser.add_argument("--out", type=Path, default=Path("quality-report"))
    args = parser.parse_args()
    variants = baseline_variants()
    if not args.no_starter:
        from enlightengan.starter import load_starter_generator

        variants["starter"] = model_variant(load_starter_generator())
    for item in args.checkpoint:
        name, _, path = item.partition("=")
        variants[name] = checkpoint_variant(path)
    sets = {"demo": demo_set()}
    if args.corpus is not None:
        sets["holdout"] = holdout_set(args.corpus)
    args.out.mkdir(parents=True, exist_ok=True)
    report, tables = {}, []
    for set_name, photos in sets.items():
        started = time.perf_counter()
        means, outputs = score_set(photos, variants)
        report[set_name] = means
        tables.append(
            format_table(f"{set_name} ({len(photos)} photos, darkened x**2.2 * 0.25)", means)
        )
        contact_sheet(outputs, [name for name, _ in photos], args.out / f"contact_{set_name}.png")
        print(tables[-1], f"\n({time.perf_counter() - started:.0f} s)\n", flush=True)
    (args.out / "quality.json").write_text(json.dumps(report, indent=2))
    (args.out / "quality.md").write_text("\n\n".join(tables) + "\n")
    print(f"written: {args.out}/quality.md, quality.json, contact_*.png")


if __name__ == "__main__":
    main()

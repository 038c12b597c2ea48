"""Choose the starter model's CPU recipe: a short plain-loop run of one setting, then its scores.

Trains with ``enlightengan.training.training_step`` (the step Ray Train runs) on the prepared
starter shards for ``--minutes`` (lr constant for the first half of the time, then decaying
linearly to 0), then scores the generator on the corpus's held-out photos darkened the demo's
way (``bench_quality.score_set``: NIQE, PSNR, SSIM, luma) next to gamma and histogram
equalisation. Extra arguments are ``section.field=value`` overrides. BENCHMARKS.md lists the
settings tried and what each gave, e.g.:

    python benchmarks/starter_recipe.py --data starter-shards --corpus starter-corpus \\
        --minutes 6 generator.base_channels=16 loss.exposure=1 loss.exposure_patch_size=64

``--init-from`` starts the generator from a checkpoint directory (a fine-tune, as
``enlightengan train --init-from`` does; discriminators fresh); ``--real FOLDER`` also scores
a folder of real dark photos (NIQE, luma, HSV saturation; no references), e.g. DICM as the
validation set; ``--save`` keeps the generator as a checkpoint directory (float16, as the
shipped starter) for later scoring.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_quality import (  # noqa: E402
    baseline_variants,
    contact_sheet,
    format_table,
    holdout_set,
    model_variant,
    score_set,  # noqa: E402
)

from enlightengan.augment import make_training_batch  # noqa: E402
from enlightengan.checkpoint import load_networks, save_checkpoint  # noqa: E402
from enlightengan.config import EnlightenGANConfig  # noqa: E402
from enlightengan.metrics import niqe  # noqa: E402
from enlightengan.training import (  # noqa: E402
    GANModules,
    GANOptimizers,
    build_modules,
    build_optimizers,
    set_learning_rate,
    training_step,
)
from enlightengan.vgg import build_vgg_features  # noqa: E402


def read_domain(shards: Path, domain: str) -> list[np.ndarray]:
    images = []
    for path in sorted((shards / domain).glob("*.parquet")):
        for encoded in pq.read_table(path, columns=["image"]).column("image").to_pylist():
            images.append(np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB")))
    return images


def train_within(
    modules: GANModules,
    optimizers: GANOptimizers,
    low: list[np.ndarray],
    normal: list[np.ndarray],
    config: EnlightenGANConfig,
    seconds: float,
    dtype: torch.dtype | None = None,
    log_every: int = 100,
) -> int:
    """Train on random picks of ``low`` and ``normal`` photos for ``seconds`` of wall time, lr
    ``config.optim.lr`` for the first half of the time, then decaying linearly to 0; returns
    the number of steps done."""
    pick_rng, step_rng = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    batch = config.optim.batch_size
    started, step = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - started) < seconds:
        fraction = min(1.0, 2.0 * (1.0 - elapsed / seconds))
        set_learning_rate(optimizers, config.optim.lr * fraction)
        low_picks = torch.randint(0, len(low), (batch,), generator=pick_rng).tolist()
        normal_picks = torch.randint(0, len(normal), (batch,), generator=pick_rng).tolist()
        low_batch, normal_batch = make_training_batch(
            [low[i] for i in low_picks], [normal[i] for i in normal_picks], config.augment, pick_rng
        )
        losses = training_step(
            modules, optimizers, low_batch, normal_batch, config, step_rng, dtype
        )
        step += 1
        if step % log_every == 0:
            print(f"step {step} {elapsed:.0f} s g_total {losses['g_total']:.3f}", flush=True)
    return step


def hsv_saturation(rgb: np.ndarray) -> float:
    """Mean HSV saturation on a 0-255 scale."""
    values = rgb.astype(np.float32)
    high, low = values.max(axis=2), values.min(axis=2)
    return float(np.mean(np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)) * 255)


def score_real(folder: Path, variants: dict) -> dict[str, dict[str, float]]:
    """Mean NIQE, luma and HSV saturation of each variant on a folder of real dark photos."""
    from pipelines.inference.scores import luma_mean

    photos = [
        np.asarray(Image.open(path).convert("RGB"))
        for path in sorted(folder.iterdir())
        if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")
    ]
    means = {}
    for name, variant in variants.items():
        results = variant(photos)
        means[name] = {
            "niqe": float(np.mean([niqe(result) for result in results])),
            "luma": float(np.mean([luma_mean(result) for result in results])),
            "saturation": float(np.mean([hsv_saturation(result) for result in results])),
        }
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="prepared starter shards")
    parser.add_argument("--corpus", type=Path, help="starter corpus (holdout/)")
    parser.add_argument("--minutes", type=float, default=6.0, help="training time budget")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (native-bf16 CPUs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sheet", type=Path, help="also write the held-out contact sheet here")
    parser.add_argument(
        "--probe", action="store_true", help="only time 4 steps on random crops, then stop"
    )
    parser.add_argument("--init-from", type=Path, help="checkpoint directory to fine-tune")
    parser.add_argument("--real", type=Path, help="a folder of real dark photos to score")
    parser.add_argument("--save", type=Path, help="write the generator here (checkpoint)")
    parser.add_argument(
        "--score-only", action="store_true", help="score --init-from without training"
    )
    parser.add_argument("overrides", nargs="*", help="section.field=value")
    args = parser.parse_args()
    if not args.probe and (args.data is None or args.corpus is None):
        parser.error("--data and --corpus are needed unless --probe")
    torch.set_num_threads(args.threads)
    overrides = dict(item.split("=", 1) for item in args.overrides)
    config = EnlightenGANConfig().with_overrides(
        {key: json.loads(value) for key, value in overrides.items()}
    )
    torch.manual_seed(config.seed)
    modules = build_modules(config, build_vgg_features(None, flavour=config.loss.vgg_flavour))
    if args.init_from is not None:
        source = load_networks(args.init_from)
        if source.config.generator != config.generator:
            parser.error(f"--init-from has generator {source.config.generator}")
        modules.generator.load_state_dict(source.network_states["generator"])
    optimizers = build_optimizers(modules, config.optim)
    batch, budget = config.optim.batch_size, args.minutes * 60
    dtype = torch.bfloat16 if args.bf16 else None
    if args.probe:
        size = config.augment.crop_size
        low_batch = torch.rand(batch, 3, size, size) * 0.3 - 1
        normal_batch = torch.rand(batch, 3, size, size) * 2 - 1
        step_rng = torch.Generator().manual_seed(1)
        training_step(modules, optimizers, low_batch, normal_batch, config, step_rng, dtype)
        started = time.perf_counter()
        for _ in range(4):
            training_step(modules, optimizers, low_batch, normal_batch, config, step_rng, dtype)
        print(
            f"{' '.join(args.overrides)} bf16={args.bf16}: "
            f"{(time.perf_counter() - started) / 4:.2f} s/step"
        )
        return
    low, normal = read_domain(args.data, "low"), read_domain(args.data, "normal")
    started = time.perf_counter()
    step = (
        0
        if args.score_only
        else train_within(modules, optimizers, low, normal, config, budget, dtype)
    )
    seconds_per_step = (time.perf_counter() - started) / max(step, 1)
    modules.generator.eval()
    if args.save is not None:
        save_checkpoint(
            args.save,
            config=config,
            networks={"generator": modules.generator},
            storage_dtype="float16",
        )
    variants = {**baseline_variants(), "model": model_variant(modules.generator)}
    photos = holdout_set(args.corpus)
    means, outputs = score_set(photos, variants)
    if args.sheet is not None:
        contact_sheet(outputs, [name for name, _ in photos], args.sheet)
    print(f"settings: {' '.join(args.overrides)} bf16={args.bf16}")
    print(f"{step} steps in {args.minutes:.1f} min ({seconds_per_step:.2f} s/step)")
    print(format_table("holdout, darkened x**2.2 * 0.25", means))
    if args.real is not None:
        real = score_real(args.real, {"model": variants["model"]})["model"]
        print(
            f"real photos ({args.real.name}): " + ", ".join(f"{k} {v:.3f}" for k, v in real.items())
        )


if __name__ == "__main__":
    main()

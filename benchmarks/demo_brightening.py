"""How fast does the demo's tiny model brighten? A plain PyTorch loop, no Ray, same step.

Trains the demo's tiny configuration (``pipelines.demo.job.TINY_MODEL``) on the demo's photo set
with ``enlightengan.training.training_step`` and prints, every tenth of the run, the mean luma
(0-255) of the generator's eval-mode output on the five full low-light photos. The learning rate
is constant for the first half and decays linearly to 0, as the demo does. Extra arguments are
``section.field=value`` overrides. The demo numbers in docs/getting-started.md came from:

    python benchmarks/demo_brightening.py 400 optim.lr=0.0005                   # paper's losses
    python benchmarks/demo_brightening.py 400 optim.lr=0.0005 loss.exposure=10 \\
        loss.exposure_target=0.5                                                 # demo default
    python benchmarks/demo_brightening.py 1000 optim.lr=0.002                   # high lr
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enlightengan.augment import make_training_batch, to_model_range  # noqa: E402
from enlightengan.config import EnlightenGANConfig  # noqa: E402
from enlightengan.training import (  # noqa: E402
    build_modules,
    build_optimizers,
    set_learning_rate,
    training_step,
)
from enlightengan.vgg import build_vgg_features  # noqa: E402
from pipelines.demo.job import TINY_MODEL  # noqa: E402
from pipelines.demo.sample_photos import build_photo_dataset  # noqa: E402


def mean_luma(generator: torch.nn.Module, images: list[torch.Tensor]) -> float:
    """Mean BT.601 luma of the clamped eval-mode outputs (crops to a multiple of 16)."""
    generator.eval()
    values = []
    with torch.no_grad():
        for image in images:
            height, width = image.shape[-2:]
            output = generator(image[..., : height // 16 * 16, : width // 16 * 16])
            rgb = (output.clamp(-1, 1) + 1) * 127.5
            values.append(float((0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).mean()))
    generator.train()
    return float(np.mean(values))


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    overrides = dict(item.split("=", 1) for item in (*TINY_MODEL, *sys.argv[2:]))
    config = EnlightenGANConfig().with_overrides({k: json.loads(v) for k, v in overrides.items()})
    photos = build_photo_dataset(Path(tempfile.mkdtemp(prefix="demo-brightening-")))
    low = [np.asarray(Image.open(photos.low_dir / f.key).convert("RGB")) for f in photos.low]
    normal = [
        np.asarray(Image.open(photos.normal_dir / f.key).convert("RGB")) for f in photos.normal
    ]
    torch.manual_seed(config.seed)
    vgg = build_vgg_features(config.loss.vgg_weights, flavour=config.loss.vgg_flavour)
    modules = build_modules(config, vgg)
    optimizers = build_optimizers(modules, config.optim)
    pick_rng, step_rng = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    evaluation = [to_model_range(image).unsqueeze(0) for image in low]
    batch, decay_from = config.optim.batch_size, steps // 2
    started = time.perf_counter()
    print(f"step 0: mean luma {mean_luma(modules.generator, evaluation):.1f}", flush=True)
    for step in range(1, steps + 1):
        fraction = 1.0 if step <= decay_from else (steps - step + 1) / (steps - decay_from)
        set_learning_rate(optimizers, config.optim.lr * fraction)
        low_picks = torch.randint(0, len(low), (batch,), generator=pick_rng).tolist()
        normal_picks = torch.randint(0, len(normal), (batch,), generator=pick_rng).tolist()
        low_batch, normal_batch = make_training_batch(
            [low[i] for i in low_picks], [normal[i] for i in normal_picks], config.augment, pick_rng
        )
        losses = training_step(modules, optimizers, low_batch, normal_batch, config, step_rng)
        if step % max(1, steps // 10) == 0:
            print(
                f"step {step}: mean luma {mean_luma(modules.generator, evaluation):.1f}, "
                f"lr {config.optim.lr * fraction:.2e}, g_total {losses['g_total']:.3f}, "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()

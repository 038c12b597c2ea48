"""CPU generator forward on one 600x400 photo: fp32 vs channels_last vs bf16 autocast.

Default architecture (8.6 M parameters), batch 1, the darkened scikit-image ``coffee`` photo,
all measured side by side in this run (median of ``--repeats`` after one warm-up). Reports each
mode's time, its speed-up over fp32 NCHW, and its PSNR against fp32 in uint8 pixels: a bf16
path is only worth having if its output stays close to fp32.

Weights: ``--checkpoint DIR`` or ``--official-weights FILE``; by default Kaiming-initialised
convs with BatchNorm statistics calibrated on real photos (the reference init's residual is so
small that the output equals the input and every PSNR would be infinite).

Run: ``python benchmarks/bench_generator_cpu.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enlightengan.config import GeneratorConfig  # noqa: E402
from enlightengan.inference import Enhancer, EnhancerSettings  # noqa: E402
from tests.enlightengan.textured_generator import darken, psnr, textured_generator  # noqa: E402

MODES = {
    "fp32 NCHW": EnhancerSettings(tile_size=None),
    "fp32 channels_last": EnhancerSettings(tile_size=None, channels_last=True),
    "bf16 autocast + channels_last": EnhancerSettings(
        tile_size=None, precision="bf16", channels_last=True
    ),
}


def build_enhancer(args: argparse.Namespace, settings: EnhancerSettings) -> Enhancer:
    if args.checkpoint:
        return Enhancer.from_checkpoint(args.checkpoint, settings)
    if args.official_weights:
        return Enhancer.from_official_weights(args.official_weights, settings)
    return Enhancer(textured_generator(GeneratorConfig(), seed=0), settings)


def time_forward(enhancer: Enhancer, image: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    enhancer([image])
    durations = []
    output = None
    for _ in range(repeats):
        start = time.perf_counter()
        output = enhancer([image])[0]
        durations.append(time.perf_counter() - start)
    return statistics.median(durations), output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", help="checkpoint directory (default: textured weights)")
    parser.add_argument("--official-weights", help="the authors' generator .pth file")
    args = parser.parse_args()

    image = darken(data.coffee())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image {image.shape}")
    baseline_time, baseline = None, None
    for name, settings in MODES.items():
        seconds, output = time_forward(build_enhancer(args, settings), image, args.repeats)
        if baseline is None:
            baseline_time, baseline = seconds, output
        print(
            f"{name:32s} {seconds:6.3f} s  x{baseline_time / seconds:4.2f} vs fp32 NCHW  "
            f"PSNR vs fp32 {psnr(output, baseline):6.2f} dB"
        )
    print(f"enhancement itself: PSNR(output, input) {psnr(baseline, image):.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

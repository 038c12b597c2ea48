"""Turn a training run into the shipped starter weights file, checked before it is written.

``python -m pipelines.starter.ship --run RUN [--out enlightengan/weights/starter.pt]`` takes
the run's latest complete checkpoint (or a checkpoint directory), stores the generator in
``--dtype`` (float16 by default, half the size) and refuses to write when the stored weights'
outputs on the demo's photos fall below ``--min-psnr`` dB (45) of the fp32 checkpoint's. It
prints the file's sha256 for ``enlightengan.starter.STARTER_SHA256`` and the PSNR it measured.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from enlightengan.checkpoint import find_latest_checkpoint, load_checkpoint
from enlightengan.inference import Enhancer, EnhancerSettings
from enlightengan.metrics import psnr
from enlightengan.starter import starter_weights_path, weights_bytes, weights_from_bytes
from pipelines.demo.sample_photos import darken, demo_originals


def _check_images() -> list[np.ndarray]:
    return [darken(rgb) for _, rgb in demo_originals()]


def stored_weights_psnr(generator, stored) -> float:
    """Lowest PSNR (dB) of the stored generator's outputs against the fp32 generator's."""
    images = _check_images()
    settings = EnhancerSettings(batch_size=1)
    reference = Enhancer(generator, settings)(images)
    candidate = Enhancer(stored, settings)(images)
    return min(psnr(a, b) for a, b in zip(candidate, reference, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.starter.ship", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--run", required=True, help="training run folder or checkpoint dir")
    parser.add_argument("--out", type=Path, default=starter_weights_path(), help="weights file")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float16")
    parser.add_argument("--min-psnr", type=float, default=45.0, help="dB against fp32")
    args = parser.parse_args(argv)
    directory = find_latest_checkpoint(args.run)
    if directory is None:
        print(f"error: no complete checkpoint in or under {args.run}", file=sys.stderr)
        return 2
    checkpoint = load_checkpoint(directory)
    generator = checkpoint.build_generator()
    data = weights_bytes(generator, checkpoint.config, args.dtype)
    stored, _ = weights_from_bytes(data)
    measured = stored_weights_psnr(generator, stored)
    print(
        f"checkpoint {directory} (step {checkpoint.step}); {args.dtype} storage: "
        f"{len(data) / 1e6:.1f} MB, lowest PSNR against fp32 on the demo photos {measured:.1f} dB"
    )
    if measured < args.min_psnr:
        print(f"error: below {args.min_psnr} dB; ship float32 instead", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"written {args.out}; sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Turn a training run into the shipped starter weights files, checked before they are written.

``python -m pipelines.starter.ship --run RUN [--out enlightengan/weights/starter.pt]`` takes
the run's latest complete checkpoint (or a checkpoint directory), stores the generator in
``--dtype`` (float16 by default, half the size) and refuses to write when the stored weights'
outputs on the demo's photos fall below ``--min-psnr`` dB (45) of the fp32 checkpoint's. When the
checkpoint holds the two discriminators (a training checkpoint does), they go into
``starter-discriminators.pt`` beside the generator's file, in the same ``--dtype``
(:func:`enlightengan.starter.discriminator_weights_bytes`), for fine-tuning.
``--tone-strength S`` stores ``generator.tone_transfer_strength = S`` in the shipped config, so
that the starter enhances with tone transfer (:mod:`enlightengan.tone`) by default. It prints each
file's sha256, to pin in :mod:`enlightengan.shipped_weights` (``STARTER_SHA256`` and
``STARTER_DISCRIMINATORS_SHA256``), and the PSNR it measured.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from enlightengan.checkpoint import (
    DISCRIMINATOR_NAMES,
    Checkpoint,
    find_latest_checkpoint,
    load_checkpoint,
)
from enlightengan.inference import Enhancer, EnhancerSettings
from enlightengan.metrics import psnr
from enlightengan.shipped_weights import DISCRIMINATORS_FILE_NAME
from enlightengan.starter import (
    discriminator_weights_bytes,
    discriminators_from_bytes,
    starter_weights_path,
    weights_bytes,
    weights_from_bytes,
)
from pipelines.demo.sample_photos import darken, demo_originals


def _check_images() -> list[np.ndarray]:
    return [darken(rgb) for _, rgb in demo_originals()]


def stored_weights_psnr(generator, stored) -> float:
    """Lowest PSNR (dB) of the stored generator's outputs against the fp32 generator's."""
    images = _check_images()
    # The storage precision is what is checked: both generators' own outputs.
    settings = EnhancerSettings(batch_size=1, tone_transfer="off")
    reference = Enhancer(generator, settings)(images)
    candidate = Enhancer(stored, settings)(images)
    return min(psnr(a, b) for a, b in zip(candidate, reference, strict=True))


def discriminators_bytes(checkpoint: Checkpoint, dtype: str) -> bytes | None:
    """The checkpoint's global and patch discriminators as one starter-format file (checked by
    reading it back), or None when the checkpoint holds none (e.g. an exported generator)."""
    from enlightengan.discriminator import build_discriminators

    if not all(name in checkpoint.network_states for name in DISCRIMINATOR_NAMES):
        return None
    modules = build_discriminators(checkpoint.config.discriminator)
    for name, module in zip(DISCRIMINATOR_NAMES, modules, strict=True):
        module.load_state_dict(checkpoint.network_states[name])
    data = discriminator_weights_bytes(*modules, checkpoint.config, dtype)
    discriminators_from_bytes(data)
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.starter.ship", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--run", help="training run folder (train's --run / --output) or checkpoint dir"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=starter_weights_path(),
        help="generator weights file; the discriminators go beside it as "
        f"{DISCRIMINATORS_FILE_NAME}",
    )
    # train calls the run folder --output too; here that name would read as the file written.
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float16")
    parser.add_argument("--min-psnr", type=float, default=45.0, help="dB against fp32")
    parser.add_argument(
        "--tone-strength",
        type=float,
        default=None,
        help="ship with tone transfer at this strength (generator.tone_transfer_strength); "
        "default: as the run's config says",
    )
    parser.add_argument(
        "--tone-dark-strength",
        type=float,
        default=None,
        help="ship with this tone-transfer strength for very dark photos "
        "(generator.tone_transfer_dark_strength); default: as the run's config says",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.output is not None:
        parser.error("--output: name the training run with --run (the weights file is --out)")
    if args.run is None:
        parser.error("the following arguments are required: --run")
    directory = find_latest_checkpoint(args.run)
    if directory is None:
        print(f"error: no complete checkpoint in or under {args.run}", file=sys.stderr)
        return 2
    checkpoint = load_checkpoint(directory)
    generator = checkpoint.build_generator()
    config = checkpoint.config
    if args.tone_strength is not None:
        config = config.with_overrides({"generator.tone_transfer_strength": args.tone_strength})
    if args.tone_dark_strength is not None:
        config = config.with_overrides(
            {"generator.tone_transfer_dark_strength": args.tone_dark_strength}
        )
    data = weights_bytes(generator, config, args.dtype)
    stored, _ = weights_from_bytes(data)
    measured = stored_weights_psnr(generator, stored)
    print(
        f"checkpoint {directory} (step {checkpoint.step}); {args.dtype} storage: "
        f"{len(data) / 1e6:.1f} MB, lowest PSNR against fp32 on the demo photos {measured:.1f} dB"
    )
    if measured < args.min_psnr:
        print(f"error: below {args.min_psnr} dB; ship float32 instead", file=sys.stderr)
        return 1
    discriminators = discriminators_bytes(checkpoint, args.dtype)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"written {args.out}; sha256 {hashlib.sha256(data).hexdigest()} (STARTER_SHA256)")
    beside = args.out.with_name(DISCRIMINATORS_FILE_NAME)
    if discriminators is None:
        print("no discriminators in the checkpoint: generator only")
        if beside.exists():  # they belonged to another generator
            beside.unlink()
            print(f"removed {beside}, the discriminators of the generator it replaced")
        return 0
    beside.write_bytes(discriminators)
    print(
        f"written {beside} ({args.dtype}, {len(discriminators) / 1e6:.1f} MB); sha256 "
        f"{hashlib.sha256(discriminators).hexdigest()} (STARTER_DISCRIMINATORS_SHA256)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Turn a training run into the shipped starter checkpoint, checked before it is written.

``python -m pipelines.starter.ship --run RUN [--out enlightengan/weights/starter]`` takes the
run's latest complete checkpoint (or a checkpoint directory) and writes it as an ordinary
checkpoint directory (:func:`enlightengan.checkpoint.save_checkpoint`) holding the generator and,
when the checkpoint has them (a training checkpoint does), the two discriminators for
fine-tuning, their weights stored in ``--dtype`` (float16 by default, half the size). It refuses
to write when the stored weights' outputs on the demo's photos fall below ``--min-psnr`` dB (45)
of the fp32 checkpoint's. ``--tone-strength S`` stores ``generator.tone_transfer_strength = S``
in the shipped config, so that the starter enhances with tone transfer (:mod:`enlightengan.tone`)
by default. It prints the PSNR it measured and the sha256 of the written ``checkpoint.json``
(which holds every other file's sha256), to pin as ``STARTER_SHA256`` in
:mod:`enlightengan.shipped_weights`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from enlightengan.checkpoint import (
    DISCRIMINATOR_NAMES,
    INDEX_FILE,
    Checkpoint,
    as_float32,
    find_latest_checkpoint,
    load_checkpoint,
    load_generator,
    save_checkpoint,
    stored_state,
)
from enlightengan.config import EnlightenGANConfig
from enlightengan.generator import Generator
from enlightengan.inference import Enhancer, EnhancerSettings
from enlightengan.metrics import psnr
from enlightengan.shipped_weights import starter_checkpoint_path
from pipelines.demo.sample_photos import darken, demo_originals
from pipelines.errors import UserError
from pipelines.train.job import parse_override


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


def stored_generator(generator: Generator, dtype: str) -> Generator:
    """The generator as loading gives it back after storing its weights in ``dtype``."""
    stored = Generator(generator.config)
    stored.load_state_dict(as_float32(stored_state(generator.state_dict(), dtype)))
    return stored.eval()


def shipped_networks(
    checkpoint: Checkpoint, config: EnlightenGANConfig
) -> dict[str, torch.nn.Module]:
    """The checkpoint's generator, built from the shipped ``config``, and, when the checkpoint
    holds them, its global and patch discriminators (an exported generator has none)."""
    from enlightengan.discriminator import build_discriminators

    generator = Generator(config.generator)
    generator.load_state_dict(checkpoint.network_states["generator"])
    networks: dict[str, torch.nn.Module] = {"generator": generator.eval()}
    if all(name in checkpoint.network_states for name in DISCRIMINATOR_NAMES):
        modules = build_discriminators(checkpoint.config.discriminator)
        for name, module in zip(DISCRIMINATOR_NAMES, modules, strict=True):
            module.load_state_dict(checkpoint.network_states[name])
            networks[name] = module
    return networks


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
        default=starter_checkpoint_path(),
        help="checkpoint directory to write (default: the package's starter)",
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
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="generator.FIELD=VALUE",
        help="ship with this inference setting of the generator's config changed (e.g. "
        "generator.tone_transfer_denoise=1.0); repeatable; the network's own settings cannot "
        "change",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.output is not None:
        parser.error("--output: name the training run with --run (the checkpoint is --out)")
    if args.run is None:
        parser.error("the following arguments are required: --run")
    directory = find_latest_checkpoint(args.run)
    if directory is None:
        print(f"error: no complete checkpoint in or under {args.run}", file=sys.stderr)
        return 2
    checkpoint = load_checkpoint(directory)
    try:
        config = _shipped_config(checkpoint.config, args)
    except (UserError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    networks = shipped_networks(checkpoint, config)
    measured = stored_weights_psnr(
        networks["generator"], stored_generator(networks["generator"], args.dtype)
    )
    print(
        f"checkpoint {directory} (step {checkpoint.step}); {args.dtype} storage: lowest PSNR "
        f"against fp32 on the demo photos {measured:.1f} dB"
    )
    if measured < args.min_psnr:
        print(f"error: below {args.min_psnr} dB; ship float32 instead", file=sys.stderr)
        return 1
    save_checkpoint(
        args.out,
        config=config,
        networks=networks,
        trainer_state={"source": "enlightengan starter", "step": checkpoint.step},
        storage_dtype=args.dtype,
    )
    load_generator(args.out)
    _print_written(args.out, networks, args.dtype)
    return 0


def _shipped_config(config: EnlightenGANConfig, args: argparse.Namespace) -> EnlightenGANConfig:
    """The run's config with the tone-transfer strengths given on the command line; a
    ``sync_batch`` generator ships as ``batch`` (the same weights; inference never syncs)."""
    if config.generator.norm == "sync_batch":
        config = config.with_overrides({"generator.norm": "batch"})
    if args.tone_strength is not None:
        config = config.with_overrides({"generator.tone_transfer_strength": args.tone_strength})
    if args.tone_dark_strength is not None:
        config = config.with_overrides(
            {"generator.tone_transfer_dark_strength": args.tone_dark_strength}
        )
    overrides = dict(parse_override(text) for text in args.overrides)
    not_tone = sorted(key for key in overrides if not key.startswith("generator.tone_transfer_"))
    if not_tone:
        raise UserError(
            f"--set {', '.join(not_tone)}: only the generator's tone_transfer_* settings can "
            "change when shipping (the rest define the trained weights)"
        )
    flags = {
        "generator.tone_transfer_strength": ("--tone-strength", args.tone_strength),
        "generator.tone_transfer_dark_strength": ("--tone-dark-strength", args.tone_dark_strength),
    }
    twice = [flag for key, (flag, value) in flags.items() if key in overrides and value is not None]
    if twice:
        raise UserError(f"--set and {', '.join(twice)} both set the same setting: give one")
    return config.with_overrides(overrides).validate()


def _print_written(out: Path, networks: dict[str, torch.nn.Module], dtype: str) -> None:
    files = sorted(path for path in out.iterdir() if path.is_file())
    sizes = ", ".join(f"{path.name} {path.stat().st_size / 1e6:.1f} MB" for path in files)
    print(f"written {out} ({dtype}): {sizes}")
    if len(networks) == 1:
        print("no discriminators in the checkpoint: generator only")
    digest = hashlib.sha256((out / INDEX_FILE).read_bytes()).hexdigest()
    print(f"{INDEX_FILE} sha256 {digest} (pin as STARTER_SHA256)")


if __name__ == "__main__":
    sys.exit(main())

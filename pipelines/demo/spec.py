"""The settings of ``enlightengan demo`` (:class:`DemoJob`) and its flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipelines.options import (
    RayFields,
    add_common_arguments,
    add_output_argument,
    add_ray_arguments,
)
from pipelines.specs import SpecError

# Steps of each training mode when --steps is not given. Fine-tuning: few enough that the
# README's first command (setup + demo) stays short on a small CPU-only machine.
FINETUNE_STEPS = 20
SCRATCH_STEPS = 400
SCRATCH_LR = 5e-4
SCRATCH_EXPOSURE = 10.0


@dataclass(frozen=True)
class DemoJob(RayFields):
    """Build a small unpaired photo set from installed wheels, then prepare, fine-tune the
    shipped starter model on it (or, with ``from_scratch``, train a tiny model from random
    weights), enhance and evaluate, everything under ``output``.

    Field names are the flags' names with underscores; see ``enlightengan demo --help``.
    ``steps``, ``lr`` and ``exposure`` None: the mode's defaults (:attr:`train_steps` ...).
    """

    output: str = "demo-output"
    steps: int | None = None
    lr: float | None = None
    exposure: float | None = None
    seed: int = 0
    from_scratch: bool = False
    s3: bool = False
    dry_run: bool = False

    def validate(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise SpecError("{steps} must be >= 1")
        if (self.lr is not None and not self.lr > 0) or (
            self.exposure is not None and self.exposure < 0
        ):
            raise SpecError("{lr} must be > 0 and {exposure} >= 0")

    @property
    def train_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return SCRATCH_STEPS if self.from_scratch else FINETUNE_STEPS

    @property
    def train_lr(self) -> float | None:
        """The learning rate to set; None: train's fine-tuning default."""
        return self.lr if self.lr is not None or not self.from_scratch else SCRATCH_LR

    @property
    def train_exposure(self) -> float | None:
        """The exposure term's weight to set; None: the starter's own recipe."""
        if self.exposure is not None or not self.from_scratch:
            return self.exposure
        return SCRATCH_EXPOSURE


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    add_output_argument(parser, "folder for everything", old=("--out",), default="demo-output")
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="train a tiny model from random weights instead of fine-tuning the shipped "
        f"starter model (the pipeline from scratch: {SCRATCH_STEPS} steps by default, about 2 "
        "minutes on 2 cores; its column shows what so few steps give, not EnlightenGAN)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps (default {FINETUNE_STEPS} fine-tuning the starter, "
        f"{SCRATCH_STEPS} with --from-scratch; 2 for a smoke run). The learning rate is "
        "constant for the first half, then decays linearly to 0, as the paper's 100 + 100 "
        "epochs do",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: train's fine-tuning default, "
        f"enlightengan.finetune.FINETUNE_LR; {SCRATCH_LR:g} with --from-scratch, 5x the "
        "paper's 1e-4: the paper trains about 6,400 steps, 200 epochs of 32 batches of 32, "
        "with 4x the channels)",
    )
    parser.add_argument(
        "--exposure",
        type=float,
        default=None,
        help="weight of the exposure-control term (Zero-DCE's L_exp; not in the paper). "
        "Default: the starter's own recipe when fine-tuning; with --from-scratch "
        f"{SCRATCH_EXPOSURE:g} (target mean intensity 0.5), since with the paper's losses "
        "alone a few hundred steps of a tiny model barely brighten. 0 trains with the "
        "paper's losses only",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the training draws and of any fresh weights (from scratch: all of them; "
        "fine-tuning: the discriminators, when the starter ships none)",
    )
    parser.add_argument(
        "--s3",
        action="store_true",
        help="run the same steps through a local SeaweedFS S3 server (started on 127.0.0.1 "
        "with random credentials, stopped at the end; data kept in OUTPUT/s3)",
    )
    add_common_arguments(parser, dry_run="print the five steps and where each writes; run nothing")
    add_ray_arguments(parser)

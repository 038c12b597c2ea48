"""The settings of ``enlightengan demo`` (:class:`DemoJob`) and its flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipelines.errors import UserError
from pipelines.options import (
    RayFields,
    add_common_arguments,
    add_output_argument,
    add_ray_arguments,
)


@dataclass(frozen=True)
class DemoJob(RayFields):
    """Build a small unpaired photo set from installed wheels, then prepare, train a tiny
    model, enhance and evaluate, everything under ``output``.

    Field names are the flags' names with underscores; see ``enlightengan demo --help``.
    """

    output: str = "demo-output"
    steps: int = 400
    lr: float = 5e-4
    exposure: float = 10.0
    seed: int = 0
    s3: bool = False
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UserError("--steps must be >= 1")
        if not self.lr > 0 or self.exposure < 0:
            raise UserError("--lr must be > 0 and --exposure >= 0")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    add_output_argument(parser, "folder for everything", old=("--out",), default="demo-output")
    parser.add_argument(
        "--steps",
        type=int,
        default=400,
        help="training steps (2 for a smoke run). The learning "
        "rate is constant for the first half, then decays linearly to 0, as the paper's 100 + "
        "100 epochs do",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=5e-4,
        help="learning rate (5x the paper's 1e-4; the paper trains about 6,400 steps, 200 "
        "epochs of 32 batches of 32, with 4x the channels)",
    )
    parser.add_argument(
        "--exposure",
        type=float,
        default=10.0,
        help="weight of the exposure-control term (Zero-DCE's L_exp, target mean intensity "
        "0.5). It is not in the paper: with the paper's losses alone a few hundred steps of a "
        "tiny model barely brighten. 0 trains with the paper's losses only",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the quick model's initialisation and draws"
    )
    parser.add_argument(
        "--s3",
        action="store_true",
        help="run the same steps through a local SeaweedFS S3 server (started on 127.0.0.1 "
        "with random credentials, stopped at the end; data kept in OUTPUT/s3)",
    )
    add_common_arguments(parser, dry_run="print the five steps and where each writes; run nothing")
    add_ray_arguments(parser)

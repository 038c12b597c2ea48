"""The settings of ``enlightengan prepare`` (:class:`PrepareJob`) and its flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipelines.io.formats import DEFAULT_MAX_PIXELS
from pipelines.options import (
    RayFields,
    StorageFields,
    add_common_arguments,
    add_output_argument,
    add_ray_arguments,
    add_storage_arguments,
)
from pipelines.specs import SpecError, choice

SMALL_IMAGE_RULES = ("reject", "upscale")


@dataclass(frozen=True)
class PrepareJob(StorageFields, RayFields):
    """Ingest unpaired ``low`` and ``normal`` photos into Parquet shards under ``output``.

    Field names are the flags' names with underscores; see ``enlightengan prepare --help``.
    """

    low: str
    normal: str
    output: str
    max_long: int = 600
    max_short: int = 400
    min_side: int = 320
    small: str = choice(SMALL_IMAGE_RULES, "reject")
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_mb: float = 512.0
    dedup: bool = True
    shard_size_mb: float = 256.0
    images_per_task: int = 16
    overwrite: bool = False
    dry_run: bool = False

    def validate(self) -> None:
        if self.images_per_task < 1 or self.shard_size_mb <= 0 or self.max_pixels < 1:
            raise SpecError("{images_per_task}, {shard_size_mb} and {max_pixels} must be positive")
        if self.max_file_mb <= 0:
            raise SpecError("{max_file_mb} must be positive")


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--low", default=None, help="low-light photos: folder, file:// or s3:// (required)"
    )
    parser.add_argument(
        "--normal", default=None, help="normal-light photos, unpaired with --low (required)"
    )
    add_output_argument(parser, "folder or s3:// prefix for the shards", old=("--out",))
    resize = parser.add_argument_group("resize")
    resize.add_argument("--max-long", type=int, default=600, help="fit: long side")
    resize.add_argument("--max-short", type=int, default=400, help="fit: short side")
    resize.add_argument(
        "--min-side", type=int, default=320, help="short side floor (the training crop)"
    )
    resize.add_argument(
        "--small",
        choices=SMALL_IMAGE_RULES,
        default="reject",
        help="images whose short side is below --min-side: reject or upscale",
    )
    checks = parser.add_argument_group("checks")
    checks.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="reject images with more pixels (decompression bombs)",
    )
    checks.add_argument(
        "--max-file-mb", type=float, default=512.0, help="reject larger files unread"
    )
    checks.add_argument(
        "--no-dedup",
        dest="dedup",
        action="store_false",
        default=True,
        help="keep identical source files (by default one copy per domain is kept)",
    )
    shards = parser.add_argument_group("shards")
    shards.add_argument("--shard-size-mb", type=float, default=256.0, help="target shard size")
    shards.add_argument("--images-per-task", type=int, default=16, help="images per Ray task")
    shards.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the shards of an earlier run in --output (without it, that is an error)",
    )
    add_common_arguments(parser, dry_run="list the inputs and show the settings; write nothing")
    add_storage_arguments(parser)
    add_ray_arguments(parser)

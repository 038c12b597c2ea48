"""The settings of ``enlightengan enhance`` (:class:`EnhanceJob`) and its flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from enlightengan.config import TONE_TRANSFERS
from pipelines.inference.darkness import DEFAULT_DARK_THRESHOLD, ONLY_DARK_MODES, DarkPolicy
from pipelines.io.formats import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from pipelines.options import (
    BACKENDS,
    PRECISIONS,
    RayFields,
    StorageFields,
    add_checkpoint_argument,
    add_common_arguments,
    add_output_argument,
    add_precision_arguments,
    add_ray_arguments,
    add_storage_arguments,
    add_worker_arguments,
    check_worker_resources,
    deprecated_flag,
)
from pipelines.specs import SpecError, choice

IMAGE_FORMATS = ("same", "png", "jpeg")
DEFAULT_REPORT_SAMPLES = 24
# --report-niqe scores both sides of a sampled image fitted into this many pixels a side.
REPORT_NIQE_SIDE = 1024
DEFAULT_EXTENSIONS = ",".join(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class EnhanceJob(StorageFields, RayFields):
    """Enhance every image under ``input`` into ``output`` (same relative keys), resumably.

    Field names are the flags' names with underscores; see ``enlightengan enhance --help``.
    """

    input: str
    output: str
    checkpoint: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    threads_per_worker: int | None = None
    memory_per_worker: float | None = None
    batch_size: int = 4
    precision: str = choice(PRECISIONS, "auto")
    backend: str = choice(BACKENDS, "auto")
    channels_last: bool = True
    tile_size: int = 1024
    tile_overlap: int = 64
    tone_transfer: str = choice(TONE_TRANSFERS, "model")
    tone_strength: float | None = None
    tone_dark_strength: float | None = None
    tone_denoise: float | None = None
    image_format: str = choice(IMAGE_FORMATS, "same")
    jpeg_quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS
    extensions: str = DEFAULT_EXTENSIONS
    limit: int | None = None
    overwrite: bool = False
    dry_run: bool = False
    manifest_rows: int = 256
    only_dark: str | None = choice(ONLY_DARK_MODES, None)
    dark_threshold: float = DEFAULT_DARK_THRESHOLD
    report_samples: int = DEFAULT_REPORT_SAMPLES
    report_niqe: bool = False

    def validate(self) -> None:
        check_worker_resources(self)
        if self.workers < 1 or self.batch_size < 1:
            raise SpecError("{workers} and {batch_size} must be >= 1")
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0:
            raise SpecError("{gpus_per_worker} and {cpus_per_worker} must be >= 0")
        if self.tile_size and self.tile_size < 64:
            raise SpecError("{tile_size} must be 0 (never tile) or >= 64")
        if self.tone_strength is not None and not 0.0 <= self.tone_strength <= 2.0:
            raise SpecError("{tone_strength} must be between 0 and 2")
        if self.tone_dark_strength is not None and not 0.0 <= self.tone_dark_strength <= 2.0:
            raise SpecError("{tone_dark_strength} must be between 0 and 2")
        if self.tone_denoise is not None and not 0.0 <= self.tone_denoise <= 10.0:
            raise SpecError("{tone_denoise} must be between 0 and 10")
        if not 1 <= self.jpeg_quality <= 100:
            raise SpecError("{jpeg_quality} must be between 1 and 100")
        if self.manifest_rows < 1:
            raise SpecError("{manifest_rows} must be >= 1")
        if self.limit is not None and self.limit < 0:
            raise SpecError("{limit} must be >= 0")
        if self.report_samples < 0:
            raise SpecError("{report_samples} must be >= 0")
        if not 0.0 <= self.dark_threshold <= 1.0:
            raise SpecError("{dark_threshold} must be between 0 and 1 (a darkness score)")
        if self.only_dark == "copy" and self.image_format != "same":
            raise SpecError(
                "{only_dark} copy keeps the original bytes, which {image_format} would put "
                "under a key with another extension: use {image_format} same, or {only_dark} skip"
            )

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_worker > 0 else "cpu"

    @property
    def dark_policy(self) -> DarkPolicy | None:
        """The rule of ``--only-dark`` (None without it)."""
        return DarkPolicy(self.only_dark, self.dark_threshold) if self.only_dark else None


def add_enhance_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", default=None, help="input prefix: folder, file:// or s3:// (required)"
    )
    add_output_argument(parser, "output prefix: the same relative keys as the input")
    add_checkpoint_argument(parser)
    add_worker_arguments(parser, "enhancer actors")
    model = parser.add_argument_group("model")
    model.add_argument("--batch-size", type=int, default=4, help="images per forward")
    add_precision_arguments(model)
    model.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NHWC memory format for the torch backend",
    )
    model.add_argument(
        "--tile-size", type=int, default=1024, help="tile images with a longer side; 0: never"
    )
    model.add_argument("--tile-overlap", type=int, default=64, help="pixels between tiles")
    model.add_argument(
        "--tone-transfer",
        choices=TONE_TRANSFERS,
        default="model",
        help="apply the model's brightening and colour balance to the input's own detail "
        "(enlightengan.tone): model = as the checkpoint's config says (the starter and models "
        "fine-tuned from it: on; models trained from scratch: off), on, or off (the network's "
        "output as is: better on noisy high-ISO photos, which the network smooths)",
    )
    model.add_argument(
        "--tone-strength",
        type=float,
        default=None,
        help="with tone transfer, how much of the model's brightening to take (0-2; default: "
        "the checkpoint's, else 1)",
    )
    model.add_argument(
        "--tone-dark-strength",
        type=float,
        default=None,
        help="with tone transfer, the strength for very dark photos (mean luma up to the "
        "checkpoint's tone_transfer_dark_luma, the starter's 20; --tone-strength from its "
        "tone_transfer_bright_luma, 40, up; interpolated between; noisy photos get less of "
        "it where the config sets a noise range); default: the checkpoint's (the starter "
        "lifts very dark photos 1.4x); --tone-strength alone gives every photo that strength",
    )
    model.add_argument(
        "--tone-denoise",
        type=float,
        default=None,
        help="with tone transfer, smooth detail at the photo's own noise level before "
        "lifting it (0-10, in units of the estimated noise; 0: keep every pixel's detail); "
        "default: the checkpoint's (the starter denoises)",
    )
    images = parser.add_argument_group("images")
    images.add_argument(
        "--image-format",
        choices=IMAGE_FORMATS,
        default="same",
        help="format of the enhanced files: same as each input, png or jpeg",
    )
    deprecated_flag(images, "--format", "--image-format", "image_format", choices=IMAGE_FORMATS)
    images.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of outputs")
    images.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="larger images are rejected as decompression bombs",
    )
    images.add_argument(
        "--extensions",
        default=DEFAULT_EXTENSIONS,
        help="file extensions to enhance, comma-separated; '*' for every file",
    )
    images.add_argument("--limit", type=int, default=None, help="enhance at most N images")
    images.add_argument("--overwrite", action="store_true", help="redo finished images too")
    images.add_argument(
        "--manifest-rows",
        type=int,
        default=256,
        help="manifest rows per Parquet part; after a crash, images whose row had not reached "
        "a part yet are redone",
    )
    dark = parser.add_argument_group("dark images only")
    dark.add_argument(
        "--only-dark",
        choices=ONLY_DARK_MODES,
        default=None,
        help="enhance only images whose darkness score reaches --dark-threshold; the others are "
        "skipped (no output, manifest status not-dark) or copied unchanged (status copied)",
    )
    dark.add_argument(
        "--dark-threshold",
        type=float,
        default=DEFAULT_DARK_THRESHOLD,
        help="darkness score from which an image counts as dark: 1 - mean((luma/255)**(1/3))**3, "
        "0 white, 1 black (the threshold was chosen on real dark and well-exposed photos: see "
        "docs/guides/enhance.md)",
    )
    report = parser.add_argument_group("run report (<output>/_report/<run id>/index.html)")
    report.add_argument(
        "--report-samples",
        type=int,
        default=DEFAULT_REPORT_SAMPLES,
        help="before/after pairs shown in the run report (the same keys in every run, chosen "
        "by a hash of the key); 0: none",
    )
    report.add_argument(
        "--report-niqe",
        action="store_true",
        help=f"score the sample's inputs and outputs with NIQE, fitted into {REPORT_NIQE_SIDE} "
        "pixels a side",
    )
    add_common_arguments(
        parser,
        dry_run="list the input, count what would be done, show the first keys and an "
        "estimated time; write nothing",
    )
    add_storage_arguments(parser)
    add_ray_arguments(parser)

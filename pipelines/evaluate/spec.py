"""The settings of ``enlightengan evaluate`` (:class:`EvaluateJob`) and its flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipelines.io.formats import DEFAULT_MAX_PIXELS
from pipelines.options import (
    BACKENDS,
    PRECISIONS,
    RayFields,
    StorageFields,
    add_checkpoint_argument,
    add_common_arguments,
    add_precision_arguments,
    add_ray_arguments,
    add_storage_arguments,
    add_worker_arguments,
    check_worker_resources,
)
from pipelines.specs import SpecError, choice


@dataclass(frozen=True)
class EvaluateJob(StorageFields, RayFields):
    """Score the images under ``input``, the generator's outputs and two baselines with NIQE.

    Field names are the flags' names with underscores; see ``enlightengan evaluate --help``.
    ``cpus_per_worker`` None: one CPU per enhancer actor, half of one when two pools run.
    ``title`` / ``compare_title`` None: the contact sheet's default column titles
    (:func:`pipelines.evaluate.job.model_titles`).
    """

    input: str
    output: str = "evaluation"
    checkpoint: str | None = None
    compare: str | None = None
    title: str | None = None
    compare_title: str | None = None
    limit: int | None = None
    samples: int = 4
    gamma: float = 1 / 2.2
    paper_set: str = "auto"
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    threads_per_worker: int | None = None
    memory_per_worker: float | None = None
    batch_size: int = 1
    tile_size: int = 1024
    backend: str = choice(BACKENDS, "torch")
    precision: str = choice(PRECISIONS, "auto")
    max_pixels: int = DEFAULT_MAX_PIXELS
    dry_run: bool = False

    def validate(self) -> None:
        check_worker_resources(self)
        if self.workers < 1 or self.batch_size < 1:
            raise SpecError("{workers} and {batch_size} must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise SpecError("{limit} must be >= 1")
        if not self.gamma > 0:
            raise SpecError("{gamma} must be > 0")
        if self.samples < 0:
            raise SpecError("{samples} must be >= 0")
        if self.tile_size and self.tile_size < 64:
            raise SpecError("{tile_size} must be 0 (never tile) or >= 64")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise SpecError("{cpus_per_worker} must be > 0")

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_worker > 0 else "cpu"


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", default=None, help="images to evaluate: folder or s3:// prefix (required)"
    )
    parser.add_argument("--output", default="evaluation", help="where the tables and pictures go")
    add_checkpoint_argument(parser)
    parser.add_argument(
        "--compare",
        default=None,
        metavar="CHECKPOINT",
        help="score a second model beside the first, in its own contact-sheet column "
        "(same forms as --checkpoint; e.g. --compare starter)",
    )
    parser.add_argument(
        "--title",
        default=None,
        help="contact-sheet title of the --checkpoint model's column (default: 'starter' for "
        "the shipped starter model, else 'EnlightenGAN')",
    )
    parser.add_argument(
        "--compare-title",
        default=None,
        help="contact-sheet title of the --compare model's column (default: 'starter' or "
        "'second model')",
    )
    scores = parser.add_argument_group("scores")
    scores.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    scores.add_argument("--samples", type=int, default=4, help="rows in the contact sheet")
    scores.add_argument("--gamma", type=float, default=1 / 2.2, help="gamma baseline exponent")
    scores.add_argument(
        "--paper-set",
        default="auto",
        help="which row of the paper's NIQE table to print beside ours (MEF, LIME, NPE, VV, "
        "DICM, all, none); auto: the input folder's name when it is one of them",
    )
    scores.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="larger images are rejected as decompression bombs",
    )
    add_worker_arguments(
        parser,
        "enhancer actors",
        cpus_per_worker=None,
        cpus_help="CPUs each enhancer actor reserves (default 1, or 0.5 each when --compare "
        "or a GPU runs a second pool)",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--batch-size", type=int, default=1, help="images per forward")
    model.add_argument(
        "--tile-size", type=int, default=1024, help="tile images with a longer side; 0: never"
    )
    # torch by default: the scores describe the model as PyTorch runs it.
    add_precision_arguments(model, backend="torch")
    add_common_arguments(
        parser, dry_run="list the images and load the models; score and write nothing"
    )
    add_storage_arguments(parser)
    add_ray_arguments(parser)

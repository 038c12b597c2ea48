"""Domain adaptation, shown: fine-tune the starter on a domain it never saw, score it held out.

A target domain is split by file name (the photos ordered by the sha256 of their names; the
first third held out, the rest fine-tuned on; the split is printed). The starter generator (or
``--weights``, the generator of any checkpoint directory) is fine-tuned on the CPU for
``--minutes`` of wall time with ``enlightengan.training.training_step`` as
``benchmarks/starter_recipe.py`` runs it (lr
constant for the first half of the time, then decaying linearly to 0), unpaired: low light =
the fine-tuning part, normal light = ``--normal`` (a folder of well-exposed photos, e.g. the
starter corpus's ``normal/``, or prepared shards). The config is the starter's own recipe
(``enlightengan.finetune.fine_tune_config``, as ``enlightengan train --init-from starter``) at
the fine-tuning lr ``enlightengan.finetune.FINETUNE_LR`` unless ``--lr`` or ``optim.lr=``.
Then the starter and the fine-tuned model enhance the held-out part and are scored.

Domains (``--domain``):

* ``real``: ``--photos`` are real dark photos, used as they are (DICM's 64, from the Zero-DCE
  repository, ``Zero-DCE_code/data/test_data/DICM``: research data, benchmark only, never
  commit or ship it). Scored by NIQE, mean luma and mean HSV saturation (no references).
* ``camera``: ``--photos`` are well-exposed photos (``demo`` names the demo's five wheel
  photos, which the starter never trained on), darkened by :func:`darken_camera_strong`:
  ``bench_quality.darken_like_camera`` with strong read noise and a fixed warm colour cast.
  Scored by NIQE and PSNR/SSIM against the originals (and luma, saturation).

Discriminators (``--discriminators``): ``shipped``, the starter's own (the package's
``weights/starter/discriminators.pt``; an error when this release ships none), ``fresh``
(random, seeded), or ``--discriminators-file PATH``, those of any checkpoint directory that
holds them (an unshipped candidate). Prints the split, the steps done and seconds per step,
and a Markdown table (input, starter, fine-tuned, and the originals for ``camera``);
``--sheet`` writes the held-out contact sheet (input | starter | fine-tuned [| original]).
For example:

    python benchmarks/domain_adaptation.py --domain real \\
        --photos Zero-DCE/Zero-DCE_code/data/test_data/DICM --normal starter-work/corpus/normal \\
        --discriminators shipped --sheet dicm-shipped.png
    python benchmarks/domain_adaptation.py --domain camera --photos starter-work/corpus/holdout \\
        --photos demo --normal starter-work/corpus/normal --discriminators fresh
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_quality import (  # noqa: E402
    CAMERA_SEED,
    Cache,
    Scorer,
    TestSet,
    baseline_variants,
    darken_like_camera,
    format_table,
    means_of,
    model_variant,
    real_set,
    score_test_set,
    sheet_from_cells,
)
from starter_recipe import read_domain, train_within  # noqa: E402

from enlightengan.checkpoint import load_networks, save_checkpoint  # noqa: E402
from enlightengan.config import EnlightenGANConfig  # noqa: E402
from enlightengan.finetune import (  # noqa: E402
    FINETUNE_LR,
    InitSource,
    checkpoint_source,
    fine_tune_config,
    initial_networks,
    starter_source,
)
from enlightengan.generator import Generator  # noqa: E402
from enlightengan.serialization import CheckpointError  # noqa: E402
from enlightengan.training import build_modules, build_optimizers  # noqa: E402
from enlightengan.vgg import build_vgg_features  # noqa: E402

# The camera domain: read noise 1.5-3 times the strongest of bench_quality's camera set (0.004
# of full scale), and a fixed warm cast (red up, blue down, in linear light, against green).
STRONG_READ_NOISE = (0.006, 0.012)
CAST_GAINS = (1.25, 0.7)
HELD_OUT_SHARE = 1 / 3
DEMO_PHOTOS = "demo"


def darken_camera_strong(rgb: np.ndarray, key: str, seed: int = CAMERA_SEED) -> np.ndarray:
    """The camera domain's dark copy of ``rgb``: an under-exposed camera's JPEG with strong
    read noise (:data:`STRONG_READ_NOISE`) and a warm cast (:data:`CAST_GAINS`), seeded by
    ``seed`` and ``key``."""
    return darken_like_camera(rgb, key, seed, read_noise=STRONG_READ_NOISE, gains=CAST_GAINS)


def split_names(names: list[str]) -> tuple[list[str], list[str]]:
    """(fine-tuning, held-out) names, each sorted: the names ordered by their sha256, the first
    third (rounded, at least one) held out. The same names give the same split in any order."""
    if len(set(names)) != len(names):
        raise ValueError("photo names must be unique")
    if len(names) < 2:
        raise ValueError(f"need at least 2 photos to split, got {len(names)}")
    ordered = sorted(names, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    held = min(len(names) - 1, max(1, round(len(names) * HELD_OUT_SHARE)))
    return sorted(ordered[held:]), sorted(ordered[:held])


def shrink(rgb: np.ndarray, longest_side: int | None) -> np.ndarray:
    """``rgb`` scaled down so its longest side is at most ``longest_side`` (None: as it is)."""
    from pipelines.demo.sample_photos import fit_within

    if longest_side is None or max(rgb.shape[:2]) <= longest_side:
        return rgb
    return fit_within(rgb, longest_side, longest_side)


def load_photos(sources: list[str], longest_side: int | None) -> dict[str, np.ndarray]:
    """Name -> RGB of every photo in the ``--photos`` folders (``demo``: the demo's five)."""
    from pipelines.demo.sample_photos import demo_originals

    photos: dict[str, np.ndarray] = {}
    for source in sources:
        found = demo_originals() if source == DEMO_PHOTOS else real_set(Path(source))
        for name, rgb in found:
            if name in photos:
                raise SystemExit(f"--photos: {name} is in two of {sources}")
            photos[name] = shrink(rgb, longest_side)
    return photos


def load_normal(path: Path, longest_side: int | None) -> list[np.ndarray]:
    """The normal-light photos: prepared shards (``PATH/normal/*.parquet`` or
    ``PATH/*.parquet``) or a folder of image files."""
    if any((path / "normal").glob("*.parquet")):
        images = read_domain(path, "normal")
    elif any(path.glob("*.parquet")):
        images = read_domain(path.parent, path.name)
    else:
        images = [rgb for _, rgb in real_set(path)]
    return [shrink(rgb, longest_side) for rgb in images]


def start_source(args: argparse.Namespace) -> tuple[InitSource, str]:
    """The generator and discriminators to start from, and a label for the discriminators.
    Raises ValueError or CheckpointError (one line) when they cannot be had."""
    if args.weights is None:
        source = starter_source()
    else:
        source = _generator_only(_checkpoint_source(args.weights))
    if args.discriminators_file is not None:
        other = _checkpoint_source(args.discriminators_file)
        if not other.has_discriminators:
            raise ValueError(f"--discriminators-file {other.uri} holds no discriminators")
        label = args.discriminators_file.name
        return _with_discriminators(source, other.discriminator_states, other.config), label
    if args.discriminators == "fresh":
        return _with_discriminators(source, None, source.config), "fresh"
    if args.weights is not None:
        shipped = starter_source()
        if shipped.has_discriminators:
            source = _with_discriminators(source, shipped.discriminator_states, shipped.config)
    if not source.has_discriminators:
        raise ValueError(
            "--discriminators shipped: this release ships no starter discriminators "
            "(enlightengan/weights/starter/discriminators.pt); pass --discriminators fresh "
            "or --discriminators-file PATH"
        )
    return source, "shipped"


def _checkpoint_source(directory: Path) -> InitSource:
    """A checkpoint directory's networks, as fine-tuning reads them."""
    checkpoint = load_networks(directory)
    index = json.loads((directory / "checkpoint.json").read_text())
    return checkpoint_source(checkpoint, str(directory), index)


def _generator_only(source: InitSource) -> InitSource:
    return replace(source, discriminator_states=None, discriminators_sha256=None)


def _with_discriminators(
    source: InitSource, states: dict | None, d_config: EnlightenGANConfig
) -> InitSource:
    """``source`` with the discriminator ``states`` (None: fresh ones) and the discriminator
    settings of ``d_config`` (the config that built them)."""
    data = source.config.to_dict()
    data["discriminator"] = d_config.to_dict()["discriminator"]
    return InitSource(
        kind=source.kind,
        uri=source.uri,
        config=EnlightenGANConfig.from_dict(data).validate(),
        generator_state=source.generator_state,
        generator_sha256=source.generator_sha256,
        discriminator_states=states,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--domain",
        choices=("real", "camera"),
        required=True,
        help="real: dark photos as they are; camera: well-exposed photos darkened here",
    )
    parser.add_argument(
        "--photos",
        action="append",
        required=True,
        metavar="FOLDER",
        help="the target domain's photos (repeatable): real dark photos for --domain real, "
        f"well-exposed ones for --domain camera ('{DEMO_PHOTOS}': the demo's five)",
    )
    parser.add_argument(
        "--normal",
        type=Path,
        required=True,
        metavar="PATH",
        help="normal-light photos to fine-tune with: a folder of images or prepared shards",
    )
    parser.add_argument(
        "--discriminators",
        choices=("shipped", "fresh"),
        default="shipped",
        help="the starter's shipped discriminators (default) or fresh random ones",
    )
    parser.add_argument(
        "--discriminators-file",
        type=Path,
        metavar="PATH",
        help="start the discriminators from this checkpoint directory's instead",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        metavar="PATH",
        help="a checkpoint directory whose generator to start from instead",
    )
    parser.add_argument("--minutes", type=float, default=20.0, help="fine-tuning wall time")
    parser.add_argument(
        "--lr", type=float, help=f"learning rate (default: the fine-tuning default {FINETUNE_LR})"
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (native-bf16 CPUs)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--longest-side", type=int, help="scale larger photos down to this (default: as they are)"
    )
    parser.add_argument(
        "--sheet", type=Path, metavar="PATH", help="write the held-out contact sheet here"
    )
    parser.add_argument(
        "--save",
        type=Path,
        metavar="PATH",
        help="write the fine-tuned generator (a checkpoint directory)",
    )
    parser.add_argument("overrides", nargs="*", help="section.field=value (JSON values)")
    args = parser.parse_args(argv)
    if args.discriminators_file is not None and args.discriminators == "fresh":
        parser.error("--discriminators fresh and --discriminators-file contradict each other")
    return args


def machine_line(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"machine: {cpu}, {threads} torch threads, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark; returns the held-out means per variant."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        source, discriminators = start_source(args)
        overrides = {key: json.loads(value) for key, value in map(_setting, args.overrides)}
        if args.lr is not None:
            overrides["optim.lr"] = args.lr
        config = fine_tune_config(source, {}, overrides)
        networks = initial_networks(config, source)
    except (ValueError, RuntimeError, CheckpointError) as error:
        raise SystemExit(f"error: {str(error).splitlines()[0]}") from None

    photos = load_photos(args.photos, args.longest_side)
    tune, held = split_names(list(photos))
    print(f"split: {len(tune)} photos to fine-tune on, {len(held)} held out: {', '.join(held)}")
    camera = args.domain == "camera"
    dark = {
        name: darken_camera_strong(rgb, name) if camera else rgb for name, rgb in photos.items()
    }
    normal = load_normal(args.normal, args.longest_side)

    torch.manual_seed(config.seed)
    modules = build_modules(
        config, build_vgg_features(config.loss.vgg_weights, flavour=config.loss.vgg_flavour)
    )
    for name, network in networks.items():
        getattr(modules, name).load_state_dict(network.state_dict())
    optimizers = build_optimizers(modules, config.optim)
    print(
        f"generator: {source.uri} (sha256 {source.generator_sha256[:12]}); discriminators: "
        f"{discriminators}; lr {config.optim.lr:g}; {len(normal)} normal-light photos"
    )
    print(machine_line(args.threads), flush=True)
    started = time.perf_counter()
    steps = train_within(
        modules,
        optimizers,
        [dark[name] for name in tune],
        normal,
        config,
        args.minutes * 60,
        torch.bfloat16 if args.bf16 else None,
    )
    seconds = time.perf_counter() - started
    modules.generator.eval()
    if args.save is not None:
        save_checkpoint(
            args.save,
            config=config,
            networks={"generator": modules.generator},
            storage_dtype="float16",
        )

    starter = Generator(config.generator)
    starter.load_state_dict(source.generator_state)
    tuned_name = f"fine-tuned ({discriminators} D)"
    scorers = {
        "input": Scorer(baseline_variants()["input"], None),
        "starter": Scorer(model_variant(starter.eval()), None),
        tuned_name: Scorer(model_variant(modules.generator), None),
    }
    description = "strong read noise, warm cast" if camera else "real dark photos, no reference"
    title = (
        f"{args.domain}: {len(held)} held-out photos ({description}); fine-tuned on "
        f"{len(tune)} for {args.minutes:g} min, {discriminators} discriminators"
    )
    test_set = TestSet(
        args.domain,
        title,
        held,
        [dark[name] for name in held],
        [photos[name] for name in held] if camera else None,
    )
    rows, cells = score_test_set(test_set, scorers, Cache(None))
    means = {name: means_of(variant_rows) for name, variant_rows in rows.items()}
    if args.sheet is not None:
        sheet_from_cells(cells, held).save(args.sheet)
        print(f"contact sheet: {args.sheet}")
    print(f"{steps} steps in {seconds:.0f} s ({seconds / max(steps, 1):.2f} s/step)")
    print(format_table(title, means))
    return means


def _setting(item: str) -> tuple[str, str]:
    key, separator, value = item.partition("=")
    if not separator:
        raise ValueError(f"settings are section.field=value, got {item!r}")
    return key, value


if __name__ == "__main__":
    main()

"""Choose the starter's tone-transfer settings: score many settings on one network's outputs.

The tone transfer (:mod:`enlightengan.tone`) changes no weight, so the generator runs once per
photo (``--generator``, tone transfer off, fp32, at the photo's own size) and its outputs are
kept under ``--output``/outputs; every setting in ``--settings`` (a JSON object: name ->
:class:`~enlightengan.tone.ToneTransfer` keyword arguments) is then applied to them and scored
with ``bench_quality``'s metrics and test sets. Each line gives a setting's means on one set
and, with ``--goals`` (a JSON object: set -> list of ``[metric, "<" | ">" | "in", bound]``, a
bound of ``in`` being ``[low, high]``), how far each missed goal is missed, relative to its
bound; the last line per setting names its worst margin. Choose on validation sets, then
report the held-out ones with the chosen setting (BENCHMARKS.md, "Starter v3").

    python benchmarks/tone_search.py --corpus starter-corpus --real DICM=DICM \\
        --sets demo,demo-camera,DICM --settings settings.json --goals goals.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quality  # noqa: E402

from enlightengan.tone import ToneTransfer  # noqa: E402


def generator_identity(generator: str) -> str:
    """The sha256 of the checkpoint's index (``checkpoint.json``, which lists every file's)."""
    from enlightengan.starter import starter_checkpoint

    directory = starter_checkpoint() if generator == "starter" else Path(generator)
    return hashlib.sha256((Path(directory) / "checkpoint.json").read_bytes()).hexdigest()[:16]


def network_outputs(generator: str, test_set, folder: Path) -> list[np.ndarray]:
    """The generator's own outputs for the set's inputs, cached by the generator and the set."""
    from enlightengan.inference import Enhancer, EnhancerSettings

    path = folder / f"{test_set.name}-{test_set.fingerprint()}-{generator_identity(generator)}.npz"
    if not path.exists():
        enhancer = Enhancer.from_pretrained(
            generator, EnhancerSettings(batch_size=1, tone_transfer="off")
        )
        outputs = [enhancer([image])[0] for image in test_set.inputs]
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npz")
        np.savez(partial, *outputs)
        os.replace(partial, path)
    with np.load(path) as stored:
        return [stored[f"arr_{index}"] for index in range(len(test_set.inputs))]


def transferred(tone: ToneTransfer, image: np.ndarray, output: np.ndarray) -> np.ndarray:
    as_batch = [torch.tensor(x).permute(2, 0, 1)[None].float() for x in (image, output)]
    result = tone(*as_batch)[0].permute(1, 2, 0)
    return result.round().clamp(0, 255).to(torch.uint8).numpy()


def margins(means: dict[str, float], goals: list) -> dict[str, float]:
    """Per goal, how far the mean is inside (> 0) or outside (< 0) its bound, relative to it."""
    found = {}
    for metric, relation, bound in goals:
        value = means[metric]
        if relation == ">":
            found[metric] = (value - bound) / abs(bound)
        elif relation == "<":
            found[metric] = (bound - value) / abs(bound)
        else:
            found[metric] = min((value - bound[0]) / bound[0], (bound[1] - value) / bound[1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--generator", default="starter", help="checkpoint dir or 'starter'")
    parser.add_argument("--corpus", type=Path, default=None, help="starter corpus (holdout sets)")
    parser.add_argument("--real", action="append", default=[], metavar="NAME=FOLDER")
    parser.add_argument("--sets", required=True, help="comma-separated set names")
    parser.add_argument("--settings", type=Path, required=True, help="JSON: name -> settings")
    parser.add_argument("--goals", type=Path, default=None, help="JSON: set -> goals")
    parser.add_argument("--output", type=Path, default=Path("tone-search"))
    args = parser.parse_args()

    settings = json.loads(args.settings.read_text())
    goals = json.loads(args.goals.read_text()) if args.goals else {}
    sets = bench_quality.build_test_sets(args.corpus, args.real, args.sets)
    outputs = {s.name: network_outputs(args.generator, s, args.output / "outputs") for s in sets}
    for label, keywords in settings.items():
        tone = ToneTransfer(**keywords).validate()
        worst = []
        for test_set in sets:
            rows = [
                bench_quality.image_scores(
                    transferred(tone, image, output),
                    None if test_set.originals is None else test_set.originals[index],
                )
                for index, (image, output) in enumerate(
                    zip(test_set.inputs, outputs[test_set.name], strict=True)
                )
            ]
            means = bench_quality.means_of(rows)
            missed = margins(means, goals.get(test_set.name, []))
            worst += [(margin, f"{test_set.name} {metric}") for metric, margin in missed.items()]
            short = " ".join(f"{m} {v:+.1%}" for m, v in missed.items() if v < 0)
            print(
                f"{label} | {test_set.name} | NIQE {means['niqe']:.3f} PSNR {means['psnr']:.2f} "
                f"SSIM {means['ssim']:.3f} luma {means['luma']:.1f} "
                f"sat {means['saturation']:.1f} | {short or 'all goals met'}",
                flush=True,
            )
        if worst:
            margin, where = min(worst)
            print(f"{label} | worst margin {margin:+.1%} ({where})", flush=True)


if __name__ == "__main__":
    main()

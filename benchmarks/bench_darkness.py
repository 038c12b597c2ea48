"""Which photos does ``--only-dark`` call dark? Both error rates, old score and new, per set.

The sets are dark and well-exposed photos; the benchmark also times the scoring and NIQE.

Scores (higher is darker; a photo counts as dark at or above the threshold):

* new: ``darkness`` of ``pipelines.inference.darkness``, ``1 - mean((luma/255) ** (1/3)) ** 3``,
  dark from ``DEFAULT_DARK_THRESHOLD``;
* old (before issue 26): ``1 - p95(luma) / 255``, dark from 0.65.

Sets (each image as ``enhance`` decodes it, scored on the same strided copy):

* ``demo-dark`` (dark): the demo's five low-light photos (``x**2.2 * 0.25``, fitted into
  600x400); ``demo-normal`` (well-exposed): its four normal-light photos and the five
  undarkened originals;
* ``--corpus``: the starter corpus's folders (built by ``python -m pipelines.starter.corpus``):
  ``low`` (the camera-like synthetic degradations) as dark, ``normal`` and ``holdout`` as
  well-exposed;
* ``--positives FOLDER`` / ``--negatives FOLDER`` (repeatable): any folder of dark /
  well-exposed photos (jpg, png, bmp, webp, tif), named by its folder. The real low-light photos
  this was calibrated on are research data, not shipped: DICM (64 photos) and LIME (9) from
  github:Li-Chongyi/Zero-DCE, ``Zero-DCE_code/data/test_data/DICM`` and ``.../LIME``.
  DICM is not all dark: BENCHMARKS.md (issue 26) lists which of its photos were counted how.

    python benchmarks/bench_darkness.py --corpus starter-corpus \\
        --positives Zero-DCE_code/data/test_data/DICM --positives Zero-DCE_code/data/test_data/LIME
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.demo.sample_photos import build_photo_dataset, demo_originals  # noqa: E402
from pipelines.enhance.report import report_niqe  # noqa: E402
from pipelines.enhance.spec import REPORT_NIQE_SIDE  # noqa: E402
from pipelines.inference.darkness import DEFAULT_DARK_THRESHOLD, darkness_stats  # noqa: E402
from pipelines.io.images import decode_image  # noqa: E402

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
OLD_THRESHOLD = 0.65
SWEEP = (0.7, 0.72, 0.74, 0.76, 0.77, 0.78, 0.79, 0.8, 0.81, 0.82, 0.84, 0.86)
LISTED = 12  # photos named per set and score among those it gets wrong


def old_score(stats: dict) -> float:
    return 1 - stats["luma_p95"] / 255


def new_score(stats: dict) -> float:
    return stats["darkness"]


# (label, score, threshold); each score oriented so that a higher value is darker.
SCORES: tuple[tuple[str, Callable[[dict], float], float], ...] = (
    ("old: 1 - p95/255", old_score, OLD_THRESHOLD),
    ("new: darkness", new_score, DEFAULT_DARK_THRESHOLD),
)
# Other candidates, for the gap table only.
CANDIDATES = {
    "old: 1 - p95/255": old_score,
    "new: darkness (power mean 1/3)": new_score,
    "1 - mean/255": lambda s: 1 - s["luma_mean"] / 255,
    "1 - p50/255": lambda s: 1 - s["luma_p50"] / 255,
    "near_black": lambda s: s["near_black"],
}


def photo_sets(
    corpus: Path | None, positives: list[Path], negatives: list[Path]
) -> list[tuple[str, bool, list[tuple[str, np.ndarray]]]]:
    """``(name, dark, photos)`` of every set, photos as ``(key, rgb)``."""
    sets = []
    with tempfile.TemporaryDirectory() as folder:
        dataset = build_photo_dataset(Path(folder))
        sets.append(("demo-dark", True, _decode_folder(dataset.low_dir)))
        normal = _decode_folder(dataset.normal_dir)
        sets.append(("demo-normal", False, normal + [(f"original/{n}", rgb) for n, rgb in
                                                     demo_originals()]))  # fmt: skip
    if corpus is not None:
        for name, dark in (("low", True), ("normal", False), ("holdout", False)):
            sets.append((f"corpus-{name}", dark, _decode_folder(corpus / name)))
    names = {name for name, _, _ in sets}
    for folders, dark in ((positives, True), (negatives, False)):
        for folder in folders:
            name = folder.resolve().name
            while name in names:
                name += "'"
            names.add(name)
            sets.append((name, dark, _decode_folder(folder)))
    return sets


def _decode_folder(folder: Path) -> list[tuple[str, np.ndarray]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)
    if not files:
        raise SystemExit(f"no images under {folder}")
    return [(p.relative_to(folder).as_posix(), decode_image(p.read_bytes()).array) for p in files]


def _spread(values) -> str:
    return f"{min(values):.3f} / {np.median(values):.3f} / {max(values):.3f}"


def describe_sets(stats: list[tuple[str, bool, list[dict]]]) -> None:
    print(
        "| set | kind | images | new darkness min / median / max | old 1 - p95/255 | luma mean (median) |"
    )
    print("|---|---|---|---|---|---|")
    for name, dark, rows in stats:
        print(
            f"| {name} | {'dark' if dark else 'well-exposed'} | {len(rows)} | "
            f"{_spread([new_score(r) for r in rows])} | {_spread([old_score(r) for r in rows])} | "
            f"{np.median([r['luma_mean'] for r in rows]):.1f} |"
        )


def _wrong(rows: list[dict], dark: bool, score, threshold: float) -> list[dict]:
    """The rows of a set that the rule gets wrong: dark photos below, well-exposed ones at or
    above the threshold."""
    return [row for row in rows if (score(row) < threshold) == dark]


def error_rates(stats: list[tuple[str, bool, list[dict]]]) -> None:
    """Per set, the photos each score gets wrong: dark photos missed (not enhanced) and
    well-exposed photos flagged dark (washed out)."""
    header = " | ".join(f"{label} (>= {threshold:.2f})" for label, _, threshold in SCORES)
    print(f"\n| set | kind | images | {header} |")
    print("|---|---|---|" + "---|" * len(SCORES))
    totals = {dark: [0, [0] * len(SCORES)] for dark in (True, False)}
    for name, dark, rows in stats:
        cells = []
        totals[dark][0] += len(rows)
        for index, (_, score, threshold) in enumerate(SCORES):
            wrong = len(_wrong(rows, dark, score, threshold))
            totals[dark][1][index] += wrong
            cells.append(f"{wrong} ({wrong / len(rows):.0%})")
        kind = "dark: missed" if dark else "well-exposed: flagged"
        print(f"| {name} | {kind} | {len(rows)} | {' | '.join(cells)} |")
    for dark, (count, wrongs) in totals.items():
        kind = "dark: missed" if dark else "well-exposed: flagged"
        cells = " | ".join(f"{w} ({w / max(count, 1):.0%})" for w in wrongs)
        print(f"| **all** | {kind} | {count} | {cells} |")
    print()
    for label, score, threshold in SCORES:
        for name, dark, rows in stats:
            wrong = sorted(_wrong(rows, dark, score, threshold), key=score, reverse=not dark)
            if wrong:
                listed = ", ".join(f"{row['key']} {score(row):.3f}" for row in wrong[:LISTED])
                more = f", and {len(wrong) - LISTED} more" if len(wrong) > LISTED else ""
                print(f"{label}, {name}, wrong: {listed}{more}")


def sweep(stats: list[tuple[str, bool, list[dict]]]) -> None:
    """The new score's errors around its threshold, and the mean of the per-set error rates
    (each set weighs the same, whatever its size): what the default minimises."""
    dark_count = sum(len(rows) for _, dark, rows in stats if dark)
    normal_count = sum(len(rows) for _, dark, rows in stats if not dark)
    print(
        f"\n| threshold | dark photos missed (of {dark_count}) | well-exposed flagged "
        f"(of {normal_count}) | mean per-set error rate |"
    )
    print("|---|---|---|---|")
    for threshold in sorted({*SWEEP, DEFAULT_DARK_THRESHOLD}):
        missed = flagged = 0
        rates = []
        for _, dark, rows in stats:
            wrong = len(_wrong(rows, dark, new_score, threshold))
            rates.append(wrong / len(rows))
            missed, flagged = (missed + wrong, flagged) if dark else (missed, flagged + wrong)
        mark = " (default)" if threshold == DEFAULT_DARK_THRESHOLD else ""
        print(f"| {threshold:.2f}{mark} | {missed} | {flagged} | {np.mean(rates):.3f} |")


def describe_candidates(stats: list[tuple[str, bool, list[dict]]]) -> None:
    """For each candidate score, its best threshold on these sets (the lowest mean per-set error
    rate, as in the sweep) and the photos it then gets wrong."""
    print(
        "\n| score | best threshold | dark photos missed | well-exposed flagged | mean per-set error rate |"
    )
    print("|---|---|---|---|---|")
    for label, score in CANDIDATES.items():
        values = [[score(row) for row in rows] for _, _, rows in stats]
        best = None
        for threshold in sorted({round(value, 4) for column in values for value in column}):
            wrong = [
                sum((value < threshold) == dark for value in column)
                for (_, dark, _), column in zip(stats, values, strict=True)
            ]
            rate = np.mean([w / len(column) for w, column in zip(wrong, values, strict=True)])
            if best is None or rate < best[0]:
                missed = sum(w for w, (_, dark, _) in zip(wrong, stats, strict=True) if dark)
                best = (rate, threshold, missed, sum(wrong) - missed)
        rate, threshold, missed, flagged = best
        print(f"| {label} | {threshold:.3f} | {missed} | {flagged} | {rate:.3f} |")


def time_costs(image: np.ndarray, repeats: int = 20) -> None:
    """CPU milliseconds (this process, so other work on a shared machine does not count) of the
    darkness statistics, of NIQE and of the run report's NIQE, on a 600x400 photo and on a
    15-megapixel one (the photo tiled 8x8)."""
    from enlightengan.metrics import niqe

    report_niqe(image)  # loads the pristine model once, outside the timings

    big = np.ascontiguousarray(np.tile(image, (8, 8, 1)))
    sizes = (("600x400", image, repeats, 3), (f"{big.shape[1]}x{big.shape[0]}", big, repeats, 1))
    for label, picture, stats_repeats, niqe_repeats in sizes:
        started = time.process_time()
        for _ in range(stats_repeats):
            darkness_stats(picture)
        stats_ms = (time.process_time() - started) / stats_repeats * 1e3
        started = time.process_time()
        for _ in range(niqe_repeats):
            niqe(picture)
        niqe_ms = (time.process_time() - started) / niqe_repeats * 1e3
        started = time.process_time()
        for _ in range(niqe_repeats):
            report_niqe(picture)
        report_ms = (time.process_time() - started) / niqe_repeats * 1e3
        print(
            f"{label}: darkness_stats {stats_ms:.2f} ms, NIQE {niqe_ms:.0f} ms, the report's "
            f"NIQE (fitted into {REPORT_NIQE_SIDE} pixels) {report_ms:.0f} ms (CPU time)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=None, help="the starter corpus folder")
    parser.add_argument(
        "--positives",
        type=Path,
        action="append",
        default=[],
        metavar="FOLDER",
        help="a folder of dark photos (repeatable), e.g. Zero-DCE's test_data/DICM",
    )
    parser.add_argument(
        "--negatives",
        type=Path,
        action="append",
        default=[],
        metavar="FOLDER",
        help="a folder of well-exposed photos (repeatable)",
    )
    parser.add_argument("--no-timing", action="store_true", help="leave out the CPU timings")
    args = parser.parse_args()
    sets = photo_sets(args.corpus, args.positives, args.negatives)
    stats = [
        (name, dark, [{"key": key, **darkness_stats(rgb)} for key, rgb in photos])
        for name, dark, photos in sets
    ]
    describe_sets(stats)
    error_rates(stats)
    sweep(stats)
    describe_candidates(stats)
    if not args.no_timing:
        print()
        time_costs(sets[1][2][0][1])
    return 0


if __name__ == "__main__":
    sys.exit(main())

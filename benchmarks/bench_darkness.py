"""Which photos does ``--only-dark`` call dark? The darkness statistics of dark and normal photos,
the gap between the two groups for each candidate score, and what scoring and NIQE cost.

Sets (each image as ``enhance`` decodes it):

* ``demo-dark``: the demo's five low-light photos (``x**2.2 * 0.25``, fitted into 600x400);
* ``demo-normal``: the demo's four normal-light photos and the five undarkened originals;
* ``corpus-low`` / ``corpus-normal`` / ``corpus-holdout``: the starter corpus's folders
  (``--corpus``, built by ``python -m pipelines.starter.corpus``; left out without it). Its
  ``low`` folder holds the camera-like synthetic degradations and the real dark photos.

    python benchmarks/bench_darkness.py --corpus starter-corpus
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.demo.sample_photos import build_photo_dataset, demo_originals  # noqa: E402
from pipelines.enhance.report import NIQE_SIDE, report_niqe  # noqa: E402
from pipelines.inference.darkness import DEFAULT_DARK_THRESHOLD, darkness_stats  # noqa: E402
from pipelines.io.images import decode_image  # noqa: E402

DARK_SETS = ("demo-dark", "corpus-low")
THRESHOLDS = (0.45, 0.5, 0.55, 0.6, 0.7, 0.75, 0.8)
# Candidate scores, each oriented so that a higher value is darker.
CANDIDATES = {
    "darkness (1 - p95/255)": lambda s: s["darkness"],
    "1 - mean/255": lambda s: 1 - s["luma_mean"] / 255,
    "1 - p50/255": lambda s: 1 - s["luma_p50"] / 255,
    "near_black": lambda s: s["near_black"],
}


def photo_sets(corpus: Path | None) -> dict[str, list[tuple[str, np.ndarray]]]:
    sets: dict[str, list[tuple[str, np.ndarray]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        dataset = build_photo_dataset(Path(folder))
        sets["demo-dark"] = _decode_folder(dataset.low_dir)
        sets["demo-normal"] = _decode_folder(dataset.normal_dir) + [
            (f"original/{name}", rgb) for name, rgb in demo_originals()
        ]
    if corpus is not None:
        for name in ("low", "normal", "holdout"):
            sets[f"corpus-{name}"] = _decode_folder(corpus / name)
    return sets


def _decode_folder(folder: Path) -> list[tuple[str, np.ndarray]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [(p.relative_to(folder).as_posix(), decode_image(p.read_bytes()).array) for p in files]


def describe_sets(stats: dict[str, list[dict]]) -> None:
    print(
        "| set | images | darkness min / median / max | luma mean (median) | near_black (median) |"
    )
    print("|---|---|---|---|---|")
    for name, rows in stats.items():
        darkness = np.array([row["darkness"] for row in rows])
        print(
            f"| {name} | {len(rows)} | {darkness.min():.3f} / {np.median(darkness):.3f} / "
            f"{darkness.max():.3f} | {np.median([r['luma_mean'] for r in rows]):.1f} | "
            f"{np.median([r['near_black'] for r in rows]):.3f} |"
        )


def describe_candidates(stats: dict[str, list[dict]]) -> None:
    """For each candidate score: the least dark dark image and the darkest normal one."""
    print("\n| score | dark: lowest | normal: highest | gap | misclassified at the midpoint |")
    print("|---|---|---|---|---|")
    for label, score in CANDIDATES.items():
        dark = [score(row) for name in DARK_SETS for row in stats.get(name, [])]
        normal = [
            score(row) for name, rows in stats.items() if name not in DARK_SETS for row in rows
        ]
        low, high = min(dark), max(normal)
        middle = (low + high) / 2
        wrong = sum(value < middle for value in dark) + sum(value >= middle for value in normal)
        print(f"| {label} | {low:.3f} | {high:.3f} | {low - high:+.3f} | {wrong} |")


def darkest_normal_and_brightest_dark(stats: dict[str, list[dict]], count: int = 4) -> None:
    normal = [row for name, rows in stats.items() if name not in DARK_SETS for row in rows]
    dark = [row for name in DARK_SETS for row in stats.get(name, [])]
    print("\ndarkest normal photos:")
    for row in sorted(normal, key=lambda r: -r["darkness"])[:count]:
        print(f"  {row['set']}/{row['key']}: darkness {row['darkness']:.3f}")
    print("brightest dark photos:")
    for row in sorted(dark, key=lambda r: r["darkness"])[:count]:
        print(f"  {row['set']}/{row['key']}: darkness {row['darkness']:.3f}")
    print(
        f"\n| threshold | dark photos not enhanced (of {len(dark)}) | normal photos enhanced "
        f"(of {len(normal)}) |"
    )
    print("|---|---|---|")
    for threshold in sorted({*THRESHOLDS, DEFAULT_DARK_THRESHOLD}):
        wrong_dark = sum(row["darkness"] < threshold for row in dark)
        wrong_normal = sum(row["darkness"] >= threshold for row in normal)
        mark = " (default)" if threshold == DEFAULT_DARK_THRESHOLD else ""
        print(f"| {threshold:.2f}{mark} | {wrong_dark} | {wrong_normal} |")


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
            f"NIQE (fitted into {NIQE_SIDE} pixels) {report_ms:.0f} ms (CPU time)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=None, help="the starter corpus folder")
    args = parser.parse_args()
    sets = photo_sets(args.corpus)
    stats = {
        name: [{"set": name, "key": key, **darkness_stats(rgb)} for key, rgb in photos]
        for name, photos in sets.items()
    }
    describe_sets(stats)
    describe_candidates(stats)
    darkest_normal_and_brightest_dark(stats)
    time_costs(sets["demo-normal"][0][1])
    return 0


if __name__ == "__main__":
    sys.exit(main())

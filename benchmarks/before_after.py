"""Draw the README's before/after picture: four of the demo's sample photos darkened the demo's
way (top) and the same photos enhanced by the shipped starter model (bottom).

    python benchmarks/before_after.py --output docs/assets/before-after.jpg

Only photos that ship inside installed wheels are used; rerun it whenever the starter changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enlightengan.inference import Enhancer  # noqa: E402
from pipelines.demo.sample_photos import darken, demo_originals, fit_within  # noqa: E402

CELL = (280, 220)
GAP = 4


def before_after(photos: list[np.ndarray], enhancer: Enhancer) -> Image.Image:
    """A 2-row grid: the darkened photos above their enhanced versions, each fitted to CELL."""
    dark = [darken(photo) for photo in photos]
    rows = [dark, enhancer(dark)]
    width = len(photos) * (CELL[0] + GAP) - GAP
    sheet = Image.new("RGB", (width, 2 * CELL[1] + GAP), "white")
    for row, images in enumerate(rows):
        for column, image in enumerate(images):
            cell = Image.fromarray(fit_within(image, *CELL))
            x = column * (CELL[0] + GAP) + (CELL[0] - cell.width) // 2
            y = row * (CELL[1] + GAP) + (CELL[1] - cell.height) // 2
            sheet.paste(cell, (x, y))
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("docs/assets/before-after.jpg"))
    parser.add_argument("--photos", type=int, default=4, help="how many sample photos")
    args = parser.parse_args(argv)
    photos = [rgb for _, rgb in demo_originals()][: args.photos]
    sheet = before_after(photos, Enhancer.from_pretrained("starter"))
    sheet.save(args.output, quality=85, optimize=True, progressive=True)
    print(f"written {args.output} ({args.output.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CPU cost of one photo's decode and encode, as ``enhance`` does them (Pillow, one core).

Decode is :func:`pipelines.io.images.decode_image` on a JPEG (EXIF, mode and size checks
included); encode is :func:`pipelines.io.images.encode_like` back to JPEG at enhance's settings
(quality 95, no chroma subsampling). The photo is a real one shipped in a wheel (scikit-image's
coffee, darkened the demo's way, resized to the size asked), saved as a camera would (quality
92, 4:2:0). Each size is timed ``--repeats`` times; the script prints the median and the range of
CPU-seconds (``time.process_time``, which a busy machine inflates less than wall time) and of
wall seconds per image, and writes them as JSON with ``--out``.

Run: ``python benchmarks/bench_codec.py [--sizes 600x400,4000x3000] [--repeats 15]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipelines.demo.sample_photos import encode  # noqa: E402
from pipelines.io.images import decode_image, encode_like  # noqa: E402

CAMERA_JPEG_QUALITY = 92


def sample_photo(width: int, height: int, grain: float = 0.0) -> tuple[np.ndarray, str]:
    """A darkened real photo of exactly ``width`` x ``height`` and where it came from.

    The shipped photos are about 600x400, so a 12 MP one is an upscale, smoother than a camera's
    and so cheaper to code; ``grain`` adds Gaussian noise of that standard deviation (levels)
    after resizing, which brings the JPEG's size and entropy-coding work closer to a camera's.

    Falls back to a smooth synthetic scene with noise when scikit-image is not installed (the
    timing of a JPEG codec depends on the content, so the JSON says which one was used)."""
    try:
        from pipelines.demo.sample_photos import darken, wheel_photo

        pixels = darken(wheel_photo("coffee"))
        source = "scikit-image coffee, darkened"
    except ImportError:
        rows = np.linspace(0.0, 1.0, 400)[:, None, None]
        columns = np.linspace(0.0, 1.0, 600)[None, :, None]
        scene = 60.0 * rows * columns + 20.0 * np.sin(columns * 40.0) * np.cos(rows * 30.0)
        noise = np.random.default_rng(0).normal(0.0, 6.0, (400, 600, 3))
        pixels = np.clip(scene + 30.0 + noise, 0, 255).astype(np.uint8)
        source = "synthetic gradient with noise (scikit-image not installed)"
    resized = np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS))
    if grain > 0:
        noise = np.random.default_rng(1).normal(0.0, grain, resized.shape)
        resized = np.clip(resized + noise, 0, 255).astype(np.uint8)
        source += f", grain {grain:g}"
    return resized, source


def camera_jpeg(pixels: np.ndarray) -> bytes:
    """``pixels`` saved as a camera's JPEG would be (quality 92, 4:2:0 chroma)."""
    return encode(pixels, "JPEG", quality=CAMERA_JPEG_QUALITY, subsampling=2)


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def codec_timings(width: int, height: int, repeats: int, grain: float = 0.0) -> dict:
    """Per-image decode and encode seconds (CPU and wall) for one size, over ``repeats`` runs."""
    pixels, source = sample_photo(width, height, grain)
    data = camera_jpeg(pixels)
    stages = {"decode": [], "encode": []}
    wall = {"decode": [], "encode": []}
    encoded_bytes = 0
    for _ in range(repeats):
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        decoded = decode_image(data)
        stages["decode"].append(time.process_time() - cpu_started)
        wall["decode"].append(time.perf_counter() - wall_started)
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        encoded_bytes = len(encode_like(decoded.array, decoded.format))
        stages["encode"].append(time.process_time() - cpu_started)
        wall["encode"].append(time.perf_counter() - wall_started)
    return {
        "width": width,
        "height": height,
        "photo": source,
        "input_jpeg_bytes": len(data),
        "output_jpeg_bytes": encoded_bytes,
        "repeats": repeats,
        "decode_cpu_s": _spread(stages["decode"]),
        "encode_cpu_s": _spread(stages["encode"]),
        "decode_wall_s": _spread(wall["decode"]),
        "encode_wall_s": _spread(wall["encode"]),
    }


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        width, _, height = part.strip().partition("x")
        sizes.append((int(width), int(height)))
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="600x400,4000x3000", help="WIDTHxHEIGHT,...")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--grain", default="0,4", help="comma-separated noise levels to time each size with"
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    results = []
    grains = [float(level) for level in args.grain.split(",")]
    for (width, height), grain in ((size, g) for size in parse_sizes(args.sizes) for g in grains):
        timing = codec_timings(width, height, args.repeats, grain)
        results.append(timing)
        print(
            f"{width}x{height} grain {grain:g} ({timing['input_jpeg_bytes']} B in, "
            f"{timing['output_jpeg_bytes']} B out, {args.repeats} repeats): "
            + "; ".join(
                f"{name} CPU {timing[name]['median'] * 1e3:.1f} ms "
                f"[{timing[name]['min'] * 1e3:.1f}-{timing[name]['max'] * 1e3:.1f}]"
                for name in ("decode_cpu_s", "encode_cpu_s")
            ),
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

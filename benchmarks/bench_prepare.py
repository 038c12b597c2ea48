"""prepare throughput vs a plain serial Pillow loop, on large JPEGs, in the same run.

Generates ``--count`` JPEGs of ``--megapixels`` (default 12 MP, 4000x3000) by upscaling the photos
that ship inside wheels and adding noise (so they compress like real photos), then measures:

* baseline: one process, for each file: open, convert RGB, resize to the training size with
  LANCZOS, PNG-encode, twice: at prepare's PNG level 1 (the strict baseline: only the decode
  method and the parallelism differ) and at Pillow's default PNG settings (level 6, what a
  plain loop gets without thinking about it);
* prepare: the real job (Ray Data, draft-mode decode, ``--num-cpus`` local Ray), Ray started
  beforehand and warmed up on a small run so worker start-up is not counted;
* with ``--s3``: the same files in a real SeaweedFS bucket: MB/s of a bare serial s3fs read loop,
  of Ray Data ``read_binary_files`` through ``pipelines.io.storage``, and of prepare from S3.

Prints each figure and the ratios. Run: ``python benchmarks/bench_prepare.py --count 300 --s3``;
``--rounds N`` repeats the serial loop and prepare back to back N times (a ratio per round).
Each prepare run pays fixed costs of a few CPU seconds (worker processes that Ray recycled
re-importing the pipeline, listing, the manifest), so small counts understate throughput.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.io.images import ResizePolicy, encode_png  # noqa: E402
from tests.fixtures.photos import PHOTO_SOURCES, upload_folder, wheel_photo  # noqa: E402


def generate(folder: Path, count: int, megapixels: float, seed: int = 0) -> list[Path]:
    """``count`` noisy upscaled JPEGs split over ``folder/low`` and ``folder/normal``."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = width * 3 // 4
    rng = np.random.default_rng(seed)
    names = list(PHOTO_SOURCES)
    bases: dict[str, np.ndarray] = {}
    paths = []
    for index in range(count):
        name = names[index % len(names)]
        if name not in bases:
            bases[name] = np.asarray(
                Image.fromarray(wheel_photo(name)).resize((width, height), Image.Resampling.BICUBIC)
            )
        noise = rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)
        pixels = np.clip(bases[name] + noise, 0, 255).astype(np.uint8)
        domain = "low" if index % 2 else "normal"
        path = folder / domain / f"set{index % 4}" / f"{name}-{index:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def serial_pillow_loop(
    paths: list[Path], policy: ResizePolicy, png_options: dict | None = None
) -> float:
    """The plain way: open, convert RGB, LANCZOS resize, PNG encode; returns seconds."""
    png_options = {"compress_level": 1} if png_options is None else png_options
    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            resized = rgb.resize(policy.target_size(*rgb.size), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            resized.save(buffer, format="PNG", **png_options)
    return time.perf_counter() - started


def warm_workers(cpus: int) -> int:
    """Have one worker process per CPU import the prepare pipeline, all at once (a worker runs
    one task at a time, so ``cpus`` overlapping tasks take ``cpus`` workers). The small warm-up
    run ends on the first worker before a second takes a task, and that second one would
    otherwise pay its imports inside the first timed run. Returns how many workers it reached."""
    import ray

    @ray.remote(num_cpus=1)
    def load_pipeline() -> int:
        import pipelines.prepare.job  # noqa: F401

        time.sleep(1.0)  # hold this worker while the others load
        return os.getpid()

    return len(set(ray.get([load_pipeline.remote() for _ in range(cpus)])))


def timed_prepare(low: str, normal: str, out: str) -> tuple[float, dict]:
    from pipelines.prepare.job import prepare

    started = time.perf_counter()
    manifest = prepare(low, normal, out)
    return time.perf_counter() - started, manifest


def s3_comparison(folder: Path, paths: list[Path], total_mb: float, workdir: Path) -> None:
    import ray

    from pipelines.io import storage
    from tests.fixtures.seaweed import start_seaweed

    server = start_seaweed(workdir / "seaweedfs")
    try:
        os.environ.update(server.env())
        bucket = server.make_bucket("bench")
        upload_folder(folder, server.filesystem(), f"{bucket}/in")
        keys = storage.list_files(f"s3://{bucket}/in")
        filesystem, base = storage.fsspec_filesystem(f"s3://{bucket}/in")
        started = time.perf_counter()
        read_mb = sum(len(filesystem.cat_file(f"{base}/{key}")) for key in keys) / 1e6
        bare = time.perf_counter() - started
        location = storage.resolve(f"s3://{bucket}/in")
        started = time.perf_counter()
        dataset = ray.data.read_binary_files(
            location.path, filesystem=location.filesystem, include_paths=False
        )
        ray_mb = sum(len(row["bytes"]) for row in dataset.iter_rows()) / 1e6
        ray_read = time.perf_counter() - started
        seconds, manifest = timed_prepare(
            f"s3://{bucket}/in/low", f"s3://{bucket}/in/normal", f"s3://{bucket}/out"
        )
        assert manifest["images_written"] == len(paths)
        print(f"S3 bare serial s3fs read loop : {read_mb / bare:8.1f} MB/s ({bare:.2f} s)")
        print(f"S3 Ray Data read_binary_files : {ray_mb / ray_read:8.1f} MB/s ({ray_read:.2f} s)")
        print(
            f"S3 prepare (read+decode+write): {total_mb / seconds:8.1f} MB/s, "
            f"{len(paths) / seconds:.2f} images/s ({seconds:.2f} s)"
        )
        print(
            f"ratio Ray Data read / bare s3fs read: {(ray_mb / ray_read) / (read_mb / bare):.2f}x"
        )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count",
        type=int,
        default=24,
        help="JPEGs to generate (300: the full run in BENCHMARKS.md)",
    )
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--s3", action="store_true", help="also measure reading from SeaweedFS")
    parser.add_argument("--workdir", default=None, help="keep generated files here")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="serial loop and prepare, one after the other, this many times (on a shared "
        "machine the ratio within a round is what holds)",
    )
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-prepare-"))
    folder = workdir / f"jpegs-{args.count}-{args.megapixels:g}mp"
    if folder.exists():
        paths = sorted(folder.rglob("*.jpg"))
    else:
        started = time.perf_counter()
        paths = generate(folder, args.count, args.megapixels)
        print(f"generated {len(paths)} JPEGs in {time.perf_counter() - started:.1f} s")
    total_mb = sum(path.stat().st_size for path in paths) / 1e6
    with Image.open(paths[0]) as first:
        print(f"{len(paths)} JPEGs of {first.size[0]}x{first.size[1]}, {total_mb:.1f} MB in all")

    default_png = serial_pillow_loop(paths, ResizePolicy(), png_options={})
    default_rate = len(paths) / default_png
    print(f"serial Pillow loop, default PNG : {default_rate:8.2f} images/s ({default_png:.2f} s)")

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("ENLIGHTENGAN_RAY_TMPDIR", str(workdir / "ray"))
    from pipelines.ops.ray_runtime import init_ray

    init_ray(num_cpus=args.num_cpus)
    warm = sorted(paths[: 2 * args.num_cpus])
    warm_dir = workdir / "warmup"
    for path in warm:
        target = warm_dir / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode_png(np.asarray(Image.open(path).reduce(8).convert("RGB"))))
    timed_prepare(str(warm_dir / "low"), str(warm_dir / "normal"), str(workdir / "warm-out"))
    print(f"warm worker processes: {warm_workers(args.num_cpus)}")

    ratios = []
    for round_index in range(args.rounds):
        baseline = serial_pillow_loop(paths, ResizePolicy())
        baseline_rate = len(paths) / baseline
        seconds, manifest = timed_prepare(
            str(folder / "low"), str(folder / "normal"), str(workdir / "out")
        )
        assert manifest["images_written"] == len(paths), manifest["rejected"]
        rate = len(paths) / seconds
        ratios.append(rate / baseline_rate)
        print(f"round {round_index + 1}, load {os.getloadavg()[0]:.2f}:")
        print(
            f"  serial Pillow loop, PNG level 1 : {baseline_rate:8.2f} images/s ({baseline:.2f} s)"
        )
        print(
            f"  prepare ({args.num_cpus} CPUs, local)     : {rate:8.2f} images/s ({seconds:.2f} s)"
        )
        print(f"  ratio prepare / serial loop (PNG level 1): {ratios[-1]:6.2f}x (target >= 4x)")
    if args.rounds > 1:
        print(f"ratio prepare / serial loop over {args.rounds} rounds: median "
              f"{statistics.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x")  # fmt: skip
    print(f"ratio prepare / serial loop (default PNG), last round: {rate / default_rate:6.2f}x")
    if args.s3:
        s3_comparison(folder, paths, total_mb, workdir)


if __name__ == "__main__":
    main()

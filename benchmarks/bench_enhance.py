"""Benchmark ``enlightengan enhance`` against its baselines, side by side in one run.

Same machine, same cores, same real photos (scikit-image / scikit-learn / matplotlib photos,
darkened, resized to 600x400, JPEG), the default-size generator (8.6 M parameters), CPU:

1. the reference's serial way: decode, fp32 NCHW batch-1 forward, PNG encode, one at a time;
2. the bare Enhancer loop over the same decoded images with the pipeline's settings;
3. the pipeline (``enlightengan enhance``, in-process Ray), end to end and in steady state
   (after the first block is written: actor start and model load excluded);
4. PSNR of bf16 autocast against fp32 (and its speed), to justify or reject the CPU bf16 path;
5. peak RSS of the driver plus every Ray process for N and 10N small images (streaming: flat).

Run: ``python benchmarks/bench_enhance.py [--images 24] [--small-images 20]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enlightengan.checkpoint import save_checkpoint  # noqa: E402
from enlightengan.config import EnlightenGANConfig  # noqa: E402
from enlightengan.generator import Generator  # noqa: E402
from pipelines.cli import main as cli_main  # noqa: E402
from pipelines.inference.backends import choose_backend  # noqa: E402
from pipelines.inference.stages import InferenceSettings, build_enhancer  # noqa: E402
from pipelines.io.images import decode_image  # noqa: E402
from tests.fixtures.photos import PHOTO_SOURCES, darken, encode, wheel_photo  # noqa: E402


def write_photos(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` darkened real photos resized to ``size`` (width, height), JPEG quality 95."""
    names = sorted(PHOTO_SOURCES)
    paths = []
    for index in range(count):
        photo = Image.fromarray(wheel_photo(names[index % len(names)])).resize(size)
        pixels = np.roll(darken(np.asarray(photo)), index * 7, axis=1)
        path = folder / f"set{index // 50:03d}" / f"photo_{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(pixels, "JPEG", quality=95))
        paths.append(path)
    return paths


def reference_serial(generator: Generator, paths: list[Path], out_dir: Path) -> float:
    """images/s of decode -> fp32 batch-1 forward -> PNG encode, one image at a time."""
    generator = generator.to(memory_format=torch.contiguous_format)
    started = time.perf_counter()
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        tensor = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        with torch.inference_mode():
            output = generator(tensor)[0]
        pixels = ((output.clamp(-1, 1) + 1) / 2 * 255).permute(1, 2, 0).numpy().astype(np.uint8)
        Image.fromarray(pixels).save(out_dir / f"{path.stem}.png")
    return len(paths) / (time.perf_counter() - started)


def bare_enhancer(checkpoint: Path, images: list[np.ndarray], settings) -> float:
    enhancer = build_enhancer(checkpoint, settings)
    enhancer(images[:1])
    started = time.perf_counter()
    for start in range(0, len(images), settings.batch_size):
        enhancer(images[start : start + settings.batch_size])
    return len(images) / (time.perf_counter() - started)


def tree_rss(root: int) -> int:
    """Bytes of resident memory of ``root`` and all its descendants, read from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


class PeakRss:
    """Samples the RSS of this process and all its descendants (Ray's raylet, GCS, workers)."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_pipeline(
    checkpoint: Path, source: Path, output: Path, batch_size: int, backend: str = "auto"
) -> float:
    argv = ["enhance", "--checkpoint", str(checkpoint), "--input", str(source)]
    argv += ["--output", str(output), "--batch-size", str(batch_size), "--num-cpus", "2"]
    argv += ["--backend", backend]
    started = time.perf_counter()
    assert cli_main(argv) == 0
    return time.perf_counter() - started


def steady_rate(output: Path, count: int) -> float:
    """images/s between the first and the last output written (start-up excluded)."""
    times = sorted(p.stat().st_mtime for p in output.rglob("*.jpg"))
    first_burst = sum(1 for t in times if t - times[0] < 0.5)
    span = times[-1] - times[0]
    if first_burst >= count or span <= 0:
        return float("nan")  # every output landed in one write burst: no window to time
    return (count - first_burst) / span


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="600x400 photos for speed")
    parser.add_argument("--small-images", type=int, default=20, help="N for the memory check")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "torch", "onnxruntime"),
        help="the pipeline's and the bare loop's --backend (auto: what the job picks here)",
    )
    options = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(tempfile.mkdtemp(prefix="bench-enhance-"))
    torch.manual_seed(0)
    config = EnlightenGANConfig()
    generator = Generator(config.generator).eval()
    checkpoint = save_checkpoint(work / "ckpt", config=config, networks={"generator": generator})
    paths = write_photos(work / "photos", options.images, (600, 400))
    images = [decode_image(p.read_bytes()).array for p in paths]
    choice = choose_backend(options.backend, "auto", "cpu")
    settings = InferenceSettings(
        backend=options.backend, precision="auto", batch_size=options.batch_size, torch_threads=2
    )
    print(f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
          f"{len(paths)} images 600x400, backend and precision ({options.backend}): "
          f"{choice.backend} {choice.precision}; ATEN_CPU_CAPABILITY="
          f"{os.environ.get('ATEN_CPU_CAPABILITY', '')} ONEDNN_MAX_CPU_ISA="
          f"{os.environ.get('ONEDNN_MAX_CPU_ISA', '')}, load {os.getloadavg()[0]:.2f}")  # fmt: skip

    (work / "ref").mkdir()
    reference = reference_serial(generator, paths, work / "ref")
    print(f"reference serial (decode, fp32 batch-1, PNG): {reference:.3f} images/s")
    bare = bare_enhancer(checkpoint, images, settings)
    print(f"bare Enhancer loop (decoded images):          {bare:.3f} images/s")
    seconds = run_pipeline(
        checkpoint, work / "photos", work / "out", options.batch_size, options.backend
    )
    end_to_end = len(paths) / seconds
    steady = steady_rate(work / "out", len(paths))
    print(f"pipeline end to end (actor start included):   {end_to_end:.3f} images/s")
    print(f"pipeline steady state:                        {steady:.3f} images/s")
    print(f"ratio pipeline/bare: steady {steady / bare:.2f}, end to end {end_to_end / bare:.2f}"
          " (target: steady >= 0.95)")  # fmt: skip
    print(f"ratio pipeline/reference: steady {steady / reference:.2f}, "
          f"end to end {end_to_end / reference:.2f} (targets: end to end >= 1.0 on AVX2-only "
          "CPUs, steady >= 1.5 with native bf16)")  # fmt: skip

    if not options.skip_bf16:
        sample = images[:2]
        fp32_settings = InferenceSettings(backend="torch", precision="fp32")
        fp32 = build_enhancer(checkpoint, fp32_settings)(sample)
        bf16_settings = InferenceSettings(backend="torch", precision="bf16")
        bf16_enhancer = build_enhancer(checkpoint, bf16_settings)
        started = time.perf_counter()
        bf16 = bf16_enhancer(sample)
        rate = len(sample) / (time.perf_counter() - started)
        quality = min(psnr(a, b) for a, b in zip(fp32, bf16, strict=True))
        print(f"bf16 autocast + channels_last: {rate:.3f} images/s, PSNR vs fp32 {quality:.1f} dB")

    if not options.skip_memory:
        peaks = []
        for count in (options.small_images, 10 * options.small_images):
            source = work / f"small-{count}"
            write_photos(source, count, (160, 120))
            with PeakRss() as meter:
                run_pipeline(checkpoint, source, work / f"small-out-{count}", 16)
            peaks.append(meter.peak)
            print(f"peak RSS driver + Ray processes, {count} images: {meter.peak / 2**20:.0f} MiB")
        print(f"memory ratio 10N/N: {peaks[1] / peaks[0]:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()

"""Small jobs against a plain serial onnxruntime loop, and where their fixed cost goes.

What a new user compares first: a folder of photos enhanced by a short script of their own
(decode, onnxruntime fp32, PNG encode, one photo at a time) or by ``enlightengan enhance``.
Both run as fresh processes on the same photos (600x400 JPEGs, darkened wheel photos), the same
randomly initialised default-size generator (the authors' width), the same ONNX file (the one
``enhance --backend onnxruntime`` exported into its cache in a warm-up run, so neither side pays
the export) and PNG output, rounds alternating. For each size it prints the wall time of both,
their ratio (loop / enhance: above 1 the job is faster), and the job's own milestones, seconds
after the command started:

* ``checkpoint``: the driver's imports and checkpoint check (its ``enhance: checkpoint`` line);
* ``execution``: Ray started and the dataset planned (Ray Data's ``Starting execution``);
* ``backend``: the enhancer actor up and its imports done (its ``enhance backend`` line,
  relayed by Ray's log monitor, so a little late);
* ``first output``: the first enhanced file on disk; ``last output``: the last one (the
  manifest's ``written_at``); ``exit``: the process ended.

The loop's own split (imports and session, then its first photo) is printed beside it.

Run: ``python benchmarks/bench_small_jobs.py [--images 24 200] [--rounds 2] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_start import MILESTONES  # noqa: E402

SERIAL_LOOP = r"""
import glob, json, os, sys, time
started = time.perf_counter()
import numpy as np
import onnxruntime
from PIL import Image

model, source, target, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = threads
session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
ready = time.perf_counter()
first = None
for path in sorted(glob.glob(os.path.join(source, "**", "*.jpg"), recursive=True)):
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    batch = (pixels.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]
    (output,) = session.run(None, {name: np.ascontiguousarray(batch)})
    enhanced = ((np.clip(output[0], -1, 1) + 1) * 127.5).round().astype(np.uint8)
    out = os.path.join(target, os.path.relpath(path, source))[:-4] + ".png"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    Image.fromarray(enhanced.transpose(1, 2, 0)).save(out)
    first = first or time.perf_counter()
print(json.dumps({"session": ready - started, "first": first - started}))
"""


def make_inputs(work: Path, counts: list[int]) -> tuple[Path, dict[int, Path]]:
    """A default-size checkpoint (seed 0) and one photo folder per count."""
    import torch
    from bench_enhance import write_photos

    from enlightengan.checkpoint import save_checkpoint
    from enlightengan.config import EnlightenGANConfig
    from enlightengan.generator import Generator

    torch.manual_seed(0)
    config = EnlightenGANConfig()
    checkpoint = save_checkpoint(
        work / "checkpoint", config=config, networks={"generator": Generator(config.generator)}
    )
    largest = work / "photos-all"
    paths = write_photos(largest, max(counts), (600, 400))
    folders = {}
    for count in counts:
        folder = work / f"photos-{count}"
        for path in paths[:count]:
            copy = folder / path.relative_to(largest)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
        folders[count] = folder
    return checkpoint, folders


def run_enhance(checkpoint: Path, photos: Path, output: Path, env: dict) -> dict:
    """One ``enlightengan enhance`` in a fresh process: its milestones and summary numbers."""
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "pipelines.cli", "enhance", "--json"]
    command += ["--checkpoint", str(checkpoint), "--input", str(photos), "--output", str(output)]
    command += ["--backend", "onnxruntime", "--precision", "fp32", "--image-format", "png"]
    seen: dict[str, float] = {}
    lines: list[str] = []
    started, started_at = time.perf_counter(), time.time()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def watch() -> None:
        while process.poll() is None and "first output" not in seen:
            if output.exists() and any(output.rglob("*.png")):
                seen["first output"] = time.perf_counter() - started
            time.sleep(0.02)

    def read_stderr() -> None:
        for line in process.stderr:
            lines.append(line)
            for name, pattern in MILESTONES:
                if name not in seen and pattern.search(line):
                    seen[name] = time.perf_counter() - started

    threads = [threading.Thread(target=watch), threading.Thread(target=read_stderr)]
    for thread in threads:
        thread.start()
    stdout = process.stdout.read()
    process.wait()
    seen["exit"] = time.perf_counter() - started
    for thread in threads:
        thread.join()
    if process.returncode != 0:
        sys.stderr.write("".join(lines[-30:]) + stdout[-3000:])
        raise SystemExit(f"enhance failed with exit status {process.returncode}")
    data = json.loads(stdout)
    data = data["summary"]
    seen["last output"] = _last_written(output) - started_at
    seen["steady images/s"] = data.get("steady_images_per_s") or float("nan")
    return seen


def _last_written(output: Path) -> float:
    """The manifest's latest ``written_at`` (Unix seconds)."""
    from pipelines.enhance.sink import read_manifest
    from pipelines.io.storage import resolve

    location = resolve(str(output))
    table = read_manifest(location.filesystem, f"{location.path}/_manifest", ["written_at"])
    return max(table.column("written_at").to_pylist())


def run_loop(model: Path, photos: Path, output: Path, threads: int) -> dict:
    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", SERIAL_LOOP, str(model), str(photos), str(output), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "exit": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[24, 200])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="the loop's onnxruntime threads")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-small-"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "ENLIGHTENGAN_CACHE_DIR": str(work / "cache")}
    checkpoint, folders = make_inputs(work, options.images)
    print(f"machine: {_cpu_model()}, {os.cpu_count()} cores; "
          f"default-size generator, 600x400 photos, PNG out; loop: onnxruntime fp32, "
          f"{options.threads} threads")  # fmt: skip
    # Warm-up: the job exports the generator to ONNX into its cache; both sides use that file.
    run_enhance(checkpoint, folders[min(options.images)], work / "warm-up", env)
    (model,) = (work / "cache" / "onnx").glob("*.onnx")
    rows = []
    for count in options.images:
        loops, jobs = [], []
        for round_index in range(options.rounds):
            load = os.getloadavg()[0]
            loop = run_loop(model, folders[count], work / "loop-out", options.threads)
            job = run_enhance(checkpoint, folders[count], work / "job-out", env)
            loops.append(loop)
            jobs.append(job)
            marks = "  ".join(
                f"{name} {job[name]:.2f}"
                for name in ("checkpoint", "execution", "backend", "first output", "last output")
                if name in job
            )
            print(f"{count} photos, round {round_index + 1} (load {load:.2f}): loop "
                  f"{loop['exit']:.1f} s (session {loop['session']:.2f}, first photo "
                  f"{loop['first']:.2f}); enhance {job['exit']:.1f} s ({marks}; steady "
                  f"{job['steady images/s']:.2f} images/s); loop / enhance "
                  f"{loop['exit'] / job['exit']:.2f}", flush=True)  # fmt: skip
        ratios = [loop["exit"] / job["exit"] for loop, job in zip(loops, jobs, strict=True)]
        rows.append((count, loops, jobs, ratios))
    print("\n| photos | loop s | enhance s | loop / enhance | enhance first output s | "
          "enhance steady images/s | loop images/s after its first |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for count, loops, jobs, ratios in rows:
        loop_rate = [(count - 1) / (loop["exit"] - loop["first"]) for loop in loops]
        print(f"| {count} | {_span([loop['exit'] for loop in loops], 1)} | "
              f"{_span([job['exit'] for job in jobs], 1)} | {_span(ratios, 2)} | "
              f"{_span([job['first output'] for job in jobs], 2)} | "
              f"{_span([job['steady images/s'] for job in jobs], 2)} | "
              f"{_span(loop_rate, 2)} |")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _span(values: list[float], digits: int) -> str:
    values = [value for value in values if value == value]  # NaN: not measured
    if not values:
        return "-"
    low, high = min(values), max(values)
    if round(low, digits) == round(high, digits):
        return f"{statistics.median(values):.{digits}f}"
    return f"{low:.{digits}f}-{high:.{digits}f}"


if __name__ == "__main__":
    main()

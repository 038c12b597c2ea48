"""Start-up of ``enlightengan enhance``: seconds from the command to its first written output.

A new user's run: a fresh process, in-process local Ray, a folder of a few 600x400 photos, the
default (shipped starter) model. Each round starts the real command and stamps every line it
prints and the first output file with the seconds since the command started, which splits the
wait into milestones:

* ``checkpoint``: the driver's imports and the checkpoint check (its "enhance: checkpoint" line);
* ``execution``: Ray started and the dataset planned (Ray Data's "Starting execution" line);
* ``backend``: the enhancer actor is up, its imports done, the model about to load (its
  "enhance backend" line, relayed through Ray's log monitor, so a little late);
* ``first output``: the first enhanced image on disk; ``exit``: the process ended.

``--phases`` also times the parts one by one in one process (the parser, ``ray.init``, a bare
actor, an actor that imports the enhancer's modules, the model load and backend set-up, the
first forward). ``--source DIR`` runs another checkout's code (e.g. ``git archive`` of an older
commit) in alternate rounds with this one, for a before/after under the same load.

Run: ``python benchmarks/bench_start.py [--rounds 3] [--photos 4] [--phases] [--source DIR]``.
"""

from __future__ import annotations

import argparse
import os
import re
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

MILESTONES = (
    ("checkpoint", re.compile(r"enhance: checkpoint")),
    ("execution", re.compile(r"Starting execution of Dataset")),
    ("backend", re.compile(r"enhance backend:")),
)
TARGET_SECONDS = 8.0


def write_photos(folder: Path, count: int) -> None:
    from bench_enhance import write_photos as write

    write(folder, count, (600, 400))


def first_file(folder: Path) -> bool:
    return folder.exists() and any(p.suffix == ".jpg" for p in folder.rglob("*.jpg"))


def one_round(source: Path, photos: Path, output: Path, extra: list[str]) -> dict[str, float]:
    """Run the command once from ``source`` (a checkout); the milestones' seconds."""
    shutil.rmtree(output, ignore_errors=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(source)}
    command = [sys.executable, "-m", "pipelines.cli", "enhance", "--input", str(photos)]
    command += ["--output", str(output), *extra]
    seen: dict[str, float] = {}
    lines: list[str] = []
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=source,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def watch() -> None:
        while process.poll() is None and "first output" not in seen:
            if first_file(output):
                seen["first output"] = time.perf_counter() - started
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for line in process.stdout:
        lines.append(line)
        for name, pattern in MILESTONES:
            if name not in seen and pattern.search(line):
                seen[name] = time.perf_counter() - started
    process.wait()
    seen["exit"] = time.perf_counter() - started
    watcher.join()
    if process.returncode != 0:
        sys.stderr.write("".join(lines[-30:]))
        raise SystemExit(f"the command failed with exit status {process.returncode}")
    return seen


def phases(photos: Path) -> None:
    """Each part of the start on its own, in this process, in the order the command meets them
    (this process has imported torch and Ray already, so the imports are left out)."""
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        print(f"  {name:48s} {now - clock[0]:6.2f} s", flush=True)
        clock[0] = now

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback: before ray
    import ray

    from pipelines.cli import build_parser

    build_parser()
    lap("pipelines.cli parser")
    from pipelines.inference.checkpoints import load_checkpoint_files, staged_checkpoint
    from pipelines.inference.stages import InferenceSettings, build_enhancer

    checkpoint = load_checkpoint_files(None)
    lap("load_checkpoint_files (starter)")
    from pipelines.ops.ray_runtime import init_ray

    init_ray(None, 2)
    lap("init_ray (in-process local Ray, 2 CPUs)")

    @ray.remote(num_cpus=0)
    class Bare:
        def ping(self) -> int:
            return 1

    ray.get(Bare.remote().ping.remote())
    lap("a bare actor's first call")

    @ray.remote(num_cpus=0)
    class Importing:
        def __init__(self) -> None:
            import importlib

            for module in ("torch", "pipelines.inference.stages"):
                importlib.import_module(module)

        def ping(self) -> int:
            return 1

    ray.get(Importing.remote().ping.remote())
    lap("an actor importing torch + the stages")
    from pipelines.io.images import decode_image

    images = [decode_image(p.read_bytes()).array for p in sorted(photos.rglob("*.jpg"))]
    lap(f"decode {len(images)} photos")
    for backend in ("auto", "onnxruntime", "torch"):
        settings = InferenceSettings(backend=backend, precision="auto", torch_threads=2)
        with staged_checkpoint(checkpoint.files) as directory:
            enhancer = build_enhancer(directory, settings)
        lap(f"build_enhancer --backend {backend} (model load + set-up)")
        enhancer(images)
        lap(f"  first forward of {len(images)} photos")
        enhancer(images)
        lap(f"  second forward of {len(images)} photos")
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--phases", action="store_true", help="also time the parts one by one")
    parser.add_argument(
        "--source", type=Path, default=None, help="another checkout, run in alternate rounds"
    )
    parser.add_argument("extra", nargs="*", help="more enhance arguments (after --)")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-start-"))
    photos = work / "photos"
    write_photos(photos, options.photos)
    sources = {"this checkout": ROOT}
    if options.source:
        sources = {"--source": options.source.resolve(), **sources}
    print(f"cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}, "
          f"{options.photos} photos 600x400, starter model, enhance {' '.join(options.extra)}")  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
    for round_index in range(options.rounds):
        for name, source in sources.items():
            seen = one_round(source, photos, work / "out", options.extra)
            results[name].append(seen)
            marks = "  ".join(
                f"{key} {seen[key]:.2f}"
                for key in ("checkpoint", "execution", "backend", "first output", "exit")
                if key in seen
            )
            print(f"round {round_index + 1} {name}: {marks}  (load {os.getloadavg()[0]:.2f})")
    for name, rounds in results.items():
        firsts = [seen["first output"] for seen in rounds if "first output" in seen]
        print(f"{name}: first output median {statistics.median(firsts):.2f} s, range "
              f"{min(firsts):.2f}-{max(firsts):.2f} s (target < {TARGET_SECONDS:.0f} s)")  # fmt: skip
    if options.phases:
        print("parts, one by one, in this process:")
        phases(photos)


if __name__ == "__main__":
    main()

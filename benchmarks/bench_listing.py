"""Listing benchmark: ``enhance --dry-run`` over N and 10N files, each run in a fresh process,
printing the listing rate and the driver's memory at the end (its own heap, and apart from it
the pages of Ray's shared object store it mapped while reading blocks), with the 10N/N heap
ratio; and, side by side, what a driver that first collects every key (``storage.list_files``,
the way enhance worked before it streamed) adds to its heap for the same folders.

The files are empty ``.jpg`` files in folders of 1,000 (a dry run lists and checks, it reads
nothing). A second dry run of 10N against an output whose manifest records all 10N images as
done measures the resume index (every key then is looked up and its output stat'ed).

Run: ``python benchmarks/bench_listing.py [--count 20000]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from enlightengan.checkpoint import save_checkpoint  # noqa: E402
from enlightengan.config import EnlightenGANConfig, GeneratorConfig  # noqa: E402
from enlightengan.generator import Generator  # noqa: E402

MEMORY = """
def memory():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return " ".join(str(int(fields[name].split()[0]) // 1024) for name in ("RssAnon", "RssShmem"))
"""
DRY_RUN = (
    MEMORY
    + """
import sys, time
from pipelines.cli import main
started = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - started
print(f"BENCH {code} {seconds:.3f} {memory()}")
"""
)
COLLECT = (
    MEMORY
    + """
import sys, time
from pipelines.io.storage import list_files
before = memory()
started = time.perf_counter()
keys = list_files(sys.argv[1])
seconds = time.perf_counter() - started
print(f"BENCH {len(keys)} {seconds:.3f} {before} {memory()}")
"""
)


def make_files(root: Path, count: int) -> None:
    for index in range(count):
        folder = root / f"f{index // 1000:04d}"
        if index % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"photo-{index:07d}.jpg").touch()


def make_done_manifest(output: Path, count: int) -> None:
    """A manifest saying every input was enhanced, and outputs of the recorded size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.enhance.sink import MANIFEST_DIR, MANIFEST_SCHEMA, manifest_row

    keys = [f"f{index // 1000:04d}/photo-{index:07d}.jpg" for index in range(count)]
    for key in keys:
        path = output / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
    rows = [manifest_row(k, k, "enhanced", output_bytes=10, run_id="20260101T000000-bench")
            for k in keys]  # fmt: skip
    (output / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    pq.write_table(table, output / MANIFEST_DIR / "run-20260101T000000-bench-0.parquet")


def run(script: str, *argv: str, env: dict) -> tuple[str, float, list[int]]:
    """Runs ``script`` in a fresh interpreter; returns its result, seconds and memory (MiB):
    anonymous (the process's own heap) and shared (pages of Ray's object store it mapped)."""
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env, cwd=ROOT
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"benchmark step failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    _, result, seconds, *memory = line.split()
    return result, float(seconds), [int(value) for value in memory]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="N: lists N then 10N files")
    parser.add_argument("--num-cpus", type=int, default=2)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-listing-") as work:
        work = Path(work)
        config = EnlightenGANConfig(generator=GeneratorConfig(base_channels=8))
        checkpoint = save_checkpoint(
            work / "ckpt", config=config, networks={"generator": Generator(config.generator)}
        )
        env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "ENLIGHTENGAN_RAY_TMPDIR": str(work / "ray"),
        }
        print(f"machine: {os.cpu_count()} cores, local Ray with {options.num_cpus} CPUs")
        driver = {}
        for count in (options.count, 10 * options.count):
            source = work / f"in-{count}"
            started = time.perf_counter()
            make_files(source, count)
            print(f"{count} files written in {time.perf_counter() - started:.1f} s")
            argv = ["enhance", "--checkpoint", str(checkpoint), "--input", str(source),
                    "--output", str(work / f"out-{count}"), "--dry-run",
                    "--num-cpus", str(options.num_cpus)]  # fmt: skip
            _, seconds, (heap, shared) = run(DRY_RUN, *argv, env=env)
            driver[count] = heap
            print(f"dry run, {count} files: {seconds:.1f} s ({count / seconds:.0f} keys/s), "
                  f"driver heap {heap} MiB (+ {shared} MiB of object store pages)")  # fmt: skip
            listed, seconds, (before, _, after, _) = run(COLLECT, str(source), env=env)
            print(f"collecting every key on the driver (list_files), {listed} keys: "
                  f"{seconds:.1f} s, heap {before} -> {after} MiB")  # fmt: skip
        small, large = options.count, 10 * options.count
        print(f"driver heap ratio 10N/N, streaming dry run: {driver[large] / driver[small]:.2f}")

        output = work / f"out-{large}"
        make_done_manifest(output, large)
        argv = ["enhance", "--checkpoint", str(checkpoint), "--input", str(work / f"in-{large}"),
                "--output", str(output), "--dry-run", "--num-cpus", str(options.num_cpus)]  # fmt: skip
        _, seconds, (heap, shared) = run(DRY_RUN, *argv, env=env)
        print(f"dry run, {large} files all done (resume index + a stat per key): {seconds:.1f} s "
              f"({large / seconds:.0f} keys/s), driver heap {heap} MiB "
              f"(+ {shared} MiB of object store pages)")  # fmt: skip


if __name__ == "__main__":
    main()

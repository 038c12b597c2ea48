"""Load benchmark: ``enhance`` and ``prepare`` over N and 10N small real-photo crops (64x48 PNG)
on an in-process local Ray with a tiny generator, printing images/s and peak RSS (driver plus
every Ray process, sampled every 0.1 s) for each, after a 20-image warm-up of each job, and the 10N/N memory ratio (flat: <= 1.3).

images/s is end to end (Ray Data start-up, actor start and model load included); the marginal
rate, 9N extra images over the extra seconds the 10N run took, is the steady-state throughput.
The same code runs in CI as ``tests/reliability/test_load.py`` with N = 200.

Run: ``python benchmarks/bench_load.py [--count 200] [--num-cpus 2]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback: before ray

import ray  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.ops.ray_runtime import init_ray  # noqa: E402
from tests.reliability.test_load import describe, measure_load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="N: runs N then 10N images")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs for the local Ray")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as work:
        work = Path(work)
        os.environ.setdefault("ENLIGHTENGAN_RAY_TMPDIR", str(work / "ray"))
        init_ray(num_cpus=options.num_cpus)
        results = measure_load(work, (options.count, 10 * options.count))
        print(f"machine: {os.cpu_count()} cores visible, local Ray with {options.num_cpus} CPUs")
        for job, (small, large) in results.items():
            for result in (small, large):
                print(f"{job}: {describe(result)}")
            extra_seconds = large.seconds - small.seconds
            marginal = (
                f"{(large.count - small.count) / extra_seconds:.1f} images/s"
                if extra_seconds > 0
                else "n/a (start-up noise dominates: use a larger --count)"
            )
            ratio = large.peak_rss / small.peak_rss
            print(f"{job}: marginal {marginal}; peak RSS 10N/N {ratio:.2f} (flat: <= 1.3)")
        ray.shutdown()


if __name__ == "__main__":
    main()

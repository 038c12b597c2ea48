"""Training throughput: a Ray Train worker vs a plain PyTorch loop of the same step, same run.

1. Real photos (shipped in wheels) are prepared into shards in a temporary folder.
2. ``enlightengan train --workers 1`` runs N steps; its samples/s comes from the wall-clock
   times rank 0 records after each step (so Ray's report barrier, the metrics and the input
   pipeline all count), over the steps after a warm-up.
3. A plain loop decodes the same shards, augments with the same function and calls the same
   ``training_step`` with the same settings and torch threads; samples/s over the same steps.
4. Scaling: 1 vs 2 workers on a two-node ``ray.cluster_utils.Cluster`` (a subprocess), same
   per-worker batch (so 2 workers process twice the samples per step).

Run: ``.venv/bin/python benchmarks/bench_train.py [--steps 12] [--crop 128] [--batch 4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch  # noqa: E402

from enlightengan.augment import make_training_batch  # noqa: E402
from enlightengan.config import EnlightenGANConfig  # noqa: E402
from enlightengan.training import (  # noqa: E402
    build_modules,
    build_optimizers,
    learning_rate,
    set_learning_rate,
    step_generator,
    training_step,
)
from enlightengan.vgg import build_vgg_features  # noqa: E402
from pipelines.train.worker import augment_generator  # noqa: E402

CLUSTER_SCRIPT = """
import json, os, sys, tempfile, time
# Cluster writes its address file under the default temp dir (/tmp/ray), which a fresh machine
# lacks: point that default at a folder of our own.
os.environ["RAY_TMPDIR"] = tempfile.mkdtemp()
os.makedirs(os.path.join(os.environ["RAY_TMPDIR"], "ray"))
import ray
from ray.cluster_utils import Cluster
node = {"num_cpus": 2, "node_ip_address": "127.0.0.1"}
cluster = Cluster(initialize_head=True,
                  head_node_args={**node, "include_dashboard": False, "temp_dir": tempfile.mkdtemp()})
cluster.add_node(**node)
cluster.wait_for_nodes()
from pipelines.cli import main
args = json.loads(sys.argv[1])
codes = [main(a + ["--address", cluster.address]) for a in args]
ray.shutdown()
cluster.shutdown()
sys.exit(max(codes))
"""


def model_settings(crop: int, batch: int) -> dict:
    return {
        "generator.base_channels": 16,
        "discriminator.base_channels": 32,
        "discriminator.patch_size": 32,
        "augment.crop_size": crop,
        "optim.batch_size": batch,
    }


def train_args(data: Path, run: Path, settings: dict, steps: int, *extra: str) -> list[str]:
    sets = [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]
    return [
        "train", "--data", str(data), "--run", str(run), "--steps", str(steps),
        "--checkpoint-every", str(steps), "--sample-every", "0", *sets, *extra,
    ]  # fmt: skip


def ray_samples_per_s(run: Path, warmup: int) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    described = json.loads((run / "config.json").read_text())["job"]
    steady = records[warmup:]
    seconds = steady[-1]["time"] - steady[0]["time"]
    return described["global_batch"] * (len(steady) - 1) / seconds


def plain_samples_per_s(data: Path, settings: dict, steps: int, warmup: int) -> float:
    import pyarrow.parquet as pq

    from pipelines.io.images import decode_png

    config = EnlightenGANConfig().with_overrides(settings).validate()
    images = {
        domain: [
            decode_png(value.as_py())
            for path in sorted((data / domain).glob("*.parquet"))
            for value in pq.read_table(path, columns=["image"]).column("image")
        ]
        for domain in ("low", "normal")
    }
    vgg = build_vgg_features(config.loss.vgg_weights, flavour=config.loss.vgg_flavour)
    torch.manual_seed(config.seed)
    modules = build_modules(config, vgg)
    optimizers = build_optimizers(modules, config.optim)
    augment_rng = augment_generator(config.seed, 0)
    batch, started = config.optim.batch_size, None
    for step in range(steps):
        if step == warmup:
            started = time.perf_counter()
        set_learning_rate(optimizers, learning_rate(0, config.optim))
        picks = [(step * batch + i) for i in range(batch)]
        low, normal = make_training_batch(
            [images["low"][i % len(images["low"])] for i in picks],
            [images["normal"][i % len(images["normal"])] for i in picks],
            config.augment,
            augment_rng,
        )
        training_step(modules, optimizers, low, normal, config, step_generator(config.seed, step))
    return batch * (steps - warmup) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    settings = model_settings(args.crop, args.batch)
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))

    import ray

    from pipelines.cli import main as cli
    from pipelines.ops.ray_runtime import init_ray
    from pipelines.prepare.job import prepare
    from tests.fixtures.photos import build_photo_dataset

    photos = build_photo_dataset(root / "photos")
    init_ray(num_cpus=2)
    data = root / "data"
    prepare(str(photos.low_dir), str(photos.normal_dir), str(data))
    threads = ["--threads-per-worker", str(args.threads), "--cpus-per-worker", "1"]
    if cli(train_args(data, root / "run-1", settings, args.steps, "--workers", "1", *threads)):
        return 1
    ray_rate = ray_samples_per_s(root / "run-1", args.warmup)
    ray.shutdown()
    torch.set_num_threads(args.threads)
    plain_rate = plain_samples_per_s(data, settings, args.steps, args.warmup)
    print(f"settings: {settings}, steps {args.steps} (warm-up {args.warmup}), torch threads "
          f"{args.threads}, CPU {os.cpu_count()} cores")  # fmt: skip
    print(f"plain PyTorch loop: {plain_rate:.3f} samples/s")
    print(f"Ray Train, 1 worker: {ray_rate:.3f} samples/s")
    print(f"ratio Ray/plain: {ray_rate / plain_rate:.3f} (target >= 0.90)")
    if args.skip_scaling:
        return 0
    runs = {n: root / f"cluster-{n}" for n in (1, 2)}
    per_worker = ["--cpus-per-worker", "1", "--threads-per-worker", str(args.threads)]
    jobs = []
    for workers, run in runs.items():
        scaled = {**settings, "optim.batch_size": args.batch * workers}
        extra = ["--workers", str(workers), "--placement", "STRICT_SPREAD", *per_worker]
        jobs.append(train_args(data, run, scaled, args.steps, *extra))
    completed = subprocess.run(
        [sys.executable, "-c", CLUSTER_SCRIPT, json.dumps(jobs)], cwd=REPO, capture_output=True
    )
    if completed.returncode:
        print(completed.stderr.decode()[-3000:])
        return 1
    rates = {n: ray_samples_per_s(run, args.warmup) for n, run in runs.items()}
    print(f"two-node Cluster, 1 worker: {rates[1]:.3f} samples/s")
    print(f"two-node Cluster, 2 workers (one per node): {rates[2]:.3f} samples/s "
          f"(x{rates[2] / rates[1]:.2f}; both nodes share this machine's cores)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``enlightengan train`` on real Ray (local and a two-node ``ray.cluster_utils.Cluster``), real
SeaweedFS and real photos prepared by ``enlightengan prepare``; tiny model settings on CPU."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from enlightengan.augment import make_training_batch
from enlightengan.checkpoint import load_checkpoint, save_checkpoint
from enlightengan.config import tiny_config
from enlightengan.training import (
    LOSS_TERMS,
    build_modules,
    build_optimizers,
    learning_rate,
    set_learning_rate,
    step_generator,
    training_step,
)
from enlightengan.vgg import build_vgg_features
from pipelines.cli import main
from pipelines.io import storage
from pipelines.io.images import decode_image, decode_png
from pipelines.ops.local_services import session_members
from pipelines.prepare.job import prepare
from pipelines.train.faults import FAIL_AT_STEP_ENV
from pipelines.train.worker import augment_generator
from tests.fixtures.seaweed import all_keys, botocore_client

REPO = Path(__file__).resolve().parents[3]
TINY = tiny_config()
# The faulted run decays its learning rate from the first epoch (3 steps: 5 low images over
# 2 workers of batch 1), so a restart or a rerun that lost its place in the schedule shows.
DECAY = {"optim.epochs_constant": 0, "optim.epochs_decay": 3}
DECAYING = tiny_config(**DECAY)
STEPS_PER_EPOCH = 3


def _tiny_overrides() -> list[str]:
    """The whole of ``tiny_config()`` as ``--set`` values."""
    overrides = []
    for section, fields in TINY.to_dict().items():
        for name, value in fields.items() if isinstance(fields, dict) else [(None, fields)]:
            key = f"{section}.{name}" if name else section
            overrides.append(f"{key}={json.dumps(value)}")
    return overrides


def _train_args(data: str, run: str, *extra: str) -> list[str]:
    """A tiny run: the whole of ``tiny_config()`` given as --set overrides."""
    sets = [item for value in _tiny_overrides() for item in ("--set", value)]
    # fp32: the tests compare with plain fp32 loops; `auto` would take bf16 on an AMX CPU.
    return ["train", "--data", data, "--run", run, "--precision", "fp32", *sets, *extra]


def _read_jsonl(location: storage.Location) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(location).decode().splitlines()]


def _checkpoint_names(location: storage.Location) -> list[str]:
    keys = storage.list_files(location, extensions=None)
    return sorted({key.split("/")[0] for key in keys if key.startswith("checkpoint_0")})


@pytest.fixture(scope="module")
def aws_environment(s3_server):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AWS_PROFILE", raising=False)
        for name, value in s3_server.env().items():
            patch.setenv(name, value)
        yield s3_server


@pytest.fixture(scope="module")
def prepared_bucket(ray_local, aws_environment, photo_bucket) -> str:
    """The real-photo set (5 low, 4 normal) prepared into shards in the bucket."""
    out = photo_bucket.rsplit("/", 1)[0] + "/prepared"
    prepare(f"{photo_bucket}/low", f"{photo_bucket}/normal", out)
    return out


@pytest.fixture(scope="module")
def faulted_run(prepared_bucket, aws_environment):
    """Two CPU workers, 4 steps, a checkpoint every 2; rank 1 raises once at step 3; the
    learning rate decays by a third each epoch of 3 steps."""
    run = prepared_bucket.rsplit("/", 1)[0] + "/runs/faulted"
    args = ["--workers", "2", "--steps", "4", "--checkpoint-every", "2", "--sample-every", "2"]
    args += [item for name, value in DECAY.items() for item in ("--set", f"{name}={value}")]
    args += ["--keep-checkpoints", "2", "--max-failures", "2"]
    started = time.time()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAIL_AT_STEP_ENV, "3")
        assert main(_train_args(prepared_bucket, run, *args)) == 0
    return storage.resolve(run), started


def _folder_objects(aws_environment, uri: str) -> list[str]:
    """Keys ending in "/" in the bucket of ``uri``, as a plain S3 listing shows them: S3 has no
    folders, so none of the jobs, nor Ray Train's storage code, may write such markers."""
    bucket = uri.removeprefix("s3://").split("/")[0]
    client = botocore_client(aws_environment.env())
    keys = all_keys(client, bucket)
    assert any("/train/checkpoint_" in key for key in keys)
    return [key for key in keys if key.endswith("/")]


def test_checkpoints_metrics_and_pictures_land_in_the_bucket(faulted_run, aws_environment):
    run, _ = faulted_run
    assert _folder_objects(aws_environment, run.uri) == []
    assert _checkpoint_names(run.child("train")) == ["checkpoint_00000002", "checkpoint_00000004"]
    pointer = json.loads(storage.read_bytes(run.child("latest_checkpoint.json")))
    assert pointer == {"step": 4, "path": "train/checkpoint_00000004"}
    records = _read_jsonl(run.child("metrics.jsonl"))
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    for record in records:
        assert all(math.isfinite(record[term]) for term in LOSS_TERMS)
        assert record["epoch"] == (record["step"] - 1) // STEPS_PER_EPOCH
        assert record["lr"] == pytest.approx(learning_rate(record["epoch"], DECAYING.optim))
        assert record["images_per_s"] > 0 and 0.0 <= record["data_wait_share"] <= 1.0
    # Step 3 ran after the restart from the step-2 checkpoint, step 4 in the next epoch.
    assert records[2]["lr"] == pytest.approx(TINY.optim.lr)
    assert records[3]["lr"] == pytest.approx(TINY.optim.lr * 2 / 3)
    epochs = _read_jsonl(run.child("epochs.jsonl"))
    assert sum(epoch["steps"] for epoch in epochs) == 4
    for key in ("loss_curve.png", "samples/step_00000002.png", "samples/step_00000004.png"):
        assert storage.read_bytes(run.child(key))[:8] == b"\x89PNG\r\n\x1a\n"
    described = json.loads(storage.read_bytes(run.child("config.json")))
    assert described["config"]["generator"]["base_channels"] == 4
    assert described["job"]["global_batch"] == 2 and described["job"]["workers"] == 2
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in json.dumps(described)


def test_injected_fault_is_retried_from_the_last_checkpoint(faulted_run, tmp_path):
    run, started = faulted_run
    marker = storage.read_bytes(run.child(".fault_injected")).decode()
    assert "step 3" in marker
    records = {record["step"]: record for record in _read_jsonl(run.child("metrics.jsonl"))}
    # Steps 1-2 come from the first attempt; 3-4 were redone after the restart.
    assert records[3]["time"] > records[2]["time"] > started
    local = tmp_path / "checkpoint"
    source = run.child("train/checkpoint_00000004")
    for key in storage.list_files(source, extensions=None):
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(storage.read_bytes(source.child(key)))
    checkpoint = load_checkpoint(local)
    assert checkpoint.step == 4 and checkpoint.trainer_state["world_size"] == 2
    adam_steps = checkpoint.optimizer_states["generator"]["state"][0]["step"]
    assert int(adam_steps) == 4  # the optimiser state continued, it did not restart at step 2
    assert checkpoint.trainer_state["epoch"] == 1
    for name in ("generator", "global_d", "patch_d"):
        group = checkpoint.optimizer_states[name]["param_groups"][0]
        assert group["lr"] == pytest.approx(TINY.optim.lr * 2 / 3)
    # Darkening and patch corners come from step_generator(seed, step): no state to keep.
    assert {"augment_rank0", "augment_rank1"} <= set(checkpoint.rng_state)
    assert not any(key.startswith("step_rank") for key in checkpoint.rng_state)


def test_rerun_resumes_from_the_last_step(faulted_run, prepared_bucket, aws_environment, tmp_path):
    """The rerun continues from step 4 on the same schedule, and a newer checkpoint folder
    that a crash cut off mid-upload (step 5, weights half written) is never resumed from."""
    run, _ = faulted_run
    before = {r["step"]: r for r in _read_jsonl(run.child("metrics.jsonl"))}
    complete = run.child("train/checkpoint_00000004")
    broken = run.child("train/checkpoint_00000005")
    for key in storage.list_files(complete, extensions=None):
        data = storage.read_bytes(complete.child(key))
        storage.write_bytes(
            broken.child(key), data[: len(data) // 2] if key.endswith(".pt") else data
        )
    resumed_at = time.time()
    args = ["--workers", "2", "--steps", "6", "--checkpoint-every", "2", "--sample-every", "0"]
    args += [item for name, value in DECAY.items() for item in ("--set", f"{name}={value}")]
    assert main(_train_args(prepared_bucket, run.uri, *args, "--keep-checkpoints", "2")) == 0
    after = {r["step"]: r for r in _read_jsonl(run.child("metrics.jsonl"))}
    assert sorted(after) == [1, 2, 3, 4, 5, 6]
    assert all(after[step] == before[step] for step in (1, 2, 3, 4))
    assert min(after[5]["time"], after[6]["time"]) > resumed_at
    assert [after[step]["lr"] for step in (5, 6)] == pytest.approx([TINY.optim.lr * 2 / 3] * 2)
    pointer = json.loads(storage.read_bytes(run.child("latest_checkpoint.json")))
    assert pointer == {"step": 6, "path": "train/checkpoint_00000006"}
    local = tmp_path / "final"
    source = run.child(pointer["path"])
    for key in storage.list_files(source, extensions=None):
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(storage.read_bytes(source.child(key)))
    final = load_checkpoint(local)
    assert final.step == 6
    assert int(final.optimizer_states["generator"]["state"][0]["step"]) == 6
    # Ray Train removed its oldest checkpoint (--keep-checkpoints 2; the cut-off step 5 is not
    # one of its own) and left no marker in its place.
    kept = ["checkpoint_00000004", "checkpoint_00000005", "checkpoint_00000006"]
    assert _checkpoint_names(run.child("train")) == kept
    assert _folder_objects(aws_environment, run.uri) == []


def test_changed_model_settings_on_an_existing_run_are_refused(faulted_run, prepared_bucket):
    run, _ = faulted_run
    args = _train_args(prepared_bucket, run.uri, "--workers", "2", "--dry-run")
    assert main([*args, "--set", "optim.lr=0.5"]) == 2


@pytest.mark.parametrize(
    "extra",
    [
        ("--set", "optim.no_such_field=1"),
        ("--set", "augment.crop_size=50"),
        ("--set", "generator.norm=sync_batch"),
        ("--workers", "3"),  # batch 2 < 3 workers
        ("--workers", "3", "--min-workers", "2", "--set", "optim.batch_size=4"),  # 3 of 4
        ("--workers", "2", "--min-workers", "3"),
        ("--wait-for-workers", "0"),
    ],
)
def test_bad_settings_exit_2_before_any_compute(prepared_bucket, tmp_path, extra, capsys):
    assert main(_train_args(prepared_bucket, str(tmp_path / "run"), *extra)) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.json").exists()


def test_workers_the_local_ray_cannot_place_stop_the_job_at_once(prepared_bucket, tmp_path, capsys):
    """Two workers of 1 CPU on the 2-CPU local Ray would leave no CPU for Ray Data's shard
    reads (the run would hang): exit 2 at once with one line, and no run folder written."""
    args = ["--workers", "2", "--cpus-per-worker", "1", "--steps", "2"]
    started = time.monotonic()
    code = main(_train_args(prepared_bucket, str(tmp_path / "run"), *args))
    assert code == 2
    assert time.monotonic() - started < 30
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert errors[0].startswith("enlightengan train: error: train asks for 2 workers of 1 CPU")
    assert "1 CPU free on one node for its shard-reading tasks (Ray Data)" in errors[0]
    assert "the cluster has 2 CPUs on 1 node" in errors[0]
    assert "pass --cpus-per-worker 0.5 or --workers 1 instead" in errors[0]
    assert not (tmp_path / "run" / "config.json").exists()


@ray.remote(num_cpus=1.5)
class _Holder:
    """Holds CPUs of the local Ray, as another job would."""

    def ready(self) -> bool:
        return True


def test_workers_whose_resources_others_hold_end_the_job_at_the_deadline(
    ray_local, prepared_bucket, tmp_path, monkeypatch, capsys
):
    """Two workers of 0.5 CPU fit the 2-CPU local Ray, but another job holds 1.5 CPUs: with
    Ray Train's start timeout at 5 s, ``--wait-for-workers 10`` gives up after two tries, with
    one line saying what."""
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "5")
    holder = _Holder.remote()
    ray.get(holder.ready.remote())
    try:
        args = ["--workers", "2", "--cpus-per-worker", "0.5", "--steps", "2"]
        args += ["--wait-for-workers", "10"]
        started = time.monotonic()
        code = main(_train_args(prepared_bucket, str(tmp_path / "run"), *args))
        waited = time.monotonic() - started
    finally:
        ray.kill(holder)
    captured = capsys.readouterr()
    assert code == 1
    assert "train: other work holds part of the cluster now (0.5 CPU of 2 free)" in captured.err
    out = captured.out
    assert "could not place 2 workers (0.5 CPUs each) within --wait-for-workers 10 s" in out
    assert "run the same command again when the capacity is back" in out
    assert 10 <= waited < 120


def test_missing_data_and_missing_credentials_exit_2(prepared_bucket, tmp_path, monkeypatch):
    assert main(_train_args(str(tmp_path / "nothing"), str(tmp_path / "run"))) == 2
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert main(_train_args(prepared_bucket, str(tmp_path / "run"))) == 2


# A fine-tune run: 3 steps at the tiny lr (an epoch: 5 low images at batch 2), then, resumed,
# 2 steps of the next epoch, where the schedule (0 constant + 1 decay epoch) is at lr 0.
FINETUNE_SCHEDULE = {"optim.epochs_constant": 0, "optim.epochs_decay": 1}


def _download(location: storage.Location, folder: Path) -> Path:
    for key in storage.list_files(location, extensions=None):
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(storage.read_bytes(location.child(key)))
    return folder


def _parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable weights only: BatchNorm's running statistics move with every forward."""
    return {name: value.detach().clone() for name, value in module.named_parameters()}


def _trainable(checkpoint) -> dict[str, dict[str, torch.Tensor]]:
    """The trainable weights of a checkpoint's three networks."""
    from enlightengan.discriminator import build_discriminators

    built = build_discriminators(checkpoint.config.discriminator)
    modules = dict(zip(("global_d", "patch_d"), built, strict=True))
    for name, module in modules.items():
        module.load_state_dict(checkpoint.network_states[name])
    modules["generator"] = checkpoint.build_generator()
    return {name: _parameters(module) for name, module in modules.items()}


def _largest_difference(left: dict, right: dict) -> float:
    return max(float((left[name] - right[name]).abs().max()) for name in left)


@pytest.fixture(scope="module")
def finetune_run(prepared_bucket, aws_environment, tmp_path_factory):
    """``train --init-from`` a checkpoint in the bucket (tiny generator and discriminators with
    seed-7 weights, not the seed the run would draw): 3 steps; then the source is deleted and
    the same job with 5 steps resumes, given through the Python API (``run_train(TrainJob)``)
    this time. Returns what each run reported: the command's stdout, then the Python
    call's summary text."""
    from enlightengan.discriminator import build_discriminators
    from enlightengan.generator import Generator

    torch.manual_seed(7)
    generator = Generator(TINY.generator)
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # trained-looking statistics
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    global_d, patch_d = build_discriminators(TINY.discriminator)
    networks = {"generator": generator.eval(), "global_d": global_d, "patch_d": patch_d}
    local = save_checkpoint(
        tmp_path_factory.mktemp("source") / "checkpoint", config=TINY, networks=networks
    )
    root = prepared_bucket.rsplit("/", 1)[0]
    source = storage.resolve(f"{root}/sources/finetune-source")
    for path in local.iterdir():
        storage.write_bytes(source.child(path.name), path.read_bytes())
    run = storage.resolve(f"{root}/runs/finetune")

    def train(steps: int) -> str:
        args = ["--workers", "1", "--steps", str(steps), "--checkpoint-every", "3"]
        args += ["--sample-every", "0", "--init-from", source.uri]
        args += [item for k, v in FINETUNE_SCHEDULE.items() for item in ("--set", f"{k}={v}")]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(_train_args(prepared_bucket, run.uri, *args)) == 0
        return printed.getvalue()

    def train_from_python(steps: int) -> str:
        from pipelines.api import TrainJob, run_train

        overrides = _tiny_overrides() + [f"{k}={v}" for k, v in FINETUNE_SCHEDULE.items()]
        job = TrainJob(
            data=prepared_bucket, output=run.uri, precision="fp32", overrides=tuple(overrides),
            workers=1, steps=steps, checkpoint_every=3, sample_every=0, init_from=source.uri,
        )  # fmt: skip
        summary = run_train(job)
        assert summary.exit_code == 0
        return summary.text

    first = train(3)
    first_checkpoint = _download(
        run.child("train/checkpoint_00000003"), tmp_path_factory.mktemp("3")
    )
    storage.delete_prefix(source)  # a resumed run must not need its source any more
    resumed = train_from_python(5)
    return {
        "source": source.uri,
        "source_dir": local,
        "networks": networks,
        "run": run,
        "first": first,
        "first_checkpoint": first_checkpoint,
        "resumed": resumed,
    }


def test_init_from_a_checkpoint_in_the_bucket_starts_from_its_exact_weights(
    finetune_run, photo_dataset, tmp_path
):
    from enlightengan.generator import Generator
    from enlightengan.inference import Enhancer

    run, networks = finetune_run["run"], finetune_run["networks"]
    shown = finetune_run["source"]
    # one line: where it starts, and that the discriminators come from the source
    (line,) = [line for line in finetune_run["first"].splitlines() if "initialised from" in line]
    assert line.startswith(f"train: initialised from {shown} (sha256 ")
    assert "discriminators: loaded from the source" in line and "lr 0.0001 (given)" in line
    record = json.loads(storage.read_bytes(run.child("config.json")))["job"]["init_from"]
    generator_file = (finetune_run["source_dir"] / "generator.pt").read_bytes()
    assert record["source"] == shown and record["discriminators"] == "loaded"
    assert record["sha256"] == hashlib.sha256(generator_file).hexdigest()

    # Before any step: the run's starting checkpoint (what its workers load at step 0) gives
    # exactly the source's outputs, and holds exactly the source's discriminators.
    start = load_checkpoint(_download(run.child("init_from"), tmp_path / "init"))
    assert start.step == 0
    photos = [
        decode_image((photo_dataset.low_dir / p.key).read_bytes()).array for p in photo_dataset.low
    ]
    photos = [photo[:192, :256] for photo in photos[:2]]
    expected = Enhancer(networks["generator"])(photos)
    for got, want in zip(Enhancer(start.build_generator())(photos), expected, strict=True):
        assert got.dtype == want.dtype and (got == want).all()
    for name in ("global_d", "patch_d"):
        for key, value in networks[name].state_dict().items():
            assert torch.equal(start.network_states[name][key], value)

    # The workers did start there: 3 Adam steps at lr 1e-4 stay within 0.01 of the source's
    # weights, where the run's own seed would have drawn weights far from them.
    source = _parameters(networks["generator"])
    after = load_checkpoint(finetune_run["first_checkpoint"]).build_generator()
    assert 0 < _largest_difference(_parameters(after), source) < 0.01
    torch.manual_seed(TINY.seed)
    assert _largest_difference(_parameters(Generator(TINY.generator)), source) > 0.1


def test_resuming_a_fine_tune_run_continues_its_checkpoint_never_the_source(finetune_run, tmp_path):
    run = finetune_run["run"]
    (line,) = [line for line in finetune_run["resumed"].splitlines() if "initialised" in line]
    assert line.startswith(f"train: resuming a run initialised from {finetune_run['source']}")
    assert "the source is not read again" in line
    assert "discriminators: loaded from the source" in line
    records = {r["step"]: r for r in _read_jsonl(run.child("metrics.jsonl"))}
    assert sorted(records) == [1, 2, 3, 4, 5]
    assert [records[step]["lr"] for step in (4, 5)] == [0.0, 0.0]
    # Steps 4-5 ran at lr 0: the weights are exactly the step-3 checkpoint's, which are not
    # the source's (a resume that re-initialised from the source would give those).
    pointer = json.loads(storage.read_bytes(run.child("latest_checkpoint.json")))
    last = load_checkpoint(_download(run.child(pointer["path"]), tmp_path / "last"))
    assert last.step == 5
    before, after = _trainable(load_checkpoint(finetune_run["first_checkpoint"])), _trainable(last)
    for name, weights in before.items():
        assert all(torch.equal(after[name][key], value) for key, value in weights.items()), name
    source = _parameters(finetune_run["networks"]["generator"])
    assert _largest_difference(after["generator"], source) > 0
    assert int(last.optimizer_states["generator"]["state"][0]["step"]) == 5


def test_init_from_authors_weights_says_fresh_discriminators_and_contradictions_exit_2(
    prepared_bucket, tmp_path, capsys
):
    from enlightengan.config import GeneratorConfig
    from enlightengan.generator import Generator
    from enlightengan.official_weights import save_official_generator

    torch.manual_seed(11)
    weights = save_official_generator(Generator(GeneratorConfig()).eval(), tmp_path / "G.pth")
    args = ["train", "--data", prepared_bucket, "--run", str(tmp_path / "run")]
    args += ["--init-from", str(weights), "--set", "discriminator.base_channels=8", "--dry-run"]
    assert main(args) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "initialised" in line]
    assert "discriminators: fresh (source has none)" in line
    assert main([*args, "--set", "generator.base_channels=4"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert "error:" in error and "generator.base_channels=4" in error


def test_one_worker_matches_a_plain_pytorch_loop(ray_local, photo_dataset, tmp_path):
    """Same seeds, same step function, same batches: Ray adds no change to the maths."""
    for domain, photo in (("low", photo_dataset.low[0]), ("normal", photo_dataset.normal[0])):
        (tmp_path / "one" / domain).mkdir(parents=True)
        source = getattr(photo_dataset, f"{domain}_dir") / photo.key
        (tmp_path / "one" / domain / Path(photo.key).name).write_bytes(source.read_bytes())
    data, run = tmp_path / "data", tmp_path / "run"
    prepare(str(tmp_path / "one" / "low"), str(tmp_path / "one" / "normal"), str(data))
    steps = 3
    args = [
        "--workers",
        "1",
        "--steps",
        str(steps),
        "--sample-every",
        "0",
        "--threads-per-worker",
        "1",
    ]
    assert main(_train_args(str(data), str(run), *args)) == 0
    ray_losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    config = TINY
    images = {}
    for domain in ("low", "normal"):
        import pyarrow.parquet as pq

        table = pq.read_table(next((data / domain).glob("*.parquet")))
        images[domain] = decode_png(table.column("image")[0].as_py())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    plain_losses = []
    vgg = build_vgg_features(config.loss.vgg_weights, flavour=config.loss.vgg_flavour)
    torch.manual_seed(config.seed)
    modules = build_modules(config, vgg)
    optimizers = build_optimizers(modules, config.optim)
    augment_rng = augment_generator(config.seed, rank=0)
    batch = config.optim.batch_size
    for step in range(steps):
        # One image per domain and a batch of 2: an epoch is one step.
        set_learning_rate(optimizers, learning_rate(step, config.optim))
        low, normal = make_training_batch(
            [images["low"]] * batch, [images["normal"]] * batch, config.augment, augment_rng
        )
        step_rng = step_generator(config.seed, step)
        plain_losses.append(training_step(modules, optimizers, low, normal, config, step_rng))
    torch.set_num_threads(threads)
    for ray_step, plain in zip(ray_losses, plain_losses, strict=True):
        assert {t: ray_step[t] for t in LOSS_TERMS} == pytest.approx(plain, abs=1e-5, rel=1e-5)


MULTI_NODE_SCRIPT = """
import json, os, sys, tempfile, threading, time
# Cluster writes its address file under the default temp dir (/tmp/ray), which a fresh machine
# lacks: point that default at a folder of our own.
os.environ["RAY_TMPDIR"] = tempfile.mkdtemp()
os.makedirs(os.path.join(os.environ["RAY_TMPDIR"], "ray"))
import ray
from ray.cluster_utils import Cluster
node = {"num_cpus": int(os.environ.get("NODE_CPUS", "2")), "node_ip_address": "127.0.0.1"}
cluster = Cluster(
    initialize_head=True,
    head_node_args={**node, "include_dashboard": False, "temp_dir": tempfile.mkdtemp()},
)
second = cluster.add_node(**node)
cluster.wait_for_nodes()
from pipelines.io import storage
from pipelines.cli import main

def remove_second_node_after(step, pointer):
    # Node loss: the second node is killed (no graceful shutdown) once the run has a
    # checkpoint at or after `step`.
    while True:
        if storage.exists(pointer) and json.loads(storage.read_bytes(pointer))["step"] >= step:
            cluster.remove_node(second, allow_graceful=False)
            print(f"removed the second node after the step-{step} checkpoint", flush=True)
            return
        time.sleep(0.1)

if os.environ.get("REMOVE_NODE_AFTER_STEP"):
    run = sys.argv[sys.argv.index("--run") + 1]
    pointer = storage.resolve(run).child("latest_checkpoint.json")
    step = int(os.environ["REMOVE_NODE_AFTER_STEP"])
    threading.Thread(target=remove_second_node_after, args=(step, pointer), daemon=True).start()
code = main(sys.argv[1:] + ["--address", cluster.address])
ray.shutdown()
cluster.shutdown()
sys.exit(code)
"""


def _run_on_two_nodes(args: list[str], log: Path, **env_vars: str) -> tuple[int, str]:
    """``enlightengan train`` in a separate process that owns a two-node ``Cluster`` (the
    session's local Ray stays as is), in a session of its own: whatever of it outlives the
    run (a killed node's agents) is killed by PID. Returns the exit code and the output."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", MULTI_NODE_SCRIPT, *args],
            cwd=REPO,
            env={**env, **env_vars},
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        code = process.wait(timeout=600)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        for _ in range(100):
            left = session_members(process.pid)
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        process.wait(timeout=30)
    text = log.read_text(errors="replace")
    if code is None:
        pytest.fail(f"the two-node run did not end within 600 s:\n{text[-4000:]}")
    return code, text


@pytest.mark.heavy
def test_two_nodes_one_worker_each(prepared_bucket, aws_environment, tmp_path):
    run = storage.resolve(prepared_bucket.rsplit("/", 1)[0] + "/runs/two-nodes")
    args = ["--workers", "2", "--steps", "2", "--checkpoint-every", "2", "--sample-every", "0"]
    args += ["--placement", "STRICT_SPREAD"]
    code, output = _run_on_two_nodes(_train_args(prepared_bucket, run.uri, *args), tmp_path / "log")
    assert code == 0, output[-3000:]
    pointer = json.loads(storage.read_bytes(run.child("latest_checkpoint.json")))
    assert pointer["step"] == 2
    state = json.loads(storage.read_bytes(run.child(f"{pointer['path']}/trainer_state.json")))
    assert state["world_size"] == 2 and len(set(state["worker_nodes"])) == 2  # one per node


def _download(location: storage.Location, local: Path) -> Path:
    for key in storage.list_files(location, extensions=None):
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(storage.read_bytes(location.child(key)))
    return local


@pytest.mark.heavy
def test_node_lost_after_a_checkpoint_the_run_goes_on_with_the_same_global_batch(
    prepared_bucket, aws_environment, tmp_path
):
    """Two nodes with one worker each (2 of their 3 CPUs, one left for Ray Data's read tasks:
    a third worker fits nowhere); the second node is killed once
    the step-2 checkpoint is written. With ``--min-workers 1`` Ray Train restarts the worker
    group from that checkpoint on the one node left, each worker taking the whole global batch
    of 2: every step runs once, on the learning-rate schedule of the unchanged epoch length."""
    run = storage.resolve(prepared_bucket.rsplit("/", 1)[0] + "/runs/node-lost")
    steps = 6
    args = ["--workers", "2", "--min-workers", "1", "--cpus-per-worker", "2"]
    args += ["--steps", str(steps), "--checkpoint-every", "2", "--sample-every", "0"]
    args += ["--keep-checkpoints", "10"]
    args += [item for name, value in DECAY.items() for item in ("--set", f"{name}={value}")]
    code, output = _run_on_two_nodes(
        _train_args(prepared_bucket, run.uri, *args),
        tmp_path / "log",
        REMOVE_NODE_AFTER_STEP="2",
        NODE_CPUS="3",
        # Ray Train notices the smaller cluster when a start of the two-worker group times out
        # (60 s by default).
        RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="15",
    )
    assert code == 0, output[-3000:]
    assert "removed the second node after the step-2 checkpoint" in output
    assert f"train: finished at step {steps} of {steps}" in output

    records = _read_jsonl(run.child("metrics.jsonl"))
    assert [record["step"] for record in records] == list(range(1, steps + 1))
    for record in records:
        assert record["epoch"] == (record["step"] - 1) // STEPS_PER_EPOCH
        assert record["lr"] == pytest.approx(learning_rate(record["epoch"], DECAYING.optim))
        assert all(math.isfinite(record[term]) for term in LOSS_TERMS)
    workers = [record["workers"] for record in records]
    assert workers[:2] == [2, 2] and workers[-1] == 1  # two workers until the loss, then one
    restarted_at = workers.index(1)
    assert workers[restarted_at:] == [1] * (steps - restarted_at)
    assert restarted_at % 2 == 0  # the single worker took over from a checkpoint

    first = load_checkpoint(_download(run.child("train/checkpoint_00000002"), tmp_path / "a"))
    final = load_checkpoint(_download(run.child(f"train/checkpoint_{steps:08d}"), tmp_path / "b"))
    assert first.trainer_state["world_size"] == 2
    assert len(set(first.trainer_state["worker_nodes"])) == 2
    assert final.trainer_state["world_size"] == 1 and final.trainer_state["per_worker_batch"] == 2
    assert final.trainer_state["worker_nodes"][0] in first.trainer_state["worker_nodes"]
    assert final.step == steps and final.trainer_state["steps_per_epoch"] == STEPS_PER_EPOCH
    # The optimiser state went on from the checkpoint: Adam counted every step exactly once.
    assert int(final.optimizer_states["generator"]["state"][0]["step"]) == steps
    last_lr = learning_rate((steps - 1) // STEPS_PER_EPOCH, DECAYING.optim)
    assert final.optimizer_states["generator"]["param_groups"][0]["lr"] == pytest.approx(last_lr)

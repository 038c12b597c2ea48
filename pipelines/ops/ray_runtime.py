"""Starting or joining Ray: the one place that calls ``ray.init``.

On a laptop (no address) Ray starts in-process with every listener on loopback, no dashboard,
and token auth off unless the caller set ``RAY_AUTH_MODE``. With ``--address`` / ``RAY_ADDRESS``
it joins the cluster; a submitted Ray Job finds ``RAY_ADDRESS`` set and must call bare init.
"""

from __future__ import annotations

import os
import sys
import tempfile

import ray


def init_ray(
    address: str | None = None, num_cpus: int | None = None, training: bool = False
) -> bool:
    """Start or join Ray once per process; a second call is a no-op. True when this call
    started or joined it.

    ``training``: the local Ray will run Ray Train, whose worker processes get
    :func:`quiet_dashboard_checks` as their setup hook. Only then: a job-level runtime
    environment sends every worker's start through Ray's runtime-env agent, which makes each
    new worker process (every task and actor of prepare and enhance) slower to start."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    plain_progress_without_terminal()
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray reads that variable once, when it is imported (before this runs). Left True, ray.init
    # turns _node_ip_address="127.0.0.1" into the machine's routable address and its GCS,
    # raylet, workers and agents listen on every interface (tests/reliability/test_security.py).
    from ray._private import ray_constants

    enable_cluster = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].lower() in ("1", "true")
    ray_constants.ENABLE_RAY_CLUSTER = enable_cluster
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp_dir = os.environ.get("ENLIGHTENGAN_RAY_TMPDIR") or tempfile.mkdtemp(prefix="ray-")
    setup = {"worker_process_setup_hook": "pipelines.ops.ray_runtime.quiet_dashboard_checks"}
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _temp_dir=temp_dir,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        runtime_env=setup if training else None,
    )
    return True


def plain_progress_without_terminal() -> None:
    """Progress as plain log lines when stdout is not a terminal (a Ray Job's log, a file, a
    pipe), also for datasets that run inside Ray workers (Ray Train's data shards), whose bars
    Ray would otherwise draw in this process with cursor-movement escapes."""
    if not sys.stdout.isatty():
        from ray.data import DataContext

        DataContext.get_current().use_ray_tqdm = False


# Without a dashboard there is no State API, and Ray Train's placement-group cleaner warns
# about that once a second for the whole run (129 of the demo's 782 output lines).
DASHBOARD_CHECK_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_dashboard_checks() -> None:
    """Worker-process setup hook of the in-process local Ray (which runs without a dashboard):
    silences the warnings of checks that need the dashboard's State API."""
    import logging

    for name in DASHBOARD_CHECK_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)

"""Starting or joining Ray: the one place that calls ``ray.init``.

On a laptop (no address) Ray starts in-process with every listener on loopback, no dashboard,
and token auth off unless the caller set ``RAY_AUTH_MODE``. With ``--address`` / ``RAY_ADDRESS``
it joins the cluster; a submitted Ray Job finds ``RAY_ADDRESS`` set and must call bare init.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import ray

from pipelines.errors import UserError
from pipelines.ops.ray_internals import (
    DASHBOARD_CHECK_LOGGERS,
    LOOPBACK_VARIABLE,
    loopback_refusal,
    spend_actor_arguments_notice,
)

# Whether this process started an in-process local Ray (nothing can join it, so a job that does
# not fit it never will): see :func:`started_local_ray`.
_LOCAL = {"started": False}


def started_local_ray() -> bool:
    """True when :func:`init_ray` started the Ray this process uses in-process, without an
    address: no other node can join it, so a job that does not fit it never will."""
    return _LOCAL["started"] and ray.is_initialized()


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
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Every job builds Ray Data datasets next, and importing Ray Data is mostly Python work,
        # while ray.init mostly waits for Ray's processes to start: the two overlap.
        importing = pool.submit(importlib.import_module, "ray.data")
        _start_or_join(address, num_cpus, training)
        importing.result()
    plain_progress_without_terminal()
    plain_worker_log_prefixes_without_terminal()
    spend_actor_arguments_notice()
    return True


def _start_or_join(address: str | None, num_cpus: int | None, training: bool) -> None:
    if address:
        ray.init(address=address, log_to_driver=True)
        _LOCAL["started"] = False
        return
    # Loopback only: see pipelines.ops.ray_internals (Ray's processes inherit the variable).
    os.environ.setdefault(LOOPBACK_VARIABLE, "0")
    refusal = loopback_refusal()
    if refusal:
        raise UserError(refusal)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp_dir = os.environ.get("ENLIGHTENGAN_RAY_TMPDIR") or tempfile.mkdtemp(prefix="ray-")
    setup = {"worker_process_setup_hook": "pipelines.ops.ray_runtime.quiet_dashboard_checks"}
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _temp_dir=temp_dir,
        configure_logging=False,
        runtime_env=setup if training else None,
        # Nothing scrapes a process-local Ray's metrics (no dashboard, no Prometheus), and
        # recording them takes CPU from the actors on a small machine.
        _system_config={"enable_metrics_collection": False},
    )
    _LOCAL["started"] = True


def plain_progress_without_terminal() -> None:
    """Progress as plain log lines when stdout is not a terminal (a Ray Job's log, a file, a
    pipe), also for datasets that run inside Ray workers (Ray Train's data shards), whose bars
    Ray would otherwise draw in this process with cursor-movement escapes."""
    if not sys.stdout.isatty():
        from ray.data import DataContext

        DataContext.get_current().use_ray_tqdm = False


def lost_node_failure(job: str, error: BaseException):
    """A one-line :class:`~pipelines.errors.UserError` for a job that Ray could not carry past
    a lost node or worker (an object, actor or task whose node went and that no retry or
    reconstruction brought back), else ``None`` (anything else keeps its traceback)."""
    import ray.exceptions as failures

    lost = (
        failures.NodeDiedError,
        failures.ObjectLostError,
        failures.RayActorError,
        failures.WorkerCrashedError,
        failures.LocalRayletDiedError,
    )
    seen, cause, detail = set(), error, None
    while isinstance(cause, BaseException) and id(cause) not in seen:
        if isinstance(cause, lost):
            first = next((line for line in str(cause).splitlines() if line.strip()), "")
            detail = f"{type(cause).__name__}: {first.strip()}"
            break
        seen.add(id(cause))
        cause = getattr(cause, "cause", None) or cause.__cause__
    if detail is None:
        # A task's error that reached the driver only as text (Ray's UnserializableException).
        names = {kind.__name__ for group in lost for kind in _with_subclasses(group)}
        detail = next(
            (line.strip() for line in str(error).splitlines()
             if line.strip().split(":", 1)[0].rsplit(".", 1)[-1] in names),
            None,
        )  # fmt: skip
    if detail is None:
        return None
    return UserError(
        f"{job} stopped: the cluster lost a node or worker and Ray could not recover its work "
        f"({detail[:200]}); finished work is kept, rerun the same command to complete it"
    )


def _with_subclasses(kind: type) -> list[type]:
    return [kind, *(sub for child in kind.__subclasses__() for sub in _with_subclasses(child))]


def plain_worker_log_prefixes_without_terminal() -> None:
    """No colour codes around the ``(pid=..., ip=...)`` prefix Ray puts on the lines its workers
    print, unless both stdout and stderr are terminals (a log file or a pipe gets plain text).
    Ray's driver reads ``RAY_COLOR_PREFIX`` each time it prints such a line (0: no colour); a
    value the user set is kept."""
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def quiet_dashboard_checks() -> None:
    """Worker-process setup hook of the in-process local Ray (which runs without a dashboard):
    silences the warnings of checks that need the dashboard's State API."""
    import logging

    for name in DASHBOARD_CHECK_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)

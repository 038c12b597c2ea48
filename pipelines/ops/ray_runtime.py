"""Starting or joining Ray: the one place that calls ``ray.init``.

On a laptop (no address) Ray starts in-process with every listener on loopback, no dashboard,
and token auth off unless the caller set ``RAY_AUTH_MODE``. With ``--address`` / ``RAY_ADDRESS``
it joins the cluster; a submitted Ray Job finds ``RAY_ADDRESS`` set and must call bare init.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import ray

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
        # Every job builds Ray Data datasets next, and importing Ray Data takes most of a second
        # of mostly Python work, while ray.init mostly waits for Ray's processes to start.
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
    with _without_api_server():
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            _temp_dir=temp_dir,
            _node_ip_address="127.0.0.1",
            configure_logging=False,
            runtime_env=setup if training else None,
            # Nothing scrapes a process-local Ray's metrics (no dashboard, no Prometheus), and
            # recording them takes CPU from the actors on a small machine.
            _system_config={"enable_metrics_collection": False},
        )
    _LOCAL["started"] = True


@contextlib.contextmanager
def _without_api_server():
    """Keep ``ray.init`` from starting Ray's API server, for the in-process local Ray only.

    Ray starts that Python process on every head node, even with the dashboard off, when all it
    then serves is usage statistics. Its start is on ray.init's critical path (the raylet
    starts after it) and costs most of a CPU-second, which on 2 cores delays a run's first
    output. Nothing of ours needs it: no dashboard, and no job is submitted to a process-local
    Ray. ENLIGHTENGAN_RAY_API_SERVER=1 keeps it; on a Ray without this internal method the
    process starts as before."""
    from ray._private import node

    original = getattr(node.Node, "start_api_server", None)
    if original is None or os.environ.get("ENLIGHTENGAN_RAY_API_SERVER") == "1":
        yield
        return
    node.Node.start_api_server = _no_api_server
    try:
        yield
    finally:
        node.Node.start_api_server = original


def _no_api_server(self, **_) -> None:
    return None


# Ray core logs this at error level, once per process, when an actor with max_restarts != 0 gets
# a constructor argument through the object store (CoreWorker::CreateActor in core_worker.cc,
# RAY_LOG_ONCE_PER_PROCESS; ray-project/ray#53727: such an argument may be gone when the actor
# restarts). Ray Data starts every actor-pool worker that way: its DataContext and the map
# function arrive as ObjectRefs from ray.put (ActorPoolMapOperator._start_actor, Ray 2.60), with
# max_restarts=-1 by default (ray-project/ray#57733). Those objects are owned by this driver and
# referenced by the running operator, so a worker restarted during the run finds them; so is the
# checkpoint inside our own arguments (inference.checkpoints.SharedCheckpoint, held by the driver
# until the run ends). So the line only alarms users of every enhance and evaluate job. Ray has
# no switch for it (RAY_BACKEND_LOG_LEVEL would hide every error), so the driver spends the once
# on an actor of its own while fd 2 goes to a temporary file, and passes on anything else
# written there meanwhile. Ray's driver log file (python-core-driver-*.log) keeps
# the line, naming this class.
ACTOR_ARGUMENTS_NOTICE = b"has constructor arguments in the object store and max_restarts > 0"
# A resource no node has: the notice is logged when the actor is created, so it never needs a
# worker process (placed, it took one of the workers Ray starts with, which then exited).
NEVER_SCHEDULED = "enlightengan-never-scheduled"


class RayDataActorArgumentsNotice:
    """The actor whose creation spends Ray's once-per-process notice (see above)."""

    def __init__(self, argument):
        del argument


def spend_actor_arguments_notice() -> None:
    """Create and kill a :class:`RayDataActorArgumentsNotice` with an object-store argument and
    restarts allowed, keeping Ray's line about it off this process's standard error."""
    try:
        saved = os.dup(2)
    except OSError:
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            notice = (
                ray.remote(RayDataActorArgumentsNotice)
                .options(num_cpus=0, max_restarts=1, resources={NEVER_SCHEDULED: 1})
                .remote(ray.put(None))
            )
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        ray.kill(notice, no_restart=True)
        caught.seek(0)
        for line in caught.read().splitlines(keepends=True):
            if ACTOR_ARGUMENTS_NOTICE not in line:
                os.write(2, line)


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

    from pipelines.errors import UserError

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


# Without a dashboard there is no State API, and Ray Train's placement-group cleaner warns
# about that once a second for the whole run (129 of the demo's 782 output lines).
DASHBOARD_CHECK_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_dashboard_checks() -> None:
    """Worker-process setup hook of the in-process local Ray (which runs without a dashboard):
    silences the warnings of checks that need the dashboard's State API."""
    import logging

    for name in DASHBOARD_CHECK_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)

"""Every use of Ray beyond its public API, each with its reason; nothing else in ``pipelines``
imports a private Ray module, patches Ray or relies on Ray's undocumented behaviour.

Each use has a test in ``tests/pipelines/ops/test_ray_internals.py`` that fails with a message
naming it when a Ray version changes what it relies on (checked with :data:`RAY_CHECKED`).
Importing this module imports no Ray: the CLI calls :func:`keep_local_ray_on_loopback` before
anything imports ``ray``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

RAY_CHECKED = "2.60.0"

# --- Loopback-only local Ray (behaviour of a documented variable, no private import) -----------
# Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when ``ray`` is imported. Unset on Linux it
# means cluster mode: ray.init turns every local address into the machine's routable one and the
# GCS, raylet, workers and agents of an in-process Ray listen on every interface (with token auth
# off, anyone on the network could run code). "0" keeps them on 127.0.0.1
# (tests/reliability/test_security.py). It is set only for a process that will start its own Ray:
# a driver that joins a cluster must find its node by the node's real address.
LOOPBACK_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_local_ray_on_loopback(address: str | None = None) -> None:
    """Before ``ray`` is imported: a process that will start an in-process Ray (no ``address``
    and no ``RAY_ADDRESS``) gets Ray's loopback mode, unless the user chose otherwise."""
    if address or os.environ.get("RAY_ADDRESS") or "ray" in sys.modules:
        return
    os.environ.setdefault(LOOPBACK_VARIABLE, "0")


def loopback_refusal(address: str | None = None) -> str | None:
    """Just before an in-process Ray starts: why it must not (``ray`` was imported in cluster
    mode, so it would listen on every interface), else ``None``. ``address``: the one the local
    Ray would get; by default asked through the public ``ray.util.get_node_ip_address``, which
    before ``ray.init`` gives the address ray.init will give the local Ray.
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` set by the user allows it."""
    import ray.util

    if os.environ.get(LOOPBACK_VARIABLE, "").lower() in ("1", "true"):
        return None
    address = address or ray.util.get_node_ip_address()
    if address in ("127.0.0.1", "::1", "localhost"):
        return None
    return (
        f"the local Ray would listen on every network interface ({address}): Python imported "
        f"ray before {LOOPBACK_VARIABLE}=0 was set; set it before starting Python (or before "
        f"`import ray`), or give --address to join a cluster"
    )


# --- Ray Train's worker-group start timeout (pinned, no import) --------------------------------
# ray.train.v2._internal.constants: Ray Train waits this long for one worker group's resources,
# then retries it as a controller failure. No public API gives it; train needs it to turn
# --wait-for-workers into a retry count. Pinned here, compared with Ray's by the test.
WORKER_GROUP_START_TIMEOUT_VARIABLE = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
DEFAULT_WORKER_GROUP_START_TIMEOUT_S = 60.0


def is_worker_group_start_timeout(failure: object) -> bool:
    """Whether a ``ray.train.ControllerError``'s ``controller_failure`` is Ray Train's
    worker-group start timeout (the cluster could not place the workers in time). Ray exports
    no public class or code for it (ray.train.v2._internal.exceptions, Ray 2.60)."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return isinstance(failure, WorkerGroupStartupTimeoutError)


# --- Ray Train's logger names (strings, no import) ---------------------------------------------
# Ray Train logs a long "Reporting training result N: TrainingReport(...)" line per report in
# each worker on the logger of this module, named by its file path (logging.getLogger(__file__)),
# outside the ray.train loggers its LoggingConfig sets; train gives it the run's level.
REPORT_LOGGER_MODULE = "ray.train.v2._internal.execution.context"
# Without a dashboard there is no State API, and Ray Train's placement-group cleaner warns about
# that once a second for the whole run, drowning the run's own lines: the local Ray's worker
# setup hook raises this logger to ERROR.
DASHBOARD_CHECK_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def report_logger_names() -> tuple[str, ...]:
    """The names of the logger behind Ray Train's per-report lines: its module's file path (the
    name it uses) and its module name (in case a Ray version names it so)."""
    spec = importlib.util.find_spec(REPORT_LOGGER_MODULE)
    return (REPORT_LOGGER_MODULE,) if spec is None else (spec.origin, REPORT_LOGGER_MODULE)


# --- Ray's once-per-process line about actor arguments (behaviour, public calls only) ----------
# Ray core logs this at error level, once per process, when an actor with max_restarts != 0 gets
# a constructor argument through the object store (CoreWorker::CreateActor in core_worker.cc,
# RAY_LOG_ONCE_PER_PROCESS; ray-project/ray#53727: such an argument may be gone when the actor
# restarts). Ray Data starts every actor-pool worker that way: its DataContext and the map
# function arrive as ObjectRefs from ray.put (ActorPoolMapOperator._start_actor, Ray 2.60), with
# max_restarts=-1 by default (ray-project/ray#57733). Those objects are owned by this driver and
# referenced by the running operator, so a worker restarted during the run finds them; so is the
# checkpoint inside our own arguments (inference.checkpoints.SharedCheckpoint, held by the driver
# until the run ends). So the line only alarms users of every enhance and evaluate job. Ray has
# no switch for it (RAY_BACKEND_LOG_LEVEL would hide every error) and it is written by C++ to
# fd 2 (no Python logging filter sees it), so the driver spends the once on an actor of its own
# while fd 2 goes to a temporary file, and passes on anything else written there meanwhile.
# Ray's driver log file (python-core-driver-*.log) keeps the line, naming this class. If Ray
# stops printing it, or prints it every time, the test fails: then drop this.
ACTOR_ARGUMENTS_NOTICE = b"has constructor arguments in the object store and max_restarts > 0"
# A resource no node has: the notice is logged when the actor is created, so it never needs a
# worker process (placed, it took one of the workers Ray starts with, which then exited).
NEVER_SCHEDULED = "enlightengan-never-scheduled"


class RayDataActorArgumentsNotice:
    """The actor whose creation spends Ray's once-per-process notice (see above)."""

    def __init__(self, argument):
        del argument


def spend_actor_arguments_notice() -> bool:
    """Create and kill a :class:`RayDataActorArgumentsNotice` with an object-store argument and
    restarts allowed, keeping Ray's line about it off this process's standard error. True when
    Ray printed the line (and it was kept off)."""
    import ray

    try:
        saved = os.dup(2)
    except OSError:
        return False
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
        spent = False
        for line in caught.read().splitlines(keepends=True):
            if ACTOR_ARGUMENTS_NOTICE in line:
                spent = True
            else:
                os.write(2, line)
    return spent

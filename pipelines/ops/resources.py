"""Checking, before a job starts, that the cluster can place what it asks for.

Ray waits without a word for resources that never come: an actor pool asking for more CPUs or
GPUs per worker than any node has, or workers that take every CPU and leave none for the job's
own read, decode and write tasks (``enhance --cpus-per-worker 2`` on a 2-CPU machine waited 9
minutes with no output). Every job therefore states what it needs as a :class:`Request` and calls
:func:`ensure_placeable` once Ray is up. It reads the nodes that are alive now (``ray.nodes()``,
their total resources) and either returns, or stops with one line saying what the job asked
for, what the cluster has and what to pass instead (a :class:`~pipelines.errors.UserError`, exit
code 2), or, with ``--wait-for-resources SECONDS`` (a cluster with an autoscaler), asks the
autoscaler for the missing shapes (``ray.autoscaler.sdk.request_resources``) and waits until they
fit or the deadline passes, printing a line every 30 s.

The check counts whole nodes, as Ray places actors: a worker fits on a node only with all of its
CPUs, GPUs and memory there, and the job's tasks need ``task_cpus`` free on some node beside the
workers. Resources that other jobs hold now are not a reason to stop (they come back); a line
says the job waits for them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Mapping

from pipelines.errors import UserError

# Ray rounds fractional resources to 1e-4: a request within that of a node's amount fits it.
EPSILON = 1e-4
REPORT_EVERY_S = 30.0
POLL_S = 1.0
GIB = 1024**3
UNITS = {"CPU": "CPU", "GPU": "GPU"}
# The shared worker flags (pipelines.options.add_worker_arguments), named in the suggestions.
WORKER_FLAGS = {
    "CPU": "--cpus-per-worker",
    "GPU": "--gpus-per-worker",
    "memory": "--memory-per-worker",
    "workers": "--workers",
    "min_workers": "--min-workers",
}


@dataclasses.dataclass(frozen=True)
class Request:
    """What a job needs from the cluster.

    ``workers`` actors (or Ray Train workers) of ``per_worker`` resources each (Ray's names:
    ``CPU``, ``GPU``, ``memory`` in bytes), of which at least ``min_workers`` must fit (an elastic
    training run goes on with fewer); ``pools`` such groups (evaluate ``--compare`` runs two actor
    pools); ``task_cpus``: the CPUs one of the job's own tasks asks for, which must stay free on
    some node beside the workers; ``one_per_node``: at most one worker per node (Ray Train's
    ``STRICT_SPREAD``). ``flags``: the job's flag for each per-worker resource and for the
    worker count (``workers``, ``min_workers``) and the one that lifts ``one_per_node``,
    named in the suggestions; ``tasks``: what the job's own tasks do, in words."""

    job: str
    task_cpus: float
    workers: int = 0
    per_worker: Mapping[str, float] = dataclasses.field(default_factory=dict)
    min_workers: int | None = None
    pools: int = 1
    one_per_node: bool = False
    flags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tasks: str = "read/decode/write tasks"

    @property
    def wanted(self) -> int:
        """Workers that must fit, over every pool."""
        least = self.workers if self.min_workers is None else self.min_workers
        return least * self.pools


def alive_nodes() -> list[dict[str, float]]:
    """The total resources of each node that is alive now (``ray.nodes()``)."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def fits(nodes: list[Mapping[str, float]], request: Request, count: int | None = None) -> bool:
    """Whether ``count`` workers (default: :attr:`Request.wanted`) fit on ``nodes`` and leave
    ``task_cpus`` free on one of them."""
    count = request.wanted if count is None else count
    capacities = [_capacity(node, request) for node in nodes]
    if request.task_cpus <= 0:
        return sum(capacities) >= count
    cpus = request.per_worker.get("CPU", 0.0)
    for index, node in enumerate(nodes):
        spare = node.get("CPU", 0.0) - request.task_cpus
        if spare < -EPSILON:
            continue
        here = capacities[index]
        if cpus > 0:
            here = min(here, math.floor(spare / cpus + EPSILON))
        if sum(capacities) - capacities[index] + here >= count:
            return True
    return False


def _capacity(node: Mapping[str, float], request: Request) -> int:
    """Workers of ``request`` that fit on ``node`` alone (counting no tasks)."""
    capacity = None
    for name, amount in request.per_worker.items():
        if amount > 0:
            here = math.floor(node.get(name, 0.0) / amount + EPSILON)
            capacity = here if capacity is None else min(capacity, here)
    if capacity is None:
        capacity = 1 << 30  # a worker that asks for nothing fits anywhere
    return min(capacity, 1) if request.one_per_node else capacity


def ensure_placeable(
    request: Request,
    *,
    wait_s: float = 0.0,
    local: bool | None = None,
    nodes: Callable[[], list[dict[str, float]]] = alive_nodes,
    report_every_s: float = REPORT_EVERY_S,
    print_to=None,
) -> None:
    """Return once ``request`` fits the cluster; otherwise stop with one line (UserError), at
    once (``wait_s`` 0) or after waiting up to ``wait_s`` seconds for an autoscaler, with a line
    every ``report_every_s``. ``local``: an in-process Ray started by this job (nothing can
    join it: never wait, and suggest ``--num-cpus``); None: whether :func:`init_ray
    <pipelines.ops.ray_runtime.init_ray>` started one."""
    if local is None:
        from pipelines.ops.ray_runtime import started_local_ray

        local = started_local_ray()
    print_to = print_to or sys.stderr
    current = nodes()
    if fits(current, request):
        _note_held_resources(request, current, print_to)
        return
    if local or wait_s <= 0:
        raise UserError(refusal(request, current, local=local))
    _ask_autoscaler(request)
    started = time.monotonic()
    last_line = started
    print(
        f"{request.job}: waiting up to {wait_s:g} s (--wait-for-resources) for the cluster to "
        f"grow: {_asked(request)}; {_has(current, request)}; the autoscaler was asked for it "
        "(--wait-for-resources 0 stops at once)",
        file=print_to,
        flush=True,
    )
    try:
        while True:
            time.sleep(POLL_S)
            current = nodes()
            if fits(current, request):
                waited = time.monotonic() - started
                print(f"{request.job}: the cluster fits after {waited:.0f} s", file=print_to)
                return
            now = time.monotonic()
            if now - started >= wait_s:
                raise UserError(refusal(request, current, local=False, waited=wait_s)) from None
            if now - last_line >= report_every_s:
                last_line = now
                print(
                    f"{request.job}: still waiting for the cluster ({_has(current, request)}; "
                    f"{_asked(request)}); {wait_s - (now - started):.0f} s left",
                    file=print_to,
                    flush=True,
                )
    finally:
        _ask_autoscaler(None)


def _ask_autoscaler(request: Request | None) -> None:
    """Ask an autoscaler for the request's shapes (``None``: withdraw the request; the job's
    own actors and tasks keep the nodes busy from then on). A no-op without one."""
    try:
        from ray.autoscaler.sdk import request_resources

        if request is None:
            request_resources(bundles=[])
            return
        worker = {name: amount for name, amount in request.per_worker.items() if amount > 0}
        bundles = [worker] * request.wanted if worker else []
        if request.task_cpus > 0:
            bundles.append({"CPU": request.task_cpus})
        request_resources(bundles=bundles)
    except Exception:  # noqa: BLE001 - a hint to an autoscaler, never a reason to fail
        pass


def _note_held_resources(request: Request, current, print_to) -> None:
    """One line when the cluster fits the request but other work holds part of it now."""
    try:
        import ray

        free = ray.available_resources()
    except Exception:  # noqa: BLE001
        return
    needed = {name: amount * request.wanted for name, amount in request.per_worker.items()}
    needed["CPU"] = needed.get("CPU", 0.0) + request.task_cpus
    short = [
        f"{_quantity(name, free.get(name, 0.0))} of {_number(_total(current, name))} free"
        if name != "memory"
        else f"{_quantity(name, free.get(name, 0.0))} free"
        for name, amount in needed.items()
        if amount > 0 and free.get(name, 0.0) + EPSILON < amount
    ]
    if short:
        print(
            f"{request.job}: other work holds part of the cluster now ({', '.join(short)}): "
            "the job starts as it frees up",
            file=print_to,
        )


def refusal(request: Request, nodes, *, local: bool, waited: float | None = None) -> str:
    """The one line: what the job asked for, what the cluster has, what to pass instead."""
    suggestions = suggest(request, nodes, local=local)
    where = f"after waiting {waited:g} s, " if waited else ""
    line = f"{where}{_asked(request)}, but {_has(nodes, request)}"
    if suggestions:
        line += "; pass " + " or ".join(suggestions) + " instead"
    if not local and not waited:
        line += (
            "; on a cluster with an autoscaler, --wait-for-resources SECONDS waits for nodes "
            "that fit"
        )
    return line


def suggest(request: Request, nodes, *, local: bool) -> list[str]:
    """Settings that fit ``nodes``, each enough alone: smaller per-worker resources, fewer
    workers, and (for an in-process local Ray) more CPUs where the machine has them."""
    flags = request.flags
    found = []
    smaller, changed = request, []
    gpus = request.per_worker.get("GPU", 0.0)
    most_gpus = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    if gpus > 0 and "GPU" in flags and most_gpus + EPSILON < gpus:
        fewer_gpus = 0.0 if most_gpus < 1 else float(math.floor(most_gpus))
        changed.append(f"{flags['GPU']} {_number(fewer_gpus)}")
        smaller = _with(smaller, GPU=fewer_gpus)
    for name, step in (("memory", GIB / 4), ("CPU", 0.25)):
        if smaller.per_worker.get(name, 0.0) > 0 and name in flags and not fits(nodes, smaller):
            amount = _largest_fitting(smaller, nodes, name, step)
            if amount is not None:
                shown = f"{amount / GIB:g}" if name == "memory" else _number(amount)
                changed.append(f"{flags[name]} {shown}")
                smaller = _with(smaller, **{name: amount})
    if changed and fits(nodes, smaller):
        found.append(" ".join(changed))
    least = request.wanted // request.pools
    flag = flags.get("min_workers" if request.min_workers is not None else "workers")
    if flag and least > 1:
        fewer = next((n for n in range(least - 1, 0, -1) if fits(nodes, _count(request, n))), None)
        if fewer is not None:
            found.append(f"{flag} {fewer}")
    if request.one_per_node and "one_per_node" in flags:
        packed = dataclasses.replace(request, one_per_node=False)
        if fits(nodes, packed):
            found.append(flags["one_per_node"])
    if local:
        needed = math.ceil(_cpus_needed(request) - EPSILON)
        if _total(nodes, "CPU") + EPSILON < needed <= (os.cpu_count() or 1):
            found.append(f"--num-cpus {needed}")
    return found


def _largest_fitting(request: Request, nodes, name: str, step: float) -> float | None:
    """The largest multiple of ``step`` below the requested amount of ``name`` that fits."""
    amount = request.per_worker[name]
    candidate = math.floor((amount - EPSILON) / step) * step
    while candidate > EPSILON:
        if fits(nodes, _with(request, **{name: candidate})):
            return candidate
        candidate -= step
    return None


def _with(request: Request, **amounts: float) -> Request:
    return dataclasses.replace(request, per_worker={**request.per_worker, **amounts})


def _count(request: Request, workers: int) -> Request:
    """``request`` with ``workers`` as the number that must fit."""
    if request.min_workers is not None:
        return dataclasses.replace(request, min_workers=workers)
    return dataclasses.replace(request, workers=workers)


def _cpus_needed(request: Request) -> float:
    return request.per_worker.get("CPU", 0.0) * request.wanted + request.task_cpus


def _asked(request: Request) -> str:
    parts = []
    if request.wanted:
        shape = ", ".join(
            _quantity(name, amount) for name, amount in request.per_worker.items() if amount > 0
        )
        count = request.wanted
        what = f"{count} worker{'s' if count != 1 else ''}"
        if request.min_workers is not None and request.min_workers < request.workers:
            what = f"at least {what} (--min-workers)"
        if request.pools > 1:
            what += f" ({request.pools} pools of {count // request.pools})"
        parts.append(f"{what} of {shape or 'no resources'} each")
        if request.one_per_node:
            parts[-1] += ", one per node"
    if request.task_cpus > 0:
        left = "and " if parts else ""
        parts.append(f"{left}{_quantity('CPU', request.task_cpus)} free on one node for its "
                     f"{request.tasks}")  # fmt: skip
    return f"{request.job} asks for " + " ".join(parts)


def _has(nodes, request: Request | None = None) -> str:
    """What the cluster has, in the resources the request names (CPUs always)."""
    if not nodes:
        return "the cluster has no node alive"
    asked = request.per_worker if request else {}
    names = ["CPU"]
    if asked.get("GPU", 0.0) > 0 or _total(nodes, "GPU") > 0:
        names.append("GPU")
    if asked.get("memory", 0.0) > 0:
        names.append("memory")
    totals = ", ".join(_quantity(name, _total(nodes, name)) for name in names)
    line = f"the cluster has {totals} on {len(nodes)} node{'s' if len(nodes) != 1 else ''}"
    if len(nodes) > 1:
        largest = ", ".join(
            _quantity(name, max(node.get(name, 0.0) for node in nodes)) for name in names
        )
        line += f" (at most {largest} on one)"
    return line


def _total(nodes, name: str) -> float:
    return sum(node.get(name, 0.0) for node in nodes)


def _quantity(name: str, value: float) -> str:
    """``2 CPUs``, ``0.5 CPU``, ``1 GPU``, ``4 GiB memory``."""
    if name == "memory":
        return f"{value / GIB:.1f} GiB memory"
    unit = UNITS.get(name, name)
    return f"{_number(value)} {unit}{'s' if value > 1 or value == 0 else ''}"


def _number(value: float) -> str:
    return f"{round(value, 4):g}"

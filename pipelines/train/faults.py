"""Fault injection for tests only: one Ray Train worker fails once at a given step.

No job setting or flag asks for it. A test sets :data:`FAIL_AT_STEP_ENV` (a step number) in the
driver's environment; the train job passes that variable on to its workers (Ray gives Ray Train
workers none of the driver's environment), and there the last rank raises at that step, once
per run: a marker file in the run folder remembers, so the restarted worker group goes on.
Unset, nothing happens.
"""

from __future__ import annotations

import os

FAIL_AT_STEP_ENV = "ENLIGHTENGAN_TEST_FAIL_AT_STEP"
FAULT_MARKER = ".fault_injected"


def worker_environment() -> dict:
    """The runtime environment that carries the test's fault step to the workers, if any."""
    step = os.environ.get(FAIL_AT_STEP_ENV)
    return {"env_vars": {FAIL_AT_STEP_ENV: step}} if step else {}


def fault_step() -> int | None:
    """The step at which a worker fails, as the test set it; None outside such tests."""
    step = os.environ.get(FAIL_AT_STEP_ENV)
    return int(step) if step else None


def fail_once_at(fail_step: int | None, step: int, rank: int, world: int, run) -> None:
    """Raise on the last rank at ``fail_step``, unless the run's marker says it already did.

    ``run``: the worker's :class:`pipelines.train.worker.RunFiles`."""
    if fail_step != step or rank != world - 1 or run.read_text(FAULT_MARKER):
        return
    run.write(FAULT_MARKER, f"injected at step {step}\n".encode())
    raise RuntimeError(f"injected fault at step {step} ({FAIL_AT_STEP_ENV}, first attempt only)")

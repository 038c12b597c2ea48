"""Transient storage faults: which errors are worth retrying, and how a job that still fails
reports it.

An object store that restarts, throttles or drops a connection answers with errors that a later
attempt does not meet. Those must neither become per-image "unreadable" / "write-error" rows
(a valid image would be lost for this run while the job says it finished) nor stop the job at
the first try: the stages raise them, and Ray Data re-runs the failed task with exponential
backoff (``DataContext.retried_map_errors`` / ``max_map_retries``). A task that re-runs repeats
its writes under the same keys, so a retry duplicates nothing. When the store stays away longer
than the retries last, the job ends with one line saying so; a rerun resumes.
"""

from __future__ import annotations

from pipelines.errors import UserError

# Substrings of the messages the AWS SDK (through pyarrow) and pipelines.io.storage give for a
# store that cannot be reached or is briefly unable to serve.
TRANSIENT_STORAGE_ERRORS = (
    "AWS Error NETWORK_CONNECTION",
    "AWS Error INTERNAL_FAILURE",
    "AWS Error SLOW_DOWN",
    "AWS Error SERVICE_UNAVAILABLE",
    "AWS Error THROTTLING",
    "AWS Error REQUEST_TIMEOUT",
    "HTTP status 500",
    "HTTP status 502",
    "HTTP status 503",
    "HTTP status 504",
    "cannot reach the storage",
    "Could not connect to server",
)
# Ray Data backs off min(2 ** attempt, 32) s times a random factor: about a minute in all.
TASK_RETRIES = 8


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a storage fault a later attempt may not meet."""
    if not isinstance(error, OSError | UserError):
        return False
    message = str(error)
    return any(pattern in message for pattern in TRANSIENT_STORAGE_ERRORS)


def retry_transient_task_errors(context) -> None:
    """Let Ray Data re-run a task that raised a transient storage error, and raise a stage's own
    exception rather than a ``UserCodeException`` (whose cause does not survive the trip to the
    driver, so :func:`storage_failure` could not name it). ``context``: a dataset's own
    ``DataContext`` (``dataset.context``), set before it runs; the driver's stays as it was."""
    context.retried_map_errors = list(TRANSIENT_STORAGE_ERRORS)
    context.max_map_retries = TASK_RETRIES
    context.raise_original_map_exception = True


def root_cause(error: BaseException) -> BaseException:
    """The innermost error: Ray wraps a task's exception (``RayTaskError.cause``), Python chains
    (``__cause__``)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None) or error.__cause__
        if not isinstance(inner, BaseException):
            break
        error = inner
    return error


def storage_failure(job: str, error: BaseException) -> UserError | None:
    """A one-line UserError for a job stopped by storage (unreachable after every retry, disk
    full, permission denied), else ``None`` (a bug keeps its traceback)."""
    cause = root_cause(error)
    if not isinstance(cause, OSError | UserError):
        return None
    if isinstance(cause, OSError) and cause.strerror:
        # Ray adds its retry notes to an OSError's filename: keep the system's own words.
        detail = f"{cause.strerror} (errno {cause.errno})"
    else:
        detail = next((line for line in str(cause).splitlines() if line.strip()), "")
    detail = detail.strip()[:300] or type(cause).__name__
    return UserError(
        f"{job} stopped: storage failed ({detail}); finished work is kept, "
        "rerun the same command to complete it"
    )

"""The command line's shared vocabulary and the typed job specs behind it.

Every flag that several jobs take is defined here once, with one spelling, meaning and default:
``--output``, ``--workers``, ``--gpus-per-worker``, ``--cpus-per-worker``,
``--threads-per-worker``, ``--precision``, ``--backend``, ``--checkpoint``, ``--address``,
the object-storage flags, ``--config``, ``--json``, ``--dry-run``, ``-v`` and ``-q``.

A job's arguments resolve once into a frozen dataclass (its spec, e.g. ``EnhanceJob``) through
:func:`spec_from_args`; functions below the CLI receive that spec, never an argparse namespace.
A spec written as JSON (``--json`` prints it, ``--dry-run`` too) can be fed back in with
``--config``. This module imports nothing heavy (no torch, Ray, pyarrow or numpy), so
``enlightengan --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from enlightengan.shipped_weights import STARTER_NAME
from pipelines.errors import UserError
from pipelines.specs import Spec, SpecError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "onnxruntime")
PRECISION_HELP = (
    "auto: bf16 on GPUs and on CPUs with AMX (native bf16), fp32 elsewhere; bf16/fp16: "
    "autocast, weights stay fp32"
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default, except where it is None, False or already in the text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or action.option_strings == []
            or isinstance(action, argparse._HelpAction)
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class DeprecatedAlias(argparse.Action):
    """An old spelling kept for one release: stores into the new flag's destination and warns
    once on stderr with the spelling to use."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        self.replacement = replacement
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            f"enlightengan: warning: {option_string} is deprecated and will be removed in the "
            f"next release: use {self.replacement}",
            file=sys.stderr,
        )
        if self.nargs == 0:
            values = True if self.const is None else self.const
        setattr(namespace, self.dest, values)


def deprecated_flag(parser, old: str, new: str, dest: str, **kwargs) -> None:
    """Accept ``old`` as a hidden, warning alias of ``new`` (same destination)."""
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, replacement=new, **kwargs)


def add_common_arguments(parser: argparse.ArgumentParser, *, dry_run: str | None) -> None:
    """``--config``, ``--json``, ``-v``/``-q`` and (for jobs that write) ``--dry-run``."""
    group = parser.add_argument_group("run")
    group.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="job settings from a JSON or YAML file (keys are the flags' names with "
        "underscores, e.g. batch_size; the spec that --json or --dry-run prints is such a file); "
        "flags on the command line override it",
    )
    group.add_argument(
        "--json", action="store_true", help="print the resolved spec and the summary as JSON"
    )
    if dry_run:
        group.add_argument("--dry-run", action="store_true", help=dry_run)
    add_verbosity_arguments(group)


def add_verbosity_arguments(parser) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="warnings and errors only",
    )


def add_output_argument(
    parser, help_text: str, *, old: tuple[str, ...] = (), default: str | None = None
) -> None:
    """``--output``; without a default it is required, which the spec checks (so that a
    ``--config`` file can supply it)."""
    parser.add_argument(
        "--output", default=default, help=help_text if default else f"{help_text} (required)"
    )
    for spelling in old:
        deprecated_flag(parser, spelling, "--output", "output")


def add_worker_arguments(
    parser,
    what: str,
    *,
    workers: int = 1,
    cpus_per_worker: float | None = 1.0,
    cpus_help: str = "CPUs each worker reserves",
) -> None:
    """``--workers`` and the per-worker resources, the same for train, enhance and evaluate
    (the spec checks them with :func:`check_worker_resources`)."""
    group = parser.add_argument_group("workers")
    group.add_argument("--workers", type=int, default=workers, help=what)
    group.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        help="GPUs each worker reserves; 0: CPU workers",
    )
    group.add_argument("--cpus-per-worker", type=float, default=cpus_per_worker, help=cpus_help)
    group.add_argument(
        "--threads-per-worker",
        type=int,
        default=None,
        help="torch threads in each worker (default: its share of the cores)",
    )
    group.add_argument(
        "--memory-per-worker",
        type=float,
        default=None,
        metavar="GIB",
        help="memory each worker reserves, in GiB (Ray's memory resource: a node runs only as "
        "many workers as it has memory for); default: none reserved",
    )


GIB = 1024**3


def check_worker_resources(spec) -> None:
    """The per-worker resources of a spec with the :func:`add_worker_arguments` fields."""
    memory = getattr(spec, "memory_per_worker", None)
    if memory is not None and memory <= 0:
        raise SpecError("{memory_per_worker} must be > 0 GiB (leave it out to reserve none)")


def memory_bytes(gib: float | None) -> int | None:
    """``--memory-per-worker`` as Ray's ``memory`` resource (bytes); None: none reserved."""
    return None if gib is None else int(gib * GIB)


def add_precision_arguments(parser, *, backend: str | None = "auto") -> None:
    """``--precision`` (the same meaning and default on train, enhance and evaluate) and, for
    jobs that run the generator for inference, ``--backend``."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    if backend is not None:
        parser.add_argument(
            "--backend",
            choices=BACKENDS,
            default=backend,
            help="runtime of the generator's forward: torch; onnxruntime (CPU, fp32; the "
            "checkpoint's ONNX export, made at start and cached under ~/.cache/enlightengan); "
            "auto: torch on GPUs and on CPUs with AMX (bf16), onnxruntime on other CPUs",
        )


def add_checkpoint_argument(parser, *, required: bool = False) -> None:
    """``--checkpoint``, the same for every job that runs a generator."""
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint dir, training run root (latest complete checkpoint) or s3:// URI; "
        + (
            "(required)"
            if required
            else f"'{STARTER_NAME}' or nothing: the starter model shipped in the package (a "
            f"local folder called {STARTER_NAME} is ./{STARTER_NAME})"
        ),
    )


def add_storage_arguments(parser) -> None:
    """``--endpoint-url`` / ``--profile`` / ``--region`` (never credentials: those stay in the
    environment or the profile file, not on a command line)."""
    group = parser.add_argument_group("object storage")
    group.add_argument(
        "--endpoint-url",
        default=None,
        help="S3 endpoint, e.g. http://127.0.0.1:8333 (default: $AWS_ENDPOINT_URL_S3, "
        "$AWS_ENDPOINT_URL or the profile's endpoint_url, else AWS)",
    )
    group.add_argument(
        "--profile",
        default=None,
        help="AWS profile from ~/.aws/config or ~/.aws/credentials: keys, SSO, role or "
        "credential_process (default: $AWS_PROFILE, else the SDK's default chain)",
    )
    group.add_argument(
        "--region",
        default=None,
        help="S3 region (default: $AWS_REGION, $AWS_DEFAULT_REGION or the profile's, else us-east-1)",
    )
    group.add_argument(
        "--credentials-file",
        default=None,
        help="AWS shared-credentials file the profile is read from (default: "
        "$AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials); it holds the keys, the job "
        "keeps only its path (a path on the machines that run the job)",
    )


def add_ray_arguments(parser) -> None:
    """``--address`` (the Ray cluster, in every job) and ``--num-cpus`` (local Ray only)."""
    group = parser.add_argument_group("Ray")
    group.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (e.g. ray://HEAD:10001 or auto); default: $RAY_ADDRESS, "
        "else an in-process local Ray",
    )
    group.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs for an in-process local Ray (default: all cores); ignored with --address",
    )
    group.add_argument(
        "--wait-for-resources",
        type=float,
        default=DEFAULT_WAIT_FOR_RESOURCES_S,
        metavar="SECONDS",
        help="when a joined cluster cannot place the job's workers (and keep a CPU for its own "
        "tasks) yet: wait up to SECONDS for nodes that fit, as an autoscaler adds them (it is "
        "asked for them; a line every 30 s), then stop with what to pass instead; 0 stops at "
        f"once (default {DEFAULT_WAIT_FOR_RESOURCES_S:g}: clusters that scale from zero workers "
        "need it). An in-process local Ray never waits",
    )


def load_config_file(path: str) -> dict[str, Any]:
    """The settings in a ``--config`` file: a JSON or YAML mapping, or the ``spec`` of one."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as error:
        raise UserError(f"--config {path}: {error.strerror or error}") from None
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ValueError as error:
        raise UserError(f"--config {path} is not valid JSON or YAML: {error}") from None
    if isinstance(data, Mapping) and isinstance(data.get("spec"), Mapping):
        data = data["spec"]
    if not isinstance(data, Mapping):
        raise UserError(f"--config {path} must hold a mapping of settings")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def spec_from_args(
    spec_type: type,
    args: argparse.Namespace,
    job: str,
    flag_of: Callable[[str], str] | None = None,
):
    """The frozen spec ``spec_type`` from parsed arguments (fields by name); a field without
    a default that is still unset, or a bad value (:class:`~pipelines.specs.SpecError`), is a
    one-line error naming the flag (``flag_of(field)``; default ``--`` and the name with
    dashes)."""
    flag_of = flag_of or default_flag
    values = {}
    for field in dataclasses.fields(spec_type):
        value = getattr(args, field.name, None)
        required = field.default is dataclasses.MISSING and (
            field.default_factory is dataclasses.MISSING
        )
        if value is None and required:
            flag = flag_of(field.name)
            raise UserError(f"{job} needs {flag} (or `{field.name}:` in a --config file)")
        if value is None and not required:
            continue
        if isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    try:
        return spec_type(**values)
    except SpecError as error:
        raise UserError(error.render(flag_of)) from None
    except TypeError as error:
        raise UserError(f"{job}: {error}") from None


def default_flag(field: str) -> str:
    """The flag of a spec field: ``--`` and its name with dashes (``--batch-size``)."""
    return "--" + field.replace("_", "-")


def spec_as_dict(spec) -> dict[str, Any]:
    """The spec as plain JSON values, in field order (what ``--config`` reads back)."""
    return {field.name: json_value(getattr(spec, field.name)) for field in dataclasses.fields(spec)}


def json_value(value, nonfinite_as_none: bool = False):
    """``value`` as plain JSON data: tuples and lists as lists (recursively), numpy scalars as
    Python numbers; with ``nonfinite_as_none``, NaN and the infinities as None (JSON has none)."""
    if isinstance(value, tuple | list):
        return [json_value(item, nonfinite_as_none) for item in value]
    # Only an imported numpy makes numpy scalars, and the CLI imports this module without it.
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic):
        value = value.item()
    if nonfinite_as_none and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class StorageFields(Spec):
    """The object-storage flags of a job's spec (never credentials)."""

    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    credentials_file: str | None = None


# A joined cluster short of nodes is given this long to grow (autoscalers start nodes in
# minutes); train's --wait-for-workers has the same default.
DEFAULT_WAIT_FOR_RESOURCES_S = 600.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RayFields(Spec):
    """The Ray flags of a job's spec: the cluster to join, or the cores of a local Ray, and how
    long to wait for a cluster too small for the job to grow (:mod:`pipelines.ops.resources`)."""

    address: str | None = None
    num_cpus: int | None = None
    wait_for_resources: float = DEFAULT_WAIT_FOR_RESOURCES_S


def storage_of(spec: StorageFields):
    """The :class:`~pipelines.io.storage.StorageOptions` of a spec's storage fields."""
    from pipelines.io.storage import StorageOptions

    return StorageOptions(spec.endpoint_url, spec.profile, spec.region, spec.credentials_file)


@dataclasses.dataclass
class Summary:
    """What a job returns to Python callers and the CLI: its exit code (0: done; 1: done, with
    failures reported in ``data``), its figures as plain JSON values, and ``text``, the same
    result written for people, which the CLI prints (``--json`` prints ``data`` instead). A job
    prints nothing on stdout itself; its progress goes to stderr."""

    job: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    exit_code: int = 0
    text: str = dataclasses.field(default="", repr=False)

    def as_json(self, spec=None) -> str:
        document = {"job": self.job, "exit_code": self.exit_code, "summary": self.data}
        if spec is not None:
            document["spec"] = spec_as_dict(spec)
        return json.dumps(document, indent=2, sort_keys=False, default=str)

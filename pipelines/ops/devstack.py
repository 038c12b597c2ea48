"""A local dev stack on loopback: one Ray head (with its job server) and one SeaweedFS S3 server.

``enlightengan dev start`` starts both, each detached in its own session, records their PIDs and
ports in a state file, and prints the ``export`` lines that point ``enlightengan submit``,
``ray job`` and the S3 clients at them: ``--address`` then works exactly as against a remote
cluster. ``dev stop`` stops them by PID; ``dev status`` says what runs.

The S3 credentials are random per stack. They go into the Ray head's own environment (the
"environment of the cluster", inherited by every submitted job), never into a job. The secret is
written to a 0600 file and never printed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.errors import UserError
from pipelines.ops.local_services import (
    LONGEST_RAY_TEMP_DIR,
    ObjectStore,
    RayHead,
    create_bucket,
    process_mentions,
    start_object_store,
    start_ray_head,
    stop_process,
    stop_processes,
    write_private,
)

STATE_FILE_NAME = "devstack.json"
# After jobs ran, Ray's GCS and autoscaler monitor can sit on SIGTERM for long; the dev
# stack keeps nothing in them (`ray stop` also escalates after its grace period). SeaweedFS
# holds the data: give it time to flush.
RAY_STOP_GRACE_SECONDS = 10.0
S3_STOP_GRACE_SECONDS = 30.0


def default_state_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "enlightengan" / "devstack"


@dataclass
class DevStack:
    ray: RayHead
    s3: ObjectStore
    bucket: str

    def exports(self) -> list[str]:
        """Shell lines pointing clients at the stack; the secret stays in its file."""
        return [
            f"export RAY_ADDRESS={self.ray.gcs_address}",
            f"export RAY_API_SERVER_ADDRESS={self.ray.dashboard_url}",
            f"export AWS_ENDPOINT_URL={self.s3.endpoint_url}",
            f"export AWS_REGION={self.s3.region}",
            f"export AWS_ACCESS_KEY_ID={self.s3.access_key_id}",
            f'export AWS_SECRET_ACCESS_KEY="$(cat {self.s3.secret_file})"',
        ]

    def save(self, state_dir: Path) -> None:
        write_private(state_dir / STATE_FILE_NAME, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> DevStack | None:
        path = state_dir / STATE_FILE_NAME
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        return cls(
            ray=RayHead(**state["ray"]), s3=ObjectStore(**state["s3"]), bucket=state["bucket"]
        )

    def running(self) -> dict[str, bool]:
        return {
            "ray": process_mentions(self.ray.pid, self.ray.temp_dir),
            "s3": process_mentions(self.s3.pid, self.s3.directory),
        }


def ray_temp_dir(state_dir: Path) -> Path:
    """``state_dir/ray`` when short enough for Ray's socket paths, else a fresh dir in /tmp
    (removed by ``stop``)."""
    inside = state_dir / "ray"
    if len(str(inside)) <= LONGEST_RAY_TEMP_DIR:
        return inside
    return Path(tempfile.mkdtemp(prefix="egan-ray-", dir="/tmp"))


def start(state_dir: Path, num_cpus: int = 2, bucket: str = "enlightengan") -> DevStack:
    state_dir = Path(state_dir)
    existing = DevStack.load(state_dir)
    if existing and any(existing.running().values()):
        raise UserError(f"a dev stack already runs from {state_dir}: `enlightengan dev stop` first")
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    store = start_object_store(state_dir / "seaweedfs")
    try:
        create_bucket(store, bucket)
        head = start_ray_head(
            ray_temp_dir(state_dir), num_cpus=num_cpus, extra_env=store.environment()
        )
    except BaseException:
        stop_process(store.pid, store.directory)
        raise
    stack = DevStack(ray=head, s3=store, bucket=bucket)
    stack.save(state_dir)
    return stack


def stop(state_dir: Path) -> list[str]:
    """Stop both processes by PID; returns the names of those that were running."""
    stack = DevStack.load(Path(state_dir))
    if stack is None:
        return []
    stopped_pids = stop_processes(
        [
            (stack.ray.pid, stack.ray.temp_dir, RAY_STOP_GRACE_SECONDS),
            (stack.s3.pid, stack.s3.directory, S3_STOP_GRACE_SECONDS),
        ]
    )
    stopped = [
        name for name, pid in (("ray", stack.ray.pid), ("s3", stack.s3.pid)) if pid in stopped_pids
    ]
    if Path(stack.ray.temp_dir) != Path(state_dir) / "ray":
        shutil.rmtree(stack.ray.temp_dir, ignore_errors=True)
    (Path(state_dir) / STATE_FILE_NAME).unlink()
    return stopped


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status", "env"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"where PIDs, ports, data and logs live (default {default_state_dir()})",
    )
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs the Ray head offers")
    parser.add_argument("--bucket", default="enlightengan", help="bucket created at start")


def run(args) -> int:
    state_dir = args.state_dir or default_state_dir()
    if args.action == "start":
        stack = start(state_dir, num_cpus=args.num_cpus, bucket=args.bucket)
        print(f"# dev stack up (state in {state_dir}); bucket s3://{stack.bucket}")
        print(f"# Ray dashboard and job server: {stack.ray.dashboard_url}")
        print("\n".join(stack.exports()))
        return 0
    if args.action == "stop":
        stopped = stop(state_dir)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    stack = DevStack.load(state_dir)
    if stack is None:
        print(f"no dev stack recorded in {state_dir}", file=sys.stderr)
        return 3
    running = stack.running()
    if args.action == "env":
        print("\n".join(stack.exports()))
    else:
        print(f"ray {'running' if running['ray'] else 'stopped'}: {stack.ray.dashboard_url}")
        print(f"s3  {'running' if running['s3'] else 'stopped'}: {stack.s3.endpoint_url}")
    return 0 if all(running.values()) else 3

"""Long-running local services on loopback, each started detached in a session of its own and
stopped by PID with that whole session: a Ray head with its job server (``ray start --head
--block``) and a SeaweedFS object store (``weed mini``, S3 API) with random credentials.

Used by ``enlightengan dev`` (pipelines/ops/devstack.py); test fixtures can start the same services.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import UserError

GRPC_PORT_OFFSET = 10000
SECRET_FILE_NAME = "aws_secret_access_key"
DEFAULT_REGION = "us-east-1"
# Ray puts AF_UNIX sockets (107 bytes at most) under <temp>/session_<date>_<pid>/sockets/.
LONGEST_RAY_TEMP_DIR = 32


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, with_grpc_twin: bool = False) -> list[int]:
    """Distinct free loopback ports; with ``with_grpc_twin`` port + 10000 is free too (SeaweedFS
    opens its gRPC listener there)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = 20000 + secrets.randbelow(20000)
        wanted = (port, port + GRPC_PORT_OFFSET) if with_grpc_twin else (port,)
        taken = {p for c in chosen for p in (c, c + GRPC_PORT_OFFSET)}
        if taken.intersection(wanted) or not all(_port_is_free(p) for p in wanted):
            continue
        chosen.append(port)
    return chosen


def _executable(name: str) -> str:
    """A console script installed beside this Python (the virtualenv), else on PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if not found:
        raise UserError(f"'{name}' not found beside {sys.executable} or on PATH: install it")
    return found


def _wait_for_http(url: str, process: subprocess.Popen, what: str, log: Path, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"{what} exited with {process.returncode}: see {log}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            time.sleep(0.2)
    stop_process(process.pid, str(log.parent))
    raise UserError(f"{what} not ready after {timeout:.0f}s: see {log}")


def process_mentions(pid: int, marker: str) -> bool:
    """Whether ``pid`` is alive and its command line contains ``marker``: a PID the kernel has
    since given to another program is never signalled."""
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return marker.encode() in command_line


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name: state, ppid, pgrp, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()


def _is_zombie(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] == "Z"
    except (OSError, IndexError):
        return True


def session_members(session: int) -> list[int]:
    """Live processes of session ``session`` (Ray's workers change process group, not session)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry.name))
        except (OSError, IndexError):
            continue
        if fields[3] == str(session) and fields[0] != "Z":
            members.append(int(entry.name))
    return members


KILL_WAIT_SECONDS = 30.0


def stop_processes(processes: list[tuple[int, str, float]]) -> list[int]:
    """Stop each ``(pid, marker, grace_seconds)`` whose command line names ``marker`` (a
    recycled PID is never signalled), with the session it leads: every stack process starts a
    session of its own, so the session holds our processes only (Ray's GCS, raylet, dashboard,
    workers...). SIGTERM to all, then SIGKILL to what is left after its grace period.
    Returns the PIDs that were running."""
    running = [(pid, grace) for pid, marker, grace in processes if process_mentions(pid, marker)]
    session_leaders = {pid for pid, _ in running if os.getsid(pid) == pid}

    def leftovers(pid: int) -> set[int]:
        members = set(session_members(pid)) if pid in session_leaders else set()
        return members | ({pid} if not _is_zombie(pid) else set())

    started = time.monotonic()
    for pid, _ in running:
        for member in leftovers(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGTERM)
    pending = list(running)
    while pending:
        time.sleep(0.1)
        still = []
        for pid, grace in pending:
            left = leftovers(pid)
            elapsed = time.monotonic() - started
            if left and elapsed > grace:
                for member in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(member, signal.SIGKILL)
            # Until the killed processes are gone too (a loaded machine takes its time).
            if left and elapsed <= grace + KILL_WAIT_SECONDS:
                still.append((pid, grace))
        pending = still
    return [pid for pid, _ in running]


def stop_process(pid: int, marker: str, grace: float = 30.0) -> bool:
    """Stop one process as :func:`stop_processes` does; returns whether it was running."""
    return bool(stop_processes([(pid, marker, grace)]))


@dataclass
class RayHead:
    """A ``ray start --head --block`` process: SIGTERM to ``pid`` stops every Ray process."""

    pid: int
    gcs_address: str
    dashboard_url: str
    temp_dir: str


def start_ray_head(
    temp_dir: Path,
    num_cpus: int = 2,
    extra_env: dict[str, str] | None = None,
    timeout=180.0,
    extra_args: list[str] | None = None,
    gcs_port: int | None = None,
) -> RayHead:
    """Start a Ray head with its job server, every listener on 127.0.0.1 and on a free port.

    ``extra_env`` is the cluster's environment: every submitted job inherits it (credentials
    for object storage go here, never into a job's runtime_env). Token auth is off
    (``RAY_AUTH_MODE=disabled``): nothing but this machine can reach the loopback listeners.
    ``extra_args`` go to ``ray start`` as they are (e.g. ``--autoscaling-config=FILE``);
    ``gcs_port`` fixes the GCS port where a config written beforehand must name it."""
    temp_dir = Path(temp_dir)
    if len(str(temp_dir)) > LONGEST_RAY_TEMP_DIR:
        raise UserError(f"Ray temp dir {temp_dir} is too long for Ray's sockets: use a short path")
    temp_dir.mkdir(parents=True, exist_ok=True)
    ports = _head_ports(gcs_port)
    env = _head_environment(ports, timeout, extra_env)
    command = _ray_start_command(ports, num_cpus, temp_dir, extra_args)
    log = temp_dir / "ray-start.log"
    process = _start_logged(command, log, env)
    head = RayHead(
        pid=process.pid,
        gcs_address=f"127.0.0.1:{ports[0]}",
        dashboard_url=f"http://127.0.0.1:{ports[1]}",
        temp_dir=str(temp_dir),
    )
    _wait_for_http(f"{head.dashboard_url}/api/version", process, "ray head", log, timeout)
    _wait_for_job_agent(head, process, log, timeout)
    return head


def _head_ports(gcs_port: int | None) -> list[int]:
    """Eleven free ports for the head's listeners: GCS (``gcs_port`` when given), dashboard,
    client server, agent (listen, gRPC), runtime-env agent, metrics export, node manager,
    object manager, and the autoscaler's and dashboard's metrics."""
    ports = free_ports(11)
    while gcs_port is not None and gcs_port in ports:
        ports = free_ports(11)
    if gcs_port is not None:
        ports[0] = gcs_port
    return ports


def _head_environment(
    ports: list[int], timeout: float, extra_env: dict[str, str] | None
) -> dict[str, str]:
    """The head's environment: this one without AWS and Ray settings, then the head's own,
    then ``extra_env``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        # A loaded machine can be slow to start the dashboard's modules: they get the head's timeout.
        RAY_DASHBOARD_STARTUP_TIMEOUT_S=str(int(timeout)),
        AUTOSCALER_METRIC_PORT=str(ports[9]),
        DASHBOARD_METRIC_PORT=str(ports[10]),
        # Ray's own helpers inside actors (Train's state API calls) look the cluster up by
        # RAY_ADDRESS, else by scanning for GCS processes, which fails when this machine runs
        # other Ray instances too.
        RAY_ADDRESS=f"127.0.0.1:{ports[0]}",
        # Entrypoints say `python` / `enlightengan`: they must resolve to this environment.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    env.update(extra_env or {})
    return env


def _ray_start_command(
    ports: list[int], num_cpus: int, temp_dir: Path, extra_args: list[str] | None
) -> list[str]:
    """``ray start --head --block`` with every listener on 127.0.0.1 at ``ports``."""
    return [
        _executable("ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--port={ports[0]}",
        f"--dashboard-port={ports[1]}",
        f"--ray-client-server-port={ports[2]}",
        f"--dashboard-agent-listen-port={ports[3]}",
        f"--dashboard-agent-grpc-port={ports[4]}",
        f"--runtime-env-agent-port={ports[5]}",
        f"--metrics-export-port={ports[6]}",
        f"--node-manager-port={ports[7]}",
        f"--object-manager-port={ports[8]}",
        f"--num-cpus={num_cpus}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *(extra_args or []),
    ]


def _wait_for_job_agent(head: RayHead, process: subprocess.Popen, log: Path, timeout: float):
    """The dashboard answers before the head's agent can run jobs: wait for the agent too."""
    url = f"{head.dashboard_url}/api/v0/nodes?detail=1"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"ray head exited with {process.returncode}: see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                nodes = json.load(response)["data"]["result"]["result"]
            if any(node.get("state") == "ALIVE" for node in nodes):
                return
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.3)
    stop_process(process.pid, str(log.parent))
    raise UserError(f"ray head agent not ready after {timeout:.0f}s: see {log}")


@dataclass
class ObjectStore:
    """A ``weed mini`` process: S3 gateway with one identity (secret kept in a 0600 file)."""

    pid: int
    endpoint_url: str
    access_key_id: str
    secret_file: str
    directory: str
    region: str = DEFAULT_REGION

    def environment(self) -> dict[str, str]:
        """The standard AWS variables a client (or the Ray head) needs to reach this store."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": Path(self.secret_file).read_text().strip(),
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
        }


def _start_logged(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``command`` in its own session (so stopping it by PID takes its children too),
    stdin closed, stdout and stderr into ``log``."""
    with open(log, "wb") as log_file:
        return subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def seaweed_identity(directory: Path) -> tuple[str, str, Path]:
    """A random access key and secret, written as SeaweedFS's ``s3.json`` (mode 0600) in
    ``directory``: (access key, secret key, config path)."""
    access_key = "AK" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    identity = {"accessKey": access_key, "secretKey": secret_key}
    config = {
        "identities": [
            {
                "name": "dev",
                "credentials": [identity],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    config_path = Path(directory) / "s3.json"
    write_private(config_path, json.dumps(config))
    return access_key, secret_key, config_path


def seaweed_command(directory: Path, config_path: Path) -> tuple[list[str], int]:
    """The ``weed mini`` command line for a store in ``directory`` on free loopback ports
    (every listener on 127.0.0.1), and its S3 port."""
    directory = Path(directory)
    master, volume, filer, admin, s3 = free_ports(5, with_grpc_twin=True)
    command = [
        _executable("weed"),
        f"-logdir={directory / 'logs'}",
        "mini",
        f"-dir={directory / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-admin.port={admin}",
        f"-s3.port={s3}",
        f"-filer.localSocket={directory / 'filer.sock'}",
        f"-s3.localSocket={directory / 's3.sock'}",
        f"-s3.config={config_path}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
    ]
    return command, s3


def start_object_store(directory: Path, timeout: float = 30.0) -> ObjectStore:
    """Start SeaweedFS (``weed mini``) under ``directory`` on free loopback ports.

    Credentials are random and always configured: without them SeaweedFS accepts anonymous
    writes. Data lives in ``directory/data`` and survives a restart on the same directory."""
    directory = Path(directory)
    for sub in ("data", "logs"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    access_key, secret_key, config_path = seaweed_identity(directory)
    secret_file = directory / SECRET_FILE_NAME
    write_private(secret_file, secret_key)
    command, s3 = seaweed_command(directory, config_path)
    log = directory / "logs" / "weed.out"
    process = _start_logged(
        command, log, {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    )
    store = ObjectStore(
        pid=process.pid,
        endpoint_url=f"http://127.0.0.1:{s3}",
        access_key_id=access_key,
        secret_file=str(secret_file),
        directory=str(directory),
    )
    _wait_for_http(store.endpoint_url + "/", process, "SeaweedFS", log, timeout)
    return store


def create_bucket(store: ObjectStore, name: str, timeout: float = 15.0) -> None:
    """Create ``name`` (idempotent); right after start the filer may still be joining."""
    from pyarrow import fs

    credentials = store.environment()
    filesystem = fs.S3FileSystem(
        access_key=credentials["AWS_ACCESS_KEY_ID"],
        secret_key=credentials["AWS_SECRET_ACCESS_KEY"],
        endpoint_override=store.endpoint_url.removeprefix("http://"),
        scheme="http",
        region=store.region,
        allow_bucket_creation=True,
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            filesystem.create_dir(name)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)

"""``ray up`` and ``ray down`` themselves, run for real on this machine: Ray's cluster launcher
reaches the head over SSH, copies its files with rsync, runs cluster/aws.yaml's head setup and
start commands there, and ``ray down`` stops it again.

What cannot be had here is replaced, and only that: no EC2 (``provider: type: local``, the
launcher's on-premise provider, with 127.0.0.1 as the head and no worker machines), no Docker
image registry (aws.yaml's ``docker:`` section is left out), and no SSH server listening: the
SSH client's ProxyCommand starts ``sshd -i`` (inetd mode: one server per connection on the
client's pipes, no port). That sshd runs inside a PID and mount namespace of the test's own,
where root's home is a temporary folder, so the launcher's ``ray stop`` (aws.yaml's and ``ray
down``'s, which stop every Ray process they can see) and its files in ``~`` reach only this
cluster; killing the namespace's first process ends whatever is left in it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from getpass import getuser
from pathlib import Path

import pytest
import yaml

from pipelines.demo.sample_photos import darken, encode, fit_within, wheel_photo
from pipelines.ops.local_services import free_ports
from tests.fixtures.system_packages import apt_install, require

pytestmark = [pytest.mark.heavy, pytest.mark.timeout(900)]

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
VENV_BIN = Path(sys.executable).parent
SSHD = "/usr/sbin/sshd"
# Debian packages of the programs the launcher and this test run.
TOOLS = {SSHD: "openssh-server", "ssh": "openssh-client", "rsync": "rsync"}


def missing_tools() -> list[str]:
    return [
        package
        for program, package in TOOLS.items()
        if not (os.path.exists(program) if program.startswith("/") else shutil.which(program))
    ]


def ssh_tools() -> str:
    """ "" when sshd, ssh and rsync are there (installed with apt-get when missing and the tests
    run as root), else why not."""
    missing = missing_tools()
    if not missing:
        return ""
    why_not = apt_install(missing)
    return why_not or ("" if not missing_tools() else f"apt-get left {missing_tools()} missing")


REAPER = """import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


class NamespacedHost:
    """127.0.0.1 as the machine ``ray up`` configures: processes that SSH starts live in a PID
    and mount namespace of their own, where root's home is a temporary folder."""

    def __init__(self, directory: Path, environment: dict[str, str]):
        self.directory = directory
        self.home = directory / "home"
        (self.home / ".ssh").mkdir(parents=True)
        self.key = directory / "key"
        for key in (self.key, directory / "host_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
            )
        shutil.copy(f"{self.key}.pub", self.home / ".ssh/authorized_keys")
        # Sourced by every command the launcher runs (bash -c over SSH, and its own
        # "source ~/.bashrc"): this checkout's Python and Ray first, and the cluster's settings.
        exports = {"PATH": f"{VENV_BIN}:$PATH", **environment}
        (self.home / ".bashrc").write_text(
            "".join(f'export {name}="{value}"\n' for name, value in exports.items())
        )
        (directory / "sshd_config").write_text(
            f"HostKey {directory / 'host_key'}\n"
            f"AuthorizedKeysFile {self.home / '.ssh/authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
            "LogLevel ERROR\n"
        )
        # Root's home, as sshd and rsync find it, is self.home in the namespace: a copy of
        # /etc/passwd that says so is mounted over it there (/root itself stays, as it may hold
        # this Python).
        entries = []
        for line in Path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == "root":
                fields[5] = str(self.home)
            entries.append(":".join(fields))
        (directory / "passwd").write_text("\n".join(entries) + "\n")
        # The namespace's first process adopts every orphan there (Ray daemonises): it must
        # reap them, or stopped processes stay as zombies.
        script = (
            f"mount --bind {directory / 'passwd'} /etc/passwd && mkdir -p /run/sshd && "
            f"exec {sys.executable} -c '{REAPER}'"
        )
        self.unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--propagation", "private",
             "bash", "-c", script],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.init_pid = self._first_child(self.unshare.pid)
        self.namespace = os.readlink(f"/proc/{self.init_pid}/ns/pid")

    @staticmethod
    def _first_child(pid: int, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children and "os.wait()" in Path(f"/proc/{children[0]}/cmdline").read_text():
                return int(children[0])
            time.sleep(0.05)
        raise RuntimeError("the namespace did not start")

    @property
    def proxy_command(self) -> str:
        return (
            f"nsenter --target {self.init_pid} --pid --mount "
            f"{SSHD} -i -f {self.directory / 'sshd_config'}"
        )

    def members(self) -> list[int]:
        """Processes in the namespace other than its first one."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self.init_pid:
                try:
                    if os.readlink(entry / "ns/pid") == self.namespace:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def command_lines(self) -> list[str]:
        lines = []
        for pid in self.members():
            try:
                lines.append(
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
            except OSError:
                continue
        return lines

    def stop(self) -> None:
        """SIGKILL to the namespace's first process ends every process in the namespace."""
        if self.unshare.poll() is None:
            os.kill(self.init_pid, 9)
            self.unshare.wait(timeout=30)


def launcher_config(aws: dict, name: str, host: NamespacedHost, ports: dict, temp_dir: str):
    """aws.yaml for the on-premise provider: its commands as they are, except that the head's
    fixed ports become free loopback ones and every listener is named 127.0.0.1."""
    config = {
        key: value
        for key, value in aws.items()
        if key not in ("docker", "available_node_types", "head_node_type")
    }
    start = [command for command in aws["head_start_ray_commands"] if "ray start" in command]
    assert (
        len(start) == 1 and "--port=6379" in start[0] and "--object-manager-port=8076" in start[0]
    )
    loopback = " ".join(f"--{flag}={port}" for flag, port in ports.items() if flag != "port")
    started = start[0].replace("--port=6379", f"--port={ports['port']}")
    started = re.sub(r"--object-manager-port=\d+ ", "", started)
    started += f" --node-ip-address=127.0.0.1 {loopback} --num-cpus=2 --temp-dir={temp_dir}"
    config.update(
        cluster_name=name,
        max_workers=0,
        provider={"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
        auth={
            "ssh_user": "root",
            "ssh_private_key": str(host.key),
            "ssh_proxy_command": host.proxy_command,
        },
        head_start_ray_commands=[
            started if command == start[0] else command
            for command in aws["head_start_ray_commands"]
        ],
    )
    return config


def ray_cli(*argv: str, home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Ray's own CLI from a shell without AWS or Ray variables; ``~`` is ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env.update(HOME=str(home), RAY_AUTH_MODE="disabled")
    return subprocess.run(
        [str(VENV_BIN / "ray"), *argv], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_ray_up_starts_the_aws_yaml_head_over_ssh_and_ray_down_stops_it(tmp_path):
    require(ssh_tools(), "sshd, ssh and rsync")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("coffee", "rocket"):
        pixels = darken(fit_within(wheel_photo(name), 160, 120))
        (photos / f"{name}.jpg").write_bytes(encode(pixels, "JPEG", quality=90))

    names = ["port", "object-manager-port", "dashboard-port", "ray-client-server-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port", "node-manager-port"]  # fmt: skip
    chosen = free_ports(len(names) + 2)
    ports = dict(zip(names, chosen, strict=False))
    environment = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "AUTOSCALER_METRIC_PORT": str(chosen[-2]),
        "DASHBOARD_METRIC_PORT": str(chosen[-1]),
    }
    # Short: Ray's socket paths must fit in 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="rup", dir="/tmp"))
    name = f"eg-up-{directory.name[3:].lower()}"
    host = NamespacedHost(directory, environment)
    client_home = directory / "client"
    client_home.mkdir()
    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    config = launcher_config(aws, name, host, ports, str(directory / "r"))
    config_path = directory / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(config))
    dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        up = ray_cli("up", "-y", "--no-config-cache", "--disable-usage-stats", str(config_path),
                     home=client_home)  # fmt: skip
        assert up.returncode == 0, (up.stdout + up.stderr)[-5000:]
        # The launcher ran aws.yaml's head setup (boto3 for the autoscaler) over SSH, and put
        # its config in the head's home.
        assert "boto3" in up.stdout + up.stderr
        assert (host.home / "ray_bootstrap_config.yaml").exists()

        status = ray_cli("exec", str(config_path), "ray status", home=client_home)
        assert status.returncode == 0, status.stderr[-3000:]
        assert "local.cluster.node" in status.stdout, status.stdout[-3000:]

        job = ray_cli(
            "job", "submit", "--address", dashboard, "--",
            "python", "-m", "pipelines.cli", "enhance", "--checkpoint", "starter",
            "--input", str(photos), "--output", str(tmp_path / "enhanced"),
            home=client_home,
        )  # fmt: skip
        logs = job.stdout + job.stderr
        assert job.returncode == 0, logs[-4000:]
        assert "enhanced: 2  skipped: 0  failed: 0" in logs
        assert {p.name for p in (tmp_path / "enhanced").glob("*.jpg")} == {
            "coffee.jpg",
            "rocket.jpg",
        }

        members = set(host.members())
        listening = subprocess.run(
            ["ss", "-ltnpH"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        ours = [
            line.split()[3]
            for line in listening
            if members & {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        ]
        assert f"127.0.0.1:{ports['dashboard-port']}" in ours
        assert [a for a in ours if not a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:"))] == []

        down = ray_cli("down", "-y", str(config_path), home=client_home)
        assert down.returncode == 0, (down.stdout + down.stderr)[-3000:]
        deadline = time.monotonic() + 60
        while host.members() and time.monotonic() < deadline:
            time.sleep(0.5)
        # ray down's `ray stop` ended every Ray process the head had.
        assert host.command_lines() == []
    finally:
        host.stop()
        # The launcher's own files on this side: the provider's state and SSH's control folder.
        for leftover in (f"/tmp/cluster-{name}.state", f"/tmp/cluster-{name}.lock"):
            Path(leftover).unlink(missing_ok=True)
        user, cluster = (hashlib.sha256(s.encode()).hexdigest()[:10] for s in (getuser(), name))
        control = Path(f"/tmp/ray_ssh_{user}")
        shutil.rmtree(control / cluster, ignore_errors=True)
        with contextlib.suppress(OSError):
            control.rmdir()
        shutil.rmtree(directory, ignore_errors=True)

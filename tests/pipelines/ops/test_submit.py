"""``enlightengan dev`` and ``enlightengan submit`` against a real Ray head.

One dev stack per module (``enlightengan dev start``): a real ``ray start --head`` with its job
server and a real SeaweedFS, both on loopback, separate from the in-process ``ray_local``. Its
S3 credentials live only in the Ray head's environment (the cluster's environment); this test
process also holds them in its own environment while submitting, so a leak into the job's
entrypoint, metadata or runtime_env would be seen. Nothing here calls ``ray.init``: job
submission is HTTP.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyarrow import fs

from enlightengan.config import tiny_config
from pipelines.cli import main
from pipelines.ops.devstack import DevStack
from pipelines.ops.local_services import session_members
from pipelines.ops.submit import forwarded_arguments
from tests.fixtures.photos import upload_folder
from tests.fixtures.seaweed import all_keys, botocore_client

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[3]


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("devstack")
    code, out, err = run_cli("dev", "start", "--state-dir", str(state_dir), "--num-cpus", "2")
    assert code == 0, err
    loaded = DevStack.load(state_dir)
    try:
        yield loaded, state_dir, out
    finally:
        code, out, _ = run_cli("dev", "stop", "--state-dir", str(state_dir))
        assert code == 0 and "ray" in out and "s3" in out
        assert not any(loaded.running().values())
        # Every process of both sessions is gone: Ray's GCS, raylet, dashboard and workers too.
        assert session_members(loaded.ray.pid) == [] and session_members(loaded.s3.pid) == []


@pytest.fixture
def cluster_env(stack, monkeypatch):
    """This process's environment as `eval "$(enlightengan dev env)"` would set it."""
    loaded, _, _ = stack
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in loaded.s3.environment().items():
        monkeypatch.setenv(name, value)
    return loaded


def bucket_filesystem(loaded: DevStack) -> fs.S3FileSystem:
    credentials = loaded.s3.environment()
    return fs.S3FileSystem(
        access_key=credentials["AWS_ACCESS_KEY_ID"],
        secret_key=credentials["AWS_SECRET_ACCESS_KEY"],
        endpoint_override=loaded.s3.endpoint_url.removeprefix("http://"),
        scheme="http",
        region=loaded.s3.region,
    )


def stack_pids(root_pid: int) -> set[int]:
    """``root_pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, pending = set(), [root_pid]
    while pending:
        pid = pending.pop()
        found.add(pid)
        pending.extend(children.get(pid, []))
    return found


def test_dev_stack_listens_on_loopback_only_and_never_prints_the_secret(stack):
    loaded, state_dir, printed = stack
    secret = loaded.s3.environment()["AWS_SECRET_ACCESS_KEY"]
    assert secret not in printed
    assert f"export AWS_ACCESS_KEY_ID={loaded.s3.access_key_id}" in printed
    assert f'export AWS_SECRET_ACCESS_KEY="$(cat {loaded.s3.secret_file})"' in printed
    assert f"export RAY_API_SERVER_ADDRESS={loaded.ray.dashboard_url}" in printed
    for private in (Path(loaded.s3.secret_file), state_dir / "devstack.json"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert secret not in (state_dir / "devstack.json").read_text()

    ours = stack_pids(loaded.ray.pid) | stack_pids(loaded.s3.pid)
    listeners = []
    for line in subprocess.run(
        ["ss", "-ltnpH"], capture_output=True, text=True
    ).stdout.splitlines():
        pids = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        if pids & ours:
            listeners.append(line.split()[3])
    dashboard_port = loaded.ray.dashboard_url.rsplit(":", 1)[1]
    gcs_port = loaded.ray.gcs_address.rsplit(":", 1)[1]
    s3_port = loaded.s3.endpoint_url.rsplit(":", 1)[1]
    local_ports = {address.rsplit(":", 1)[1] for address in listeners}
    assert {dashboard_port, gcs_port, s3_port} <= local_ports
    assert len(listeners) >= 10
    outside = [
        a for a in listeners if a.rsplit(":", 1)[0] not in ("127.0.0.1", "[::ffff:127.0.0.1]")
    ]
    assert outside == []

    code, out, _ = run_cli("dev", "status", "--state-dir", str(state_dir))
    assert code == 0 and out.count("running") == 2


@pytest.mark.heavy
def test_submitted_prepare_train_enhance_write_their_outputs_to_the_bucket(
    cluster_env, photo_dataset, tmp_path
):
    loaded = cluster_env
    filesystem = bucket_filesystem(loaded)
    base = f"{loaded.bucket}/e2e"
    upload_folder(Path(photo_dataset.root), filesystem, f"{base}/photos")
    with filesystem.open_output_stream(f"{base}/tiny.json") as stream:
        stream.write(tiny_config().to_json().encode())
    address = ["--job-server", loaded.ray.dashboard_url, "--follow"]
    uri = f"s3://{base}"

    code, out, err = run_cli(
        "submit", "prepare", *address,
        "--low", f"{uri}/photos/low", "--normal", f"{uri}/photos/normal", "--output", f"{uri}/shards",
    )  # fmt: skip
    assert code == 0, out + err
    assert re.match(r"raysubmit_\w+", out)
    manifest = json.loads(filesystem.open_input_file(f"{base}/shards/manifest.json").read())
    assert manifest["domains"]["low"]["written"] == len(photo_dataset.low)
    assert manifest["domains"]["normal"]["written"] == len(photo_dataset.normal)

    code, out, err = run_cli(
        "submit", "train", *address, "--data", f"{uri}/shards", "--run", f"{uri}/run",
        "--model-config", f"{uri}/tiny.json", "--steps", "2", "--checkpoint-every", "2",
        "--cpus-per-worker", "0.5",
    )  # fmt: skip
    assert code == 0, out + err
    pointer = json.loads(filesystem.open_input_file(f"{base}/run/latest_checkpoint.json").read())
    assert pointer["step"] == 2

    # Fine-tuning that run on the cluster, with two workers.
    code, out, err = run_cli(
        "submit", "train", *address, "--data", f"{uri}/shards", "--run", f"{uri}/finetune",
        "--init-from", f"{uri}/run", "--workers", "2", "--cpus-per-worker", "0.5",
        "--steps", "1", "--checkpoint-every", "1",
    )  # fmt: skip
    assert code == 0, out + err
    assert f"train: initialised from {uri}/run" in out + err
    assert "discriminators: loaded from the source" in out + err
    config = json.loads(filesystem.open_input_file(f"{base}/finetune/config.json").read())
    assert config["job"]["workers"] == 2
    assert config["job"]["init_from"]["source"] == f"{uri}/run"
    pointer = json.loads(
        filesystem.open_input_file(f"{base}/finetune/latest_checkpoint.json").read()
    )
    assert pointer["step"] == 1

    code, out, err = run_cli(
        "submit", "enhance", *address, "--checkpoint", f"{uri}/finetune",
        "--input", f"{uri}/photos/low", "--output", f"{uri}/enhanced",
    )  # fmt: skip
    assert code == 0, out + err
    written = filesystem.get_file_info(fs.FileSelector(f"{base}/enhanced", recursive=True))
    keys = {info.path.removeprefix(f"{base}/enhanced/") for info in written if info.is_file}
    assert {photo.key for photo in photo_dataset.low} <= keys


def test_bad_option_fails_before_anything_is_submitted(cluster_env):
    address = ["--job-server", cluster_env.ray.dashboard_url]
    before = run_cli("jobs", "list", *address)[1]
    enhance = ["--checkpoint", "c", "--input", "i", "--output", "o"]
    code, _, err = run_cli("submit", "enhance", *address, *enhance, "--no-such-option")
    assert code == 2 and "--no-such-option" in err
    code, _, err = run_cli("submit", "train", *address, "--data", "x", "--run", "y", "--steps", "z")
    assert code == 2 and "--steps" in err
    assert run_cli("jobs", "list", *address)[1] == before


def test_job_failing_on_the_cluster_surfaces_its_error_and_exit_status(cluster_env, monkeypatch):
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", cluster_env.ray.dashboard_url)
    missing = f"s3://{cluster_env.bucket}/no-such-prefix"
    code, out, err = run_cli(
        "submit", "enhance", "--checkpoint", f"{missing}/run",
        "--input", missing, "--output", f"{missing}/out",
    )  # fmt: skip
    assert code == 0, err  # without --follow: submitted, id printed, returns at once
    job_id = out.strip()
    assert re.fullmatch(r"raysubmit_\w+", job_id)
    assert f"enlightengan jobs logs {job_id} --follow" in err

    code, out, err = run_cli("jobs", "logs", job_id, "--follow")
    assert code == 1
    assert "enlightengan enhance: error:" in out  # the job's own one-line error, streamed
    assert f"job {job_id} FAILED" in err and "exit code 2" in err

    code, out, _ = run_cli("jobs", "status", job_id)
    assert code == 1 and "FAILED" in out
    assert job_id in run_cli("jobs", "list")[1]
    assert "enlightengan enhance: error:" in run_cli("jobs", "logs", job_id)[1]


def test_no_secret_reaches_entrypoint_metadata_or_runtime_env(cluster_env, photo_dataset):
    from ray.job_submission import JobSubmissionClient

    loaded = cluster_env
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    filesystem = bucket_filesystem(loaded)
    upload_folder(Path(photo_dataset.root), filesystem, f"{loaded.bucket}/secret-check")
    uri = f"s3://{loaded.bucket}/secret-check"
    code, out, err = run_cli(
        "submit", "prepare", "--job-server", loaded.ray.dashboard_url, "--follow",
        "--metadata", "team=vision", "--low", f"{uri}/low", "--normal", f"{uri}/normal",
        "--output", f"{uri}/shards", "--dry-run",
    )  # fmt: skip
    assert code == 0, out + err  # listing the bucket worked: the credentials came from the head

    client = JobSubmissionClient(loaded.ray.dashboard_url)
    jobs = client.list_jobs()
    job_ids = {job.submission_id for job in jobs}
    assert out.splitlines()[0] in job_ids
    for job in jobs:
        info = client.get_job_info(job.submission_id)
        shipped = json.dumps([info.entrypoint, info.metadata, info.runtime_env])
        assert secret not in shipped
        assert loaded.s3.access_key_id not in shipped
        assert "AWS_" not in shipped
    info = client.get_job_info(out.splitlines()[0])
    assert info.metadata["team"] == "vision" and info.metadata["enlightengan_job"] == "prepare"
    assert info.entrypoint.startswith("python -m pipelines.cli prepare --low ")
    assert "--job-server" not in info.entrypoint and "--follow" not in info.entrypoint


def test_secrets_in_arguments_or_runtime_env_are_refused(cluster_env, tmp_path):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    address = ["--job-server", cluster_env.ray.dashboard_url]
    before = run_cli("jobs", "list", *address)[1]
    prepare = ["--low", "a", "--normal", "b", "--output", "c"]
    code, _, err = run_cli("submit", "prepare", *address, "--metadata", f"k={secret}", *prepare)
    assert code == 2 and "secret" in err and secret not in err
    documented = re.search(r"see ([\w/.-]+\.md), (\w+)", err)
    assert f"## {documented[2]}" in (REPO / documented[1]).read_text()  # the page and section
    code, _, err = run_cli("submit", "prepare", *address, *prepare, "--output", f"s3://{secret}/x")
    assert code == 2 and secret not in err
    leaky = tmp_path / "runtime_env.yaml"
    leaky.write_text("env_vars:\n  AWS_SECRET_ACCESS_KEY: whatever\n")
    code, _, err = run_cli("submit", "prepare", *address, "--runtime-env", str(leaky), *prepare)
    assert code == 2 and "AWS_SECRET_ACCESS_KEY" in err
    assert run_cli("jobs", "list", *address)[1] == before


def test_submit_options_are_removed_and_job_options_kept_verbatim():
    options = {"--job-server": True, "--follow": False, "--metadata": True}
    argv = ["--job-server", "http://h:8265", "--data=s3://b/x y", "--follow", "--metadata=k=v",
            "--metadata", "a=b", "--steps", "3", "--", "--follow"]  # fmt: skip
    assert forwarded_arguments(argv, options) == [
        "--data=s3://b/x y",
        "--steps",
        "3",
        "--",
        "--follow",
    ]


# Keys a user's bucket may well hold: a space, a plus, a literal "%20", a decomposed (NFD)
# accent and CJK; each must come back byte for byte under the output prefix.
# In the order of the low-light photos' own keys, with the same formats.
AWKWARD_KEYS = (
    "night/with space.jpg",
    "night/plus+sign.png",
    "夜景/東京.png",
    "night/literal%20percent.JPG",
    "night/cafe\u0301.jpeg",
)
CONTENT_TYPES_WRITTEN = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".parquet": "application/vnd.apache.parquet",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".html": "text/html; charset=utf-8",
}


class NewUserShell:
    """Commands as a new user types them: a bash whose environment comes only from
    ``eval "$(enlightengan dev env)"`` (no AWS or Ray variables of this process), with the
    project's ``enlightengan`` and Ray's own ``ray`` on the PATH, run from the checkout."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("AWS_", "RAY_")) or name == "RAY_AUTH_MODE"
        }
        self.env["PATH"] = f"{Path(sys.executable).parent}:{self.env['PATH']}"
        self.outputs: list[str] = []

    def run(self, command: str, timeout: float = 400) -> subprocess.CompletedProcess:
        script = f'eval "$(enlightengan dev env --state-dir {self.state_dir})"\n{command}'
        completed = subprocess.run(
            ["bash", "-c", script],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.outputs.append(completed.stdout + completed.stderr)
        return completed

    def job(self, job_id: str, entrypoint: str) -> str:
        """``ray job submit`` (it follows the logs), then the job's full log via ``ray job
        logs``; fails the test unless the job SUCCEEDED."""
        submitted = self.run(
            f"ray job submit --working-dir . --submission-id {job_id} -- {entrypoint}"
        )
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        status = self.run(f"ray job status {job_id}")
        assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, status.stdout
        logs = self.run(f"ray job logs {job_id}")
        assert logs.returncode == 0, logs.stderr
        return logs.stdout


@pytest.mark.heavy
@pytest.mark.timeout(900)
def test_ray_cli_and_an_s3_client_as_a_new_user(stack, photo_dataset):
    """prepare, train and enhance submitted with ``ray job submit`` against the dev stack
    (addresses from ``eval "$(enlightengan dev env)"``), the bucket filled and read with
    botocore: awkward keys round-trip, objects carry their Content-Type, no folder markers,
    job logs without cursor escapes or a secret, and a rerun that skips everything writes 0
    bytes."""
    loaded, state_dir, _ = stack
    shell = NewUserShell(state_dir)
    secret = loaded.s3.environment()["AWS_SECRET_ACCESS_KEY"]
    client = botocore_client(loaded.s3.environment())
    bucket, base = loaded.bucket, "new-user"
    uri = f"s3://{bucket}/{base}"
    low_files = sorted(photo_dataset.low, key=lambda photo: photo.key)
    for key, photo in zip(AWKWARD_KEYS, low_files, strict=True):
        assert os.path.splitext(key)[1] == os.path.splitext(photo.key)[1], (key, photo.key)
        body = (photo_dataset.low_dir / photo.key).read_bytes()
        client.put_object(Bucket=bucket, Key=f"{base}/photos/low/{key}", Body=body)
    for photo in photo_dataset.normal:
        body = (photo_dataset.normal_dir / photo.key).read_bytes()
        client.put_object(Bucket=bucket, Key=f"{base}/photos/normal/{photo.key}", Body=body)
    client.put_object(Bucket=bucket, Key=f"{base}/tiny.json", Body=tiny_config().to_json())

    logs = shell.job(
        "new-user-prepare",
        f"python -m pipelines.cli prepare --low {uri}/photos/low --normal {uri}/photos/normal "
        f"--output {uri}/shards",
    )
    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"{base}/shards/manifest.json")
                          ["Body"].read())  # fmt: skip
    assert manifest["domains"]["low"]["written"] == len(AWKWARD_KEYS), logs[-2000:]
    train_logs = shell.job(
        "new-user-train",
        f"python -m pipelines.cli train --data {uri}/shards --run {uri}/run "
        f"--model-config {uri}/tiny.json --steps 2 --checkpoint-every 2 --cpus-per-worker 0.5",
    )
    assert "train: finished at step 2 of 2" in train_logs
    assert "\x1b[A" not in train_logs  # progress as plain lines: no terminal is attached
    enhance = (
        f"python -m pipelines.cli enhance --checkpoint {uri}/run --input {uri}/photos/low "
        f"--output {uri}/enhanced"
    )
    enhance_logs = shell.job("new-user-enhance", enhance)
    assert f"enhanced: {len(AWKWARD_KEYS)}  skipped: 0  failed: 0" in enhance_logs
    assert "constructor arguments in the object store" not in enhance_logs
    rerun_logs = shell.job("new-user-enhance-again", enhance)
    assert f"enhanced: 0  skipped: {len(AWKWARD_KEYS)}  failed: 0" in rerun_logs
    assert ", 0 bytes written" in rerun_logs

    keys = all_keys(client, bucket, f"{base}/")
    # S3 has no folders: no job writes zero-byte "prefix/" objects, Ray Train's storage code
    # included (it goes through the same filesystem).
    assert any(key.startswith(f"{base}/run/train/checkpoint_") for key in keys)
    assert [key for key in keys if key.endswith("/")] == []
    enhanced = {
        key.removeprefix(f"{base}/enhanced/")
        for key in keys
        if key.startswith(f"{base}/enhanced/")
        and "/_manifest/" not in key
        and "/_report/" not in key
    }
    assert enhanced == set(AWKWARD_KEYS)
    checked = [f"{base}/enhanced/{key}" for key in AWKWARD_KEYS] + [  # fmt: skip
        key
        for key in keys
        if key.endswith((".parquet", ".json", ".jsonl", "loss_curve.png", ".html"))
        and key.startswith((f"{base}/shards/", f"{base}/run/", f"{base}/enhanced/"))
        and "/checkpoint_" not in key
    ]
    assert any("/enhanced/_manifest/" in key for key in checked)
    assert any(key.endswith("/index.html") for key in checked)
    assert any(key.endswith("/metrics.jsonl") for key in checked)
    for key in checked:
        expected = CONTENT_TYPES_WRITTEN[os.path.splitext(key)[1].lower()]
        assert client.head_object(Bucket=bucket, Key=key)["ContentType"] == expected, key

    listed = shell.run("ray job list")
    assert "new-user-enhance-again" in listed.stdout
    assert all(secret not in output for output in shell.outputs)


@pytest.mark.heavy
def test_a_stopped_job_ends_jobs_logs_follow_with_1_where_ray_job_logs_f_gives_0(stack):
    """``enlightengan jobs logs --follow`` (and ``submit --follow``) report how the job ended:
    a stopped job did not finish its work, so 1, as for a failure; ``ray job logs -f`` only
    streams the log and exits 0 whatever happened."""
    _, state_dir, _ = stack
    shell = NewUserShell(state_dir)
    started = shell.run(
        "ray job submit --no-wait --submission-id stop-me -- python -c 'import time; "
        'print("waiting", flush=True); time.sleep(600)\''
    )
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 120
    while "RUNNING" not in shell.run("ray job status stop-me").stdout:
        assert time.monotonic() < deadline, shell.outputs[-1]
        time.sleep(1)
    assert shell.run("ray job stop stop-me").returncode == 0
    assert shell.run("ray job logs -f stop-me").returncode == 0
    followed = shell.run("enlightengan jobs logs stop-me --follow")
    assert followed.returncode == 1
    assert "waiting" in followed.stdout and "job stop-me STOPPED" in followed.stderr
    status = shell.run("enlightengan jobs status stop-me")
    assert status.returncode == 1 and "STOPPED" in status.stdout

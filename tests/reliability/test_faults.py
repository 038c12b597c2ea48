"""Faults injected into real jobs (real SeaweedFS, real Ray, real photos, a tiny real checkpoint):
the driver or a Ray worker killed, the S3 server stopped and restarted, an output that cannot be
written or fills up. After each, a rerun completes, every valid input has exactly one complete
output, nothing is duplicated, and nothing half-written is counted as done.

Jobs that are killed run as a subprocess in a session of their own (its Ray processes included);
whatever of that session outlives the test is killed by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from pyarrow import fs as pafs

from enlightengan.checkpoint import save_checkpoint
from enlightengan.config import tiny_config
from enlightengan.generator import Generator
from pipelines.cli import main
from pipelines.demo.sample_photos import PHOTO_SOURCES, darken, encode, fit_within, wheel_photo
from pipelines.enhance.sink import read_manifest
from pipelines.io.images import decode_image
from pipelines.io.shards import read_manifest as read_prepare_manifest
from pipelines.io.storage import resolve
from pipelines.ops.local_services import session_members
from tests.fixtures.photos import upload_folder
from tests.fixtures.seaweed import SeaweedServer, _wait_until_ready, start_seaweed

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Inputs:
    """Photos on disk under ``root`` and the decoded (height, width) of each relative key."""

    root: Path
    sizes: dict[str, tuple[int, int]]


def _distinct_photos(root: Path, count: int, box: tuple[int, int]) -> Inputs:
    """``count`` different low-light photos (jpg and png, portrait and landscape, nested):
    each gets its own darkening, so no two files are byte-identical (prepare deduplicates)."""
    names = sorted(PHOTO_SOURCES)
    sizes = {}
    for index in range(count):
        photo = wheel_photo(names[index % len(names)])
        width, height = box if index % 3 else box[::-1]
        pixels = darken(fit_within(photo, width, height), scale=0.2 + 0.01 * index)
        fmt, extension = ("PNG", "png") if index % 2 else ("JPEG", "jpg")
        key = f"set{index % 3}/photo {index:02d}.{extension}"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(encode(pixels, fmt, quality=90))
        sizes[key] = decode_image((root / key).read_bytes()).array.shape[:2]
    return Inputs(root, sizes)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    config = tiny_config()
    directory = tmp_path_factory.mktemp("faults-checkpoint") / "checkpoint_000001"
    save_checkpoint(directory, config=config, networks={"generator": Generator(config.generator)})
    return directory


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory) -> Inputs:
    """16 small photos (160x120) for enhance."""
    return _distinct_photos(tmp_path_factory.mktemp("faults-small"), 16, (160, 120))


@pytest.fixture(scope="module")
def training_photos(tmp_path_factory) -> dict[str, Inputs]:
    """24 low and 24 normal photos big enough for prepare's 320 crop."""
    root = tmp_path_factory.mktemp("faults-prepare")
    return {
        domain: _distinct_photos(root / domain, 24, (560, 560 + offset))
        for offset, domain in enumerate(("low", "normal"))
    }


@pytest.fixture
def own_s3(tmp_path) -> SeaweedServer:
    """A SeaweedFS of this test's own (the session's server is shared and must stay up)."""
    server = start_seaweed(tmp_path / "seaweedfs")
    try:
        yield server
    finally:
        server.stop()


def restart(server: SeaweedServer, down_for: float) -> None:
    """Stop the server by PID, wait, and start it again on the same ports and data folder."""
    command = server.process.args
    server.stop()
    time.sleep(down_for)
    with open(server.directory / "logs" / "weed.out", "ab") as log:
        server.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        )
    _wait_until_ready(server, 60)


class Job:
    """``enlightengan ARGS`` in a subprocess and a session of its own, with its own local Ray."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.log = log
        self.ray_dir = tempfile.mkdtemp(prefix="rf-", dir="/tmp")
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        environment.update(env or {})
        environment.update(ENLIGHTENGAN_RAY_TMPDIR=self.ray_dir, RAY_AUTH_MODE="disabled")
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipelines.cli", *argv, "--num-cpus", "2"],
                cwd=REPO,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_until(self, condition, what: str, timeout: float = 240.0):
        """Poll ``condition`` until it gives something true; fail if the job ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.process.poll() is not None:
                pytest.fail(f"job ended (rc {self.process.returncode}) before {what}:\n{self.text}")
            time.sleep(0.03)
        pytest.fail(f"no {what} after {timeout} s:\n{self.text}")

    def members(self) -> list[int]:
        return session_members(self.process.pid)

    def finish(self, timeout: float = 300.0) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.stop()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGKILL every process left in the job's session, then remove its Ray folder."""
        deadline = time.monotonic() + 30
        while (left := self.members()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        shutil.rmtree(self.ray_dir, ignore_errors=True)

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def output_files(filesystem, root: str) -> dict[str, int]:
    """``relative key -> size`` of the images under ``root`` (manifest and hidden files aside)."""
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    base = root.rstrip("/") + "/"
    found = {}
    for info in filesystem.get_file_info(selector):
        key = info.path[len(base) :]
        hidden = any(part.startswith((".", "_")) for part in key.split("/"))
        if info.type == pafs.FileType.File and not hidden:
            found[key] = info.size
    return found


def manifest_rows(filesystem, root: str) -> list[dict]:
    return read_manifest(filesystem, f"{root.rstrip('/')}/_manifest").to_pylist()


def assert_each_input_enhanced_once(filesystem, root, inputs: Inputs, redone=frozenset()):
    """Every input has exactly one complete output of its size; the manifest records one
    ``enhanced`` row per key (two for a key ``redone`` on purpose), the latest matching the
    object as it is, and no failure."""
    files = output_files(filesystem, root)
    assert sorted(files) == sorted(inputs.sizes)
    for key, size in inputs.sizes.items():
        with filesystem.open_input_file(f"{root}/{key}") as stream:
            assert decode_image(stream.read()).array.shape[:2] == size, key
    rows = manifest_rows(filesystem, root)
    assert [row for row in rows if row["status"] == "failed"] == []
    enhanced = sorted(
        (row for row in rows if row["status"] == "enhanced"), key=lambda r: r["run_id"]
    )
    counts = Counter(row["key"] for row in enhanced)
    assert counts == {key: 1 + (key in redone) for key in inputs.sizes}
    latest = {row["key"]: row for row in enhanced}
    assert {key: row["output_bytes"] for key, row in latest.items()} == files


def enhance_argv(checkpoint: Path, source: str, output: str, *extra: str) -> list[str]:
    return ["enhance", "--checkpoint", str(checkpoint), "--input", source, "--output", output,
            "--batch-size", "2", *extra]  # fmt: skip


def test_enhance_driver_killed_then_rerun_redoes_only_the_missing(
    ray_local, checkpoint, small_photos, tmp_path, capsys
):
    output = tmp_path / "out"
    # Parts of 2 rows, so that the job is killed between two of them.
    argv = enhance_argv(checkpoint, str(small_photos.root), str(output), "--manifest-rows", "2")
    job = Job(argv, tmp_path / "job.log")
    try:
        job.wait_until(
            lambda: list((output / "_manifest").glob("run-*.parquet")), "a manifest part"
        )
        job.kill()
    finally:
        job.stop()
    local = resolve(output)
    recorded = {row["key"] for row in manifest_rows(local.filesystem, local.path)}
    assert 0 < len(recorded) < len(small_photos.sizes)
    # A crash can also cut an object short after its row was written: redo it, not skip it.
    truncated = sorted(recorded)[0]
    (output / truncated).write_bytes((output / truncated).read_bytes()[:200])

    assert main(argv) == 0
    summary = capsys.readouterr().out
    done_before = len(recorded) - 1
    missing = len(small_photos.sizes) - done_before
    assert f"enhanced: {missing}  skipped: {done_before}  failed: 0" in summary
    assert_each_input_enhanced_once(local.filesystem, local.path, small_photos, {truncated})


@pytest.mark.slow
def test_enhance_actor_process_killed_ray_restarts_it(checkpoint, small_photos, tmp_path):
    output = tmp_path / "out"
    job = Job(enhance_argv(checkpoint, str(small_photos.root), str(output)), tmp_path / "job.log")

    def enhancer_actors() -> list[int]:
        return [pid for pid in job.members() if _mentions(pid, "EnhanceActor")]

    try:
        victim = job.wait_until(enhancer_actors, "an enhancer actor")[0]
        written = job.wait_until(
            lambda: output_files(pafs.LocalFileSystem(), str(output)), "an output"
        )
        os.kill(victim, signal.SIGKILL)
        assert len(written) < len(small_photos.sizes)  # killed with work left
        job.wait_until(lambda: [p for p in enhancer_actors() if p != victim], "a new actor")
        code = job.finish()
    finally:
        job.stop()
    assert code == 0, job.text
    assert victim not in job.members()
    # Ray Data's restarts keep their object-store arguments (pipelines.ray_runtime), and Ray's
    # error line that says they might not is kept out of the job's output.
    assert "constructor arguments in the object store" not in job.text
    assert_each_input_enhanced_once(pafs.LocalFileSystem(), str(output), small_photos)


def _mentions(pid: int, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _assert_one_clear_line(code: int, text: str, only_output: bool = False) -> None:
    """Exit 2 and the job's last word one ``enlightengan JOB: error:`` line (Ray's own log
    lines may come before it; ``only_output``: nothing else, no traceback)."""
    assert code == 2, text
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("enlightengan ") and ": error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], text
    assert not only_output or (len(lines) == 1 and "Traceback" not in text), text


@pytest.mark.slow
def test_s3_restart_during_enhance_retries_or_fails_clearly_and_rerun_completes(
    ray_local, own_s3, checkpoint, small_photos, tmp_path, monkeypatch
):
    filesystem = own_s3.filesystem()
    bucket = own_s3.make_bucket("faults")
    upload_folder(small_photos.root, filesystem, f"{bucket}/in")
    root = f"{bucket}/out"
    argv = enhance_argv(checkpoint, f"s3://{bucket}/in", f"s3://{root}")
    job = Job(argv, tmp_path / "job.log", env=own_s3.env())
    try:
        job.wait_until(lambda: output_files(filesystem, root), "an output in the bucket")
        restart(own_s3, down_for=4.0)
        code = job.finish()
    finally:
        job.stop()
    if code:
        _assert_one_clear_line(code, job.text)
    else:
        assert_each_input_enhanced_once(filesystem, root, small_photos)
    for name, value in own_s3.env().items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 0
    assert_each_input_enhanced_once(filesystem, root, small_photos)


def _prepare_argv(low: str, normal: str, out: str) -> list[str]:
    # Two images per shard: many write tasks, so a fault lands in the middle of the job; the
    # tests rerun over the same output, which --overwrite allows.
    return ["prepare", "--low", low, "--normal", normal, "--output", out,
            "--shard-size-mb", "0.8", "--images-per-task", "2", "--overwrite"]  # fmt: skip


def assert_prepared_once(out: str, photos: dict[str, Inputs]) -> None:
    """A complete manifest with every photo written once and nothing rejected."""
    import pyarrow.parquet as pq

    manifest = read_prepare_manifest(out)
    assert manifest["rejected"]["total"] == 0 and manifest["duplicates"] == 0
    location = resolve(out)
    for domain, inputs in photos.items():
        counts = manifest["domains"][domain]
        assert counts["found"] == counts["written"] == len(inputs.sizes)
        folder = location.child(domain)
        selector = pafs.FileSelector(folder.path)
        shards = sorted(i.path for i in location.filesystem.get_file_info(selector))
        assert [path.rsplit("/", 1)[1] for path in shards] == counts["shards"]
        keys = []
        for path in shards:
            keys += pq.read_table(path, filesystem=location.filesystem)["key"].to_pylist()
        assert sorted(keys) == sorted(inputs.sizes)


@pytest.mark.slow
def test_s3_restart_during_prepare_never_claims_success_and_rerun_is_right(
    ray_local, own_s3, training_photos, tmp_path, monkeypatch
):
    filesystem = own_s3.filesystem()
    bucket = own_s3.make_bucket("faults")
    for domain, inputs in training_photos.items():
        upload_folder(inputs.root, filesystem, f"{bucket}/{domain}")
    out = f"s3://{bucket}/prepared"
    argv = _prepare_argv(f"s3://{bucket}/low", f"s3://{bucket}/normal", out)
    job = Job(argv, tmp_path / "job.log", env=own_s3.env())

    def first_shard():
        return [f for f in output_files(filesystem, f"{bucket}/prepared") if f.endswith(".parquet")]

    try:
        job.wait_until(first_shard, "a shard in the bucket")
        restart(own_s3, down_for=4.0)
        code = job.finish()
    finally:
        job.stop()
    for name, value in own_s3.env().items():
        monkeypatch.setenv(name, value)
    if code:
        _assert_one_clear_line(code, job.text)
        assert filesystem.get_file_info(f"{bucket}/prepared/manifest.json").type == (
            pafs.FileType.NotFound
        )
    else:
        assert_prepared_once(out, training_photos)
    assert main(argv) == 0
    assert_prepared_once(out, training_photos)


@pytest.mark.slow
def test_prepare_killed_midway_leaves_no_manifest_and_rerun_is_right(
    ray_local, training_photos, tmp_path
):
    from pipelines.errors import UserError
    from pipelines.io.shards import check_prepared

    out = tmp_path / "prepared"
    argv = _prepare_argv(
        str(training_photos["low"].root), str(training_photos["normal"].root), str(out)
    )
    assert main(argv) == 0  # an earlier complete run: its manifest must not survive the crash
    job = Job(argv, tmp_path / "job.log")
    try:
        job.wait_until(
            lambda: not (out / "manifest.json").exists() and list(out.glob("*/*.parquet")),
            "the old manifest removed and a new shard started",
        )
        job.kill()
    finally:
        job.stop()
    assert not (out / "manifest.json").exists()
    with pytest.raises(UserError, match="did not finish"):
        check_prepared(str(out))
    assert main(argv) == 0
    assert_prepared_once(str(out), training_photos)


@pytest.mark.parametrize("blocker", ["file-in-the-way", "read-only-folder"])
def test_unwritable_output_is_one_clear_error_before_any_work(
    ray_local, checkpoint, small_photos, tmp_path, capsys, blocker
):
    if blocker == "file-in-the-way":
        (tmp_path / "taken").write_text("a file where a folder is expected")
        output = tmp_path / "taken" / "out"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder; file-in-the-way covers root")
        (tmp_path / "locked").mkdir(mode=0o555)
        output = tmp_path / "locked" / "out"
    code = main(enhance_argv(checkpoint, str(small_photos.root), str(output)))
    error = capsys.readouterr().err
    kept = "\n".join(line for line in error.splitlines() if not _is_note(line))
    _assert_one_clear_line(code, kept, only_output=True)
    assert "cannot write to the output" in error
    # prepare refuses the output before it reads a photo: any listed images will do.
    code = main(_prepare_argv(str(small_photos.root), str(small_photos.root), str(output)))
    error = capsys.readouterr().err
    _assert_one_clear_line(code, error, only_output=True)
    assert "cannot write to the output" in error
    assert not output.exists()


def _is_note(line: str) -> bool:
    """enhance names the checkpoint it loaded before any work and, where an earlier test's
    work still holds part of the session's Ray, says so: notes on stderr, not errors."""
    return line.startswith(("enhance: checkpoint", "enhance: other work holds part of"))


def _unshare_works() -> bool:
    probe = ["unshare", "--user", "--map-root-user", "--mount", "true"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


DISK_FULL_SCRIPT = """
set -u
mount -t tmpfs -o size=96k tmpfs "$FULL" || exit 97
"$PYTHON" -m pipelines.cli "$@" --num-cpus 2 > "$LOG" 2>&1
code=$?
cp -a "$FULL/." "$COPY/"
exit $code
"""


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_works(), reason="needs unshare (user + mount namespaces)")
@pytest.mark.parametrize("job_name", ["enhance", "prepare"])
def test_disk_full_output_is_a_clear_error_without_false_success(
    checkpoint, small_photos, training_photos, tmp_path, job_name
):
    """The output is a 96 kB tmpfs mounted in a private namespace: writes end in ENOSPC."""
    full, copy, log = tmp_path / "full", tmp_path / "copy", tmp_path / "job.log"
    full.mkdir()
    copy.mkdir()
    if job_name == "enhance":
        argv = enhance_argv(checkpoint, str(small_photos.root), str(full))
    else:
        low, normal = (str(training_photos[d].root) for d in ("low", "normal"))
        argv = _prepare_argv(low, normal, str(full))
    ray_dir = tempfile.mkdtemp(prefix="rf-", dir="/tmp")
    env = {**os.environ, "FULL": str(full), "COPY": str(copy), "LOG": str(log),
           "PYTHON": sys.executable, "ENLIGHTENGAN_RAY_TMPDIR": ray_dir}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    command = ["unshare", "--user", "--map-root-user", "--mount", "--fork", "--kill-child"]
    completed = subprocess.run(
        [*command, "sh", "-c", DISK_FULL_SCRIPT, "sh", *argv],
        cwd=REPO, env=env, timeout=400, start_new_session=True,
    )  # fmt: skip
    shutil.rmtree(ray_dir, ignore_errors=True)
    text = log.read_text(errors="replace") if log.exists() else ""
    assert completed.returncode != 97, "tmpfs mount refused"
    if job_name == "prepare":
        _assert_one_clear_line(completed.returncode, text)
        assert "No space left on device" in text.splitlines()[-1]
        assert not (copy / "manifest.json").exists()
        return
    # Enhance: per-image write failures are rows; a manifest that cannot be written stops the
    # job with one line. Either way no row claims an image that is not complete on disk.
    if completed.returncode:
        _assert_one_clear_line(completed.returncode, text)
    rows = manifest_rows(pafs.LocalFileSystem(), str(copy))
    files = output_files(pafs.LocalFileSystem(), str(copy))
    enhanced = {row["key"]: row["output_bytes"] for row in rows if row["status"] == "enhanced"}
    assert len(enhanced) < len(small_photos.sizes)
    assert {key: files.get(key) for key in enhanced} == enhanced
    for key in enhanced:
        pixels = decode_image((copy / key).read_bytes()).array
        assert pixels.shape[:2] == small_photos.sizes[key] and np.any(pixels)


def test_checkpoint_cut_off_by_a_crash_is_never_picked_as_latest(s3_env, tmp_path):
    """A job that dies while writing a checkpoint leaves its index with a file short or missing
    (in whatever order the files landed): enhance, locally and on S3, picks the newest complete
    checkpoint instead, however high the broken one's step."""
    from pipelines.inference.checkpoints import load_checkpoint_files

    config = tiny_config()
    generator = Generator(config.generator)
    run = tmp_path / "run" / "exp"
    for step in (3, 9, 12):
        save_checkpoint(
            run / f"checkpoint_{step:06d}",
            config=config,
            networks={"generator": generator},
            trainer_state={"step": step},
        )
    weights = run / "checkpoint_000009" / "generator.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (run / "checkpoint_000012" / "generator.pt").unlink()
    local = load_checkpoint_files(str(tmp_path / "run"))
    assert local.description.endswith("checkpoint_000003")
    bucket = s3_env.make_bucket("ckpt")
    upload_folder(tmp_path / "run", s3_env.filesystem(), f"{bucket}/run")
    remote = load_checkpoint_files(f"s3://{bucket}/run")
    assert remote.description.endswith("checkpoint_000003 (step 3)")
    assert remote.files == local.files

"""Security properties on the real parts: secrets never land in outputs or logs, wrong or missing
credentials fail clearly, checkpoints never run pickled code, output keys never escape, and the
in-process Ray listens on loopback only.

Covered elsewhere and not repeated here: ``tests/pipelines/io/test_storage.py`` (credential errors
at the storage layer, ``safe_join``), ``tests/pipelines/ops/test_submit.py`` (the dev stack's Ray
head and SeaweedFS listen on loopback only; no secret in Ray job metadata or runtime env),
``tests/enlightengan/test_checkpoint.py`` (``load_generator`` refuses arbitrary pickles) and
``tests/pipelines/enhance/test_job.py`` (local keys like ``%2e%2e/`` are refused as output keys).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import secrets
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from pyarrow import fs as pafs

from enlightengan.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from enlightengan.config import tiny_config
from enlightengan.discriminator import build_discriminators
from enlightengan.generator import Generator
from pipelines.cli import main
from pipelines.enhance.sink import read_manifest
from pipelines.io import storage
from tests.fixtures.photos import darken, encode, fit_within, upload_folder, wheel_photo

SCAN_LIMIT_BYTES = 64 << 20


def readable_forms(data: bytes) -> list[bytes]:
    """``data`` plus what compressed containers hold: Parquet pages (zstd), zip members (torch
    checkpoints) and gzip streams, so a secret cannot hide behind compression."""
    forms = [data]
    if data[:4] == b"PAR1":
        table = pq.read_table(io.BytesIO(data))
        forms.append(repr(table.to_pylist()).encode())
        forms.append(repr(table.schema.metadata).encode())
    elif data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            forms.extend(archive.read(name) for name in archive.namelist())
    elif data[:2] == b"\x1f\x8b":
        forms.append(gzip.decompress(data))
    return forms


def leaks(data: bytes, needles: list[str]) -> list[str]:
    return [
        needle
        for needle in needles
        if any(needle.encode() in form for form in readable_forms(data))
    ]


def scan_bucket(filesystem, bucket: str, needles: list[str]) -> tuple[int, dict[str, list[str]]]:
    infos = filesystem.get_file_info(pafs.FileSelector(bucket, recursive=True))
    found, scanned = {}, 0
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        with filesystem.open_input_file(info.path) as stream:
            hits = leaks(stream.read(), needles)
        scanned += 1
        if hits:
            found[info.path] = hits
    return scanned, found


def scan_tree(root: Path, needles: list[str]) -> tuple[int, dict[str, list[str]]]:
    found, scanned = {}, 0
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file() or path.stat().st_size > SCAN_LIMIT_BYTES:
            continue
        try:
            hits = leaks(path.read_bytes(), needles)
        except (OSError, ValueError, zipfile.BadZipFile):
            continue
        scanned += 1
        if hits:
            found[str(path)] = hits
    return scanned, found


def tiny_checkpoint(directory: Path, with_training_state: bool = False) -> Path:
    torch.manual_seed(5)
    config = tiny_config()
    networks = {"generator": Generator(config.generator)}
    optimizers = None
    if with_training_state:
        global_d, patch_d = build_discriminators(config.discriminator)
        networks.update(global_d=global_d, patch_d=patch_d)
        optimizers = {"generator": torch.optim.Adam(networks["generator"].parameters())}
    return save_checkpoint(
        directory,
        config=config,
        networks=networks,
        optimizers=optimizers,
        trainer_state={"step": 1},
    )


def test_the_scanner_sees_through_parquet_zip_and_gzip(tmp_path):
    import pyarrow as pa

    # Repetitive, so every compressor stores it as a back-reference, never verbatim.
    needle = "needle-" + secrets.token_hex(4) + "-" + "z" * 64
    parquet = io.BytesIO()
    table = pa.table({"detail": [needle] * 50})
    pq.write_table(table, parquet, compression="zstd", write_statistics=False)
    deflated = io.BytesIO()
    with zipfile.ZipFile(deflated, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data.pkl", needle.encode() * 4)
    samples = [parquet.getvalue(), deflated.getvalue(), gzip.compress(needle.encode() * 4)]
    assert [needle.encode() in sample for sample in samples] == [False] * 3
    assert [leaks(sample, [needle, "absent"]) for sample in samples] == [[needle]] * 3
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "log.txt").write_text(f"... {needle} ...")
    assert scan_tree(tmp_path, [needle])[1] == {str(tmp_path / "deep/er/log.txt"): [needle]}


@pytest.fixture(scope="module")
def secure_bucket(s3_server, photo_dataset) -> str:
    """A bucket holding the real photo set under ``in/``."""
    bucket = s3_server.make_bucket("secure")
    upload_folder(Path(photo_dataset.root), s3_server.filesystem(), f"{bucket}/in")
    return bucket


@pytest.mark.slow
def test_full_run_never_writes_or_prints_the_secret(
    ray_local, s3_env, secure_bucket, tmp_path, capfd
):
    """prepare -> train -> enhance -> evaluate against SeaweedFS, then every object in the bucket,
    every local output, the Ray session's files and all captured output are searched for the
    secret key (random per server, so a unique marker) and the distinctive access key id."""
    needles = [s3_env.secret_key, s3_env.access_key]
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == s3_env.secret_key
    root = f"s3://{secure_bucket}"
    config_file = tmp_path / "tiny.json"
    config_file.write_text(tiny_config().to_json())
    jobs = [
        ["prepare", "--low", f"{root}/in/low", "--normal", f"{root}/in/normal"]
        + ["--output", f"{root}/prepared"],
        ["train", "--data", f"{root}/prepared", "--run", f"{root}/run"]
        + ["--model-config", str(config_file), "--steps", "2", "--checkpoint-every", "2"]
        + ["--sample-every", "2", "--threads-per-worker", "1"],
        ["enhance", "--checkpoint", f"{root}/run", "--input", f"{root}/in/low"]
        + ["--output", f"{root}/enhanced"],
        ["evaluate", "--checkpoint", f"{root}/run", "--input", f"{root}/in/low"]
        + ["--output", str(tmp_path / "evaluation"), "--limit", "3", "--samples", "2"],
    ]
    for argv in jobs:
        assert main(argv) == 0, argv[0]
    captured = capfd.readouterr()
    assert "enhanced: 5" in captured.out

    filesystem = s3_env.filesystem()
    scanned, found = scan_bucket(filesystem, secure_bucket, needles)
    names = {
        info.base_name
        for info in filesystem.get_file_info(pafs.FileSelector(secure_bucket, recursive=True))
    }
    # The scan must have seen every kind of file the jobs write.
    assert {"manifest.json", "rejected.parquet", "config.json", "metrics.jsonl"} <= names
    assert {"generator.pt", "checkpoint.json", "latest_checkpoint.json"} <= names
    assert any(name.endswith(".parquet") and name.startswith("run-") for name in names)
    assert scanned >= 30 and found == {}
    local_scanned, local_found = scan_tree(tmp_path, needles)
    assert local_scanned >= 4 and local_found == {}
    assert (tmp_path / "evaluation" / "scores.parquet").exists()
    ray_scanned, ray_found = scan_tree(Path(os.environ["ENLIGHTENGAN_RAY_TMPDIR"]), needles)
    assert ray_scanned >= 10 and ray_found == {}
    assert leaks((captured.out + captured.err).encode(), needles) == []


JOB_ARGUMENTS = {
    "prepare": lambda b, d: (
        ["--low", f"s3://{b}/in/low", "--normal", f"s3://{b}/in/normal"]
        + ["--output", f"s3://{b}/out"]
    ),
    "train": lambda b, d: ["--data", f"s3://{b}/prepared", "--run", str(d / "run")],
    "enhance": lambda b, d: (
        ["--checkpoint", str(d / "ckpt"), "--input", f"s3://{b}/in/low"]
        + ["--output", str(d / "out")]
    ),
    "evaluate": lambda b, d: (
        ["--checkpoint", str(d / "ckpt"), "--input", f"s3://{b}/in/low"]
        + ["--output", str(d / "eval")]
    ),
}


@pytest.mark.parametrize("job", sorted(JOB_ARGUMENTS))
@pytest.mark.parametrize("problem", ["wrong-secret", "unknown-key-id", "missing"])
def test_bad_credentials_through_the_cli_exit_2_with_a_clear_message_and_no_secret(
    ray_local, s3_env, secure_bucket, tmp_path, monkeypatch, capfd, job, problem
):
    wrong_secret = "wrong-" + secrets.token_urlsafe(24)
    if problem == "wrong-secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
        expected = "S3 refused the credentials"
    elif problem == "unknown-key-id":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKNOSUCHKEY" + secrets.token_hex(4).upper())
        expected = "S3 refused the credentials"
    else:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        expected = "no S3 credentials"
    tiny_checkpoint(tmp_path / "ckpt")
    assert main([job, *JOB_ARGUMENTS[job](secure_bucket, tmp_path)]) == 2
    captured = capfd.readouterr()
    errors = [line for line in captured.err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and expected in errors[0], captured.err
    assert "AWS_ACCESS_KEY_ID" in errors[0]
    everything = captured.out + captured.err
    assert wrong_secret not in everything and s3_env.secret_key not in everything
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval").exists()


class WritesMarker:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_pickle(checkpoint: Path, name: str, marker: Path) -> None:
    """Replace one checkpoint file by an armed pickle and re-index it, as an attacker who can
    write the checkpoint would (so integrity checks alone do not catch it)."""
    import hashlib

    torch.save({"conv1_1.weight": WritesMarker(marker)}, checkpoint / name)
    index = json.loads((checkpoint / "checkpoint.json").read_text())
    data = (checkpoint / name).read_bytes()
    index["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (checkpoint / "checkpoint.json").write_text(json.dumps(index))


def test_the_planted_pickle_is_armed(tmp_path):
    """Without weights-only loading the planted file does run code (so the refusals below mean
    something)."""
    marker = tmp_path / "armed"
    torch.save({"x": WritesMarker(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_every_checkpoint_file_refuses_pickled_code(tmp_path):
    template = tiny_checkpoint(tmp_path / "template", with_training_state=True)
    torch_files = sorted(path.name for path in template.glob("*.pt"))
    assert "generator.pt" in torch_files and len(torch_files) >= 3
    for name in torch_files:
        checkpoint = tiny_checkpoint(tmp_path / name, with_training_state=True)
        marker = tmp_path / f"ran-{name}"
        plant_pickle(checkpoint, name, marker)
        with pytest.raises(CheckpointError, match="weights-only"):
            load_checkpoint(checkpoint)
        assert not marker.exists(), name


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("job", ["enhance", "evaluate"])
def test_enhance_and_evaluate_refuse_a_pickled_checkpoint_before_any_work(
    s3_env, secure_bucket, tmp_path, capfd, where, job
):
    checkpoint = tiny_checkpoint(tmp_path / "run" / "checkpoint_000001")
    marker = tmp_path / "code-ran"
    plant_pickle(checkpoint, "generator.pt", marker)
    argument = str(checkpoint)
    if where == "s3":
        prefix = f"{secure_bucket}/evil-{secrets.token_hex(3)}"
        upload_folder(tmp_path / "run", s3_env.filesystem(), prefix)
        argument = f"s3://{prefix}"
    output = tmp_path / "out"
    argv = [job, "--checkpoint", argument, "--input", f"s3://{secure_bucket}/in/low"]
    assert main([*argv, "--output", str(output)]) == 2
    error = capfd.readouterr().err
    assert "weights-only" in error and error.count(f"{job}: error:") == 1
    assert not marker.exists()
    assert not output.exists() or not any(output.rglob("*.*"))


def _escape_attempts(filesystem, prefix: str) -> list[str]:
    """Upload one photo under ``prefix/in/`` at every key spelling ``..`` that the store keeps
    (a literal ``../`` is refused by SeaweedFS itself; if a store ever accepts one it joins the
    list), plus ``fine/ok.png``; returns the keys the input listing then shows."""
    photo = encode(darken(fit_within(wheel_photo("chelsea"), 96, 64)), "PNG")
    unsafe = ["%2e%2e/escape.png", "x/%2E%2E/%2e%2e/escape.png", "\uff0e\uff0e/escape.png"]
    unsafe += ["\u2024\u2024/escape.png", "line\nbreak/escape.png"]
    for key in ["../escape.png", "a/../../escape.png"]:
        try:
            with filesystem.open_output_stream(f"{prefix}/in/{key}") as stream:
                stream.write(photo)
            unsafe.append(key)
        except OSError:
            pass
    for key in [*unsafe, "fine/ok.png"]:
        with filesystem.open_output_stream(f"{prefix}/in/{key}") as stream:
            stream.write(photo)
    listed = storage.list_files(f"s3://{prefix}/in")
    assert set(listed) >= {"%2e%2e/escape.png", "\uff0e\uff0e/escape.png", "fine/ok.png"}
    return listed


def test_s3_keys_that_would_escape_the_output_are_refused(
    ray_local, s3_env, secure_bucket, tmp_path
):
    """S3 -> local: every object key spelling ``..`` (percent-encoded, full-width or one-dot
    leaders, beside a control character) is failed as ``unsafe-key`` and nothing is written
    outside the output folder."""
    prefix = f"{secure_bucket}/escape-{secrets.token_hex(3)}"
    listed = _escape_attempts(s3_env.filesystem(), prefix)
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    sandbox = tmp_path / "sandbox"
    output = sandbox / "deep" / "out"
    argv = ["enhance", "--checkpoint", str(checkpoint), "--input", f"s3://{prefix}/in"]
    assert main([*argv, "--output", str(output)]) == 0
    rows = read_manifest(pafs.LocalFileSystem(), str(output / "_manifest")).to_pylist()
    outcome = {row["key"]: row["reason"] or row["status"] for row in rows}
    assert outcome == {key: "enhanced" if key == "fine/ok.png" else "unsafe-key" for key in listed}
    written = [p.relative_to(sandbox).as_posix() for p in sandbox.rglob("*") if p.is_file()]
    assert [p for p in written if not re.search("/_(manifest|report)/", p)] == [
        "deep/out/fine/ok.png"
    ]


@pytest.mark.slow
def test_local_files_named_to_escape_never_reach_other_s3_keys(
    ray_local, s3_env, secure_bucket, tmp_path, capfd
):
    """Local -> S3, the same names as files: only ``fine/ok.png`` becomes an object."""
    prefix = f"{secure_bucket}/escape-{secrets.token_hex(3)}"
    listed = _escape_attempts(s3_env.filesystem(), prefix)
    local_input = tmp_path / "local-in"
    photo = encode(darken(fit_within(wheel_photo("chelsea"), 96, 64)), "PNG")
    for key in listed:
        (local_input / key).parent.mkdir(parents=True, exist_ok=True)
        (local_input / key).write_bytes(photo)
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    argv = ["enhance", "--checkpoint", str(checkpoint), "--input", str(local_input)]
    assert main([*argv, "--output", f"s3://{prefix}/deep/out"]) == 0
    objects = storage.list_files(f"s3://{prefix}", extensions=None)
    outside_input = [key for key in objects if not key.startswith("in/")]
    assert [k for k in outside_input if not re.search("/_(manifest|report)/", k)] == [
        "deep/out/fine/ok.png"
    ]
    assert f"unsafe-key={len(listed) - 1}" in capfd.readouterr().out


def _listening_addresses(pids: set[int]) -> list[tuple[int, str, int]]:
    import psutil

    found = []
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for connection in connections:
            if connection.status == psutil.CONN_LISTEN:
                found.append((pid, connection.laddr.ip, connection.laddr.port))
    return found


def test_in_process_ray_listens_on_loopback_only(ray_local):
    """``init_ray`` (the laptop path every job takes without ``--address``): the driver, GCS,
    raylet, workers and agents it starts listen on 127.0.0.1 only, the GCS port among them."""
    import psutil
    import ray

    ray.get(ray.remote(lambda: os.getpid()).remote())  # make sure a worker is up
    me = psutil.Process()
    ray_pids = {me.pid} | {
        child.pid
        for child in me.children(recursive=True)
        if "ray" in " ".join(child.cmdline()).lower()
    }
    assert len(ray_pids) >= 3
    listeners = _listening_addresses(ray_pids)
    gcs_port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
    assert gcs_port in {port for _, _, port in listeners}
    assert len(listeners) >= 4
    loopback = ("127.0.0.1", "::ffff:127.0.0.1", "::1")
    outside = [entry for entry in listeners if entry[1] not in loopback]
    assert outside == []

"""Prepare and enhance over the nasty-input corpus (``build_nasty_corpus``: 67 truncated, empty,
mislabelled, bomb, animated, extreme-shape, odd-encoding and awkward-key files): every file ends
as exactly one shard row / rejected row (prepare, read from SeaweedFS) or one manifest row
(enhance, from a local folder) with the expected reason, the job exits 0, and every valid file
yields its output. The per-reason counts are printed for BENCHMARKS.md."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from enlightengan.checkpoint import save_checkpoint
from enlightengan.config import tiny_config
from enlightengan.generator import Generator
from pipelines.cli import main
from pipelines.enhance.sink import read_manifest
from pipelines.io import storage
from pipelines.io.images import decode_image
from tests.fixtures.bad_files import build_nasty_corpus
from tests.fixtures.photos import upload_folder

CORPUS = build_nasty_corpus()
ACCEPTED = "accepted"


def write_nasty_corpus(directory: Path) -> Path:
    for entry in CORPUS:
        path = directory / entry.key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(entry.data)
    return directory


def save_tiny_checkpoint(directory: Path) -> Path:
    """A real (untrained) tiny generator checkpoint: enhance only needs it to load and run."""
    torch.manual_seed(11)
    config = tiny_config()
    generator = Generator(config.generator)
    return save_checkpoint(directory, config=config, networks={"generator": generator})


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_nasty_corpus(tmp_path_factory.mktemp("nasty"))


def report_counts(capsys, job: str, outcomes: dict[str, str]) -> None:
    counts = dict(sorted(Counter(outcomes.values()).items()))
    with capsys.disabled():
        print(f"\n{job} over the nasty corpus ({len(outcomes)} files): {counts}")


def test_corpus_is_big_and_varied():
    keys = [entry.key for entry in CORPUS]
    assert len(keys) == len(set(keys)) >= 30
    reasons = {entry.prepare_reason for entry in CORPUS} | {e.enhance_reason for e in CORPUS}
    assert {"truncated", "empty-file", "not-an-image", "decompression-bomb", "corrupt"} <= reasons
    assert {"animated", "too-small", "unsafe-key", None} <= reasons
    assert sum(entry.enhance_reason is None for entry in CORPUS) >= 25


def test_prepare_from_seaweedfs_gives_every_file_one_row_with_its_reason(
    ray_local, s3_env, photo_bucket, corpus_dir, capsys
):
    bucket = s3_env.make_bucket("nasty")
    uploaded = upload_folder(corpus_dir, s3_env.filesystem(), f"{bucket}/low")
    assert sorted(uploaded) == sorted(entry.key for entry in CORPUS)
    out = storage.resolve(f"s3://{bucket}/prepared")
    argv = ["prepare", "--low", f"s3://{bucket}/low", "--normal", f"{photo_bucket}/normal"]
    assert main([*argv, "--output", out.uri, "--images-per-task", "8"]) == 0
    printed = capsys.readouterr()
    assert f"{len(CORPUS) + 4} images in" in printed.out

    outcomes: dict[str, str] = {}
    for key in storage.list_files(out.child("low"), (".parquet",)):
        table = pq.read_table(out.child(f"low/{key}").path, filesystem=out.filesystem)
        for row in table.select(["key", "width", "height"]).to_pylist():
            assert row["key"] not in outcomes, f"{row['key']!r} written twice"
            outcomes[row["key"]] = ACCEPTED
    rejected = pq.read_table(out.child("rejected.parquet").path, filesystem=out.filesystem)
    for row in rejected.to_pylist():
        assert row["domain"] == "low", row
        assert row["key"] not in outcomes, f"{row['key']!r} has two rows"
        outcomes[row["key"]] = row["reason"]
        assert row["detail"] is None or s3_env.secret_key not in row["detail"]
    expected = {entry.key: entry.prepare_reason or ACCEPTED for entry in CORPUS}
    assert outcomes == expected

    manifest = storage.read_bytes(out.child("manifest.json")).decode()
    for reason, count in Counter(expected.values()).items():
        if reason != ACCEPTED:
            assert f'"{reason}": {count}' in manifest
    assert f'"written": {sum(r == ACCEPTED for r in expected.values())}' in manifest
    report_counts(capsys, "prepare", outcomes)


def test_enhance_from_a_folder_gives_every_file_one_row_and_every_valid_file_an_output(
    ray_local, corpus_dir, tmp_path, capsys
):
    checkpoint = save_tiny_checkpoint(tmp_path / "checkpoint")
    output = tmp_path / "enhanced"
    argv = ["enhance", "--checkpoint", str(checkpoint), "--input", str(corpus_dir)]
    assert main([*argv, "--output", str(output), "--batch-size", "4"]) == 0
    valid = [entry for entry in CORPUS if entry.enhance_reason is None]
    summary = capsys.readouterr().out
    assert f"enhanced: {len(valid)}  skipped: 0  failed: {len(CORPUS) - len(valid)}" in summary

    rows = read_manifest(storage.resolve(output).filesystem, str(output / "_manifest")).to_pylist()
    assert sorted(row["key"] for row in rows) == sorted(entry.key for entry in CORPUS)
    outcomes = {row["key"]: row["reason"] or row["status"] for row in rows}
    assert outcomes == {entry.key: entry.enhance_reason or "enhanced" for entry in CORPUS}

    written = sorted(
        path.relative_to(output).as_posix()
        for path in output.rglob("*")
        if path.is_file() and not {"_manifest", "_report"} & set(path.parts)
    )
    assert written == sorted(entry.key for entry in valid)
    by_key = {row["key"]: row for row in rows}
    for entry in valid:
        expected = decode_image(entry.data).array.shape[:2]
        data = (output / entry.key).read_bytes()
        assert decode_image(data).array.shape[:2] == expected, entry.key
        assert by_key[entry.key]["output_bytes"] == len(data)
    assert not list(tmp_path.rglob("escape.jpg"))
    report_counts(capsys, "enhance", outcomes)

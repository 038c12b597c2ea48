"""prepare end to end with real Ray, a real SeaweedFS bucket and real photos, and from folders."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.io import storage
from pipelines.io.images import ResizePolicy, decode_for_training, decode_png
from pipelines.io.shards import check_prepared, read_domain, read_manifest
from pipelines.prepare.job import PrepareSettings, _ProcessBatch, prepare
from tests.fixtures.bad_files import build_bad_files, write_corpus
from tests.fixtures.photos import upload_folder

CORPUS = build_bad_files()
EXPECTED_REASONS = {
    "empty-file": 1,
    "not-an-image": 2,
    "truncated": 1,
    "decompression-bomb": 1,
    "too-small": 1,
    "animated": 1,
}


@pytest.fixture(scope="module")
def mixed_source(tmp_path_factory, photo_dataset):
    """Photo set plus the bad-file corpus inside low/, plus a byte-identical copy in normal/."""
    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(photo_dataset.root, root, dirs_exist_ok=True)
    write_corpus(root / "low" / "corpus", CORPUS)
    (root / "normal" / "copies").mkdir()
    shutil.copy(root / "normal" / "flower.png", root / "normal" / "copies" / "flower copy.png")
    return root


def _shard_table(out: str, domain: str) -> pa.Table:
    location = storage.resolve(out).child(domain)
    paths = [location.child(key).path for key in storage.list_files(location, (".parquet",))]
    return pa.concat_tables(pq.read_table(p, filesystem=location.filesystem) for p in paths)


def _check_output(out: str, source_root, manifest: dict) -> None:
    accepted_corpus = sum(entry.expected_reason is None for entry in CORPUS)
    low = manifest["domains"]["low"]
    normal = manifest["domains"]["normal"]
    assert (low["found"], low["written"], low["rejected"]) == (5 + len(CORPUS), 5 + 8, 7)
    assert accepted_corpus == 8
    assert (normal["found"], normal["written"], normal["duplicates"]) == (5, 4, 1)
    assert manifest["rejected"] == {"total": 7, "by_reason": dict(sorted(EXPECTED_REASONS.items()))}
    assert manifest["status"] == "complete" and manifest["images_written"] == 17
    assert manifest["settings"]["policy"]["min_side"] == 320
    assert {"ray", "pillow", "pyarrow"} <= set(manifest["versions"])

    policy = ResizePolicy()
    stored = sum(
        len(image) for d in ("low", "normal") for image in _shard_table(out, d)["image"].to_pylist()
    )
    assert manifest["image_bytes_written"] == stored
    for domain in ("low", "normal"):
        table = _shard_table(out, domain)
        assert table.column_names == ["key", "image", "height", "width", "uri", "sha256"]
        keys = table.column("key").to_pylist()
        assert len(keys) == len(set(keys)) == manifest["domains"][domain]["written"]
        for row in table.to_pylist():
            source = (source_root / domain / row["key"]).read_bytes()
            assert row["sha256"] == hashlib.sha256(source).hexdigest()
            assert row["uri"].endswith(f"{domain}/{row['key']}")
            pixels = decode_png(row["image"])
            assert pixels.shape == (row["height"], row["width"], 3)
            expected, decoded = decode_for_training(source, policy)
            assert np.array_equal(pixels, expected), row["key"]
            width, height = decoded.original_size
            assert min(row["height"], row["width"]) >= 320
            assert max(row["height"], row["width"]) <= max(600, max(width, height))
            assert abs(row["width"] / row["height"] - width / height) < 0.01 * width / height
    rejected = pq.read_table(
        storage.resolve(out).child("rejected.parquet").path,
        filesystem=storage.resolve(out).filesystem,
    ).to_pylist()
    by_key = {(row["domain"], row["key"]): row["reason"] for row in rejected}
    for entry in CORPUS:
        assert by_key.get(("low", f"corpus/{entry.key}")) == entry.expected_reason
    # The smallest key keeps its row, whichever task saw its copy first.
    assert by_key.get(("normal", "copies/flower copy.png")) is None
    assert by_key[("normal", "flower.png")] == "duplicate"
    details = {(row["domain"], row["key"]): row["detail"] for row in rejected}
    assert details[("normal", "flower.png")] == "copies/flower copy.png"


def test_prepare_from_s3_end_to_end_and_rerun_replaces(s3_env, ray_local, mixed_source):
    bucket = s3_env.make_bucket("prepare")
    upload_folder(mixed_source, s3_env.filesystem(), f"{bucket}/in")
    out = f"s3://{bucket}/prepared"
    first = prepare(f"s3://{bucket}/in/low", f"s3://{bucket}/in/normal", out)
    # Keys in the bucket are the local relative paths, so the local tree holds the source bytes.
    _check_output(out, mixed_source, first)

    second = prepare(f"s3://{bucket}/in/low", f"s3://{bucket}/in/normal", out)
    for domain in ("low", "normal"):
        assert _shard_table(out, domain).num_rows == first["domains"][domain]["written"]
        listed = storage.list_files(f"{out}/{domain}", (".parquet",))
        assert listed == second["domains"][domain]["shards"]
    assert read_manifest(out)["duration_s"] == second["duration_s"]

    images = {row["key"]: row["image"] for row in read_domain(out, "normal").iter_rows()}
    flower = {"flower.png", "copies/flower copy.png"} & set(images)
    assert flower == {"copies/flower copy.png"} and len(images) == 4
    assert {"animals/chelsea.png", "street/motorcycle.jpg", "sky/deep/hubble.jpg"} < set(images)
    assert images["animals/chelsea.png"].shape == (399, 600, 3)
    assert images["animals/chelsea.png"].dtype == np.uint8
    batches = list(read_domain(out, "low").iter_batches(batch_size=4, batch_format="numpy"))
    assert sum(len(batch["key"]) for batch in batches) == 13


def test_prepare_from_local_folders_via_cli(ray_local, mixed_source, tmp_path, capsys):
    out = tmp_path / "prepared"
    (out / "low").mkdir(parents=True)
    (out / "low" / "stale.parquet").write_bytes(b"left over from an older run")
    (out / "manifest.json").write_text('{"status": "complete"}')
    args = ["prepare", "--low", str(mixed_source / "low"), "--normal", str(mixed_source / "normal")]
    assert main([*args, "--output", str(out), "--dry-run"]) == 0
    assert "low: 20 images" in capsys.readouterr().out
    assert main([*args, "--output", f"file://{out}"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "low" / "stale.parquet").exists()
    assert main([*args, "--output", f"file://{out}", "--images-per-task", "4", "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "25 images in" in printed and "17 written" in printed and "truncated 1" in printed
    assert not (out / "low" / "stale.parquet").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    _check_output(str(out), mixed_source, manifest)
    assert check_prepared(str(out))["images_written"] == 17


def test_upscale_setting_keeps_small_images(ray_local, mixed_source, tmp_path):
    settings = PrepareSettings(policy=ResizePolicy(small="upscale"), dedup=False)
    manifest = prepare(
        str(mixed_source / "low" / "corpus"), str(mixed_source / "normal"), str(tmp_path), settings
    )
    assert "too-small" not in manifest["rejected"]["by_reason"]
    assert manifest["domains"]["normal"]["written"] == 5
    small = _shard_table(str(tmp_path), "low").to_pylist()
    row = next(r for r in small if r["key"] == "broken/small.jpg")
    assert (row["width"], row["height"]) == (481, 320)


def test_prepare_leaves_the_drivers_data_context_as_it_was(ray_local, mixed_source, tmp_path):
    """Task retries and the write stage's reservation are settings of prepare's own dataset:
    the next job of the same driver starts from the DataContext it had before."""
    from ray.data import DataContext

    def settings() -> tuple:
        context = DataContext.get_current()
        return (
            context.max_map_retries,
            context.retried_map_errors,
            context.raise_original_map_exception,
            context.op_resource_reservation_enabled,
        )

    before = settings()
    prepare(str(mixed_source / "normal"), str(mixed_source / "normal"), str(tmp_path))
    assert settings() == before


def test_unreadable_and_oversized_objects_become_rejected_rows(s3_env, tmp_path):
    bucket = s3_env.make_bucket("unreadable")
    location = storage.resolve(f"s3://{bucket}/low")
    photo = CORPUS[-1].data
    storage.write_bytes(location.child("gone.jpg"), photo)
    storage.write_bytes(location.child("kept.jpg"), photo)
    storage.write_bytes(location.child("huge.jpg"), photo + b"\0" * len(photo))
    keys = storage.list_files(location)
    storage.delete_file(location.child("gone.jpg"))
    settings = PrepareSettings(dedup=False, max_file_mb=1.5 * len(photo) / 1e6)
    process = _ProcessBatch({"low": location}, settings)
    result = process(pa.table({"domain": ["low"] * len(keys), "key": keys})).to_pylist()
    outcome = {row["key"]: (row["reason"], row["image"] is not None) for row in result}
    assert outcome == {
        "gone.jpg": ("unreadable", False),
        "huge.jpg": ("too-large", False),
        "kept.jpg": (None, True),
    }


def test_missing_inputs_and_unprepared_data_are_user_errors(ray_local, tmp_path, mixed_source):
    with pytest.raises(UserError, match="no images"):
        prepare(str(tmp_path / "empty"), str(mixed_source / "normal"), str(tmp_path / "o"))
    with pytest.raises(UserError, match="run `enlightengan prepare` first"):
        read_manifest(str(tmp_path / "o"))
    with pytest.raises(UserError, match="no low shards"):
        read_domain(str(tmp_path / "o"), "low")
    only_bad = str(mixed_source / "low" / "corpus" / "broken")
    args = ["prepare", "--low", only_bad, "--normal", str(mixed_source / "normal")]
    assert main([*args, "--output", str(tmp_path / "o")]) == 1
    with pytest.raises(UserError, match="no low shards"):
        check_prepared(str(tmp_path / "o"))

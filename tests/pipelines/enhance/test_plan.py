"""pipelines.enhance.plan: collisions found on a sorted stream, the resume index, the skip check,
and that Ray Data streams the listing instead of holding it to the end (real local Ray)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from pyarrow import fs as pafs

from pipelines.enhance.job import _configure
from pipelines.enhance.plan import (
    CollisionGuard,
    KeyRules,
    ManifestTarget,
    build_resume_index,
    check_finished,
    file_infos,
    list_work,
    output_key_for,
)
from pipelines.enhance.sink import (
    MANIFEST_DIR,
    manifest_row,
    read_manifest,
    write_manifest_part,
)
from pipelines.inference.darkness import DEFAULT_DARK_THRESHOLD, DarkPolicy, darkness_stats
from pipelines.io.listing import UNREADABLE, ListingSource
from tests.fixtures.photos import wheel_photo


def _binary(key: str) -> str:
    return key


def _folders_first(key: str) -> list[str]:
    """The order of stores that walk a directory tree (SeaweedFS): each folder's names sorted."""
    return key.split("/")


def _guarded(keys: list[str], output_format: str, order=_binary) -> set[str]:
    guard = CollisionGuard()
    return {
        key
        for key in sorted(keys, key=order)
        if not guard.claim(key, output_key_for(key, output_format))
    }


def _reference(keys: list[str], output_format: str, order=_binary) -> set[str]:
    """Collisions with every output key ever claimed kept in memory."""
    claimed, losers = set(), set()
    for key in sorted(keys, key=order):
        output_key = output_key_for(key, output_format)
        if output_key in claimed:
            losers.add(key)
        claimed.add(output_key)
    return losers


def test_collision_guard_first_key_in_order_keeps_the_output():
    keys = ["a.jpg", "a.jpeg", "a.png", "a.PNG", "a/b.jpg", "a-b.jpg", "b.png"]
    assert _guarded(keys, "png") == {"a.jpg", "a.png"}  # "a.PNG" keeps its own key
    assert _guarded(["x.png", "x.jpeg", "x.jpg"], "jpeg") == {"x.png"}
    # A key without an extension waits for its "stem." run across keys sorting in between,
    # also across a folder of the same name, which a directory-tree store lists in between.
    assert _guarded(["c", "c-1.jpg", "c.png"], "png") == {"c.png"}
    assert _guarded(["c", "c/d.jpg", "c.jpeg"], "png", _folders_first) == {"c.jpeg"}


def test_collision_guard_matches_the_whole_memory_reference_on_random_keys():
    rng = random.Random(7)
    parts = ["a", "b", "a.b", "a-b", "ab"]
    extensions = ["", ".jpg", ".jpeg", ".png", ".PNG", ".b"]
    for _ in range(300):
        keys = {
            "/".join(rng.choice(parts) for _ in range(rng.randint(1, 3))) + rng.choice(extensions)
            for _ in range(rng.randint(1, 40))
        }
        for output_format in ("png", "jpeg"):
            for order in (_binary, _folders_first):
                expected = _reference(list(keys), output_format, order)
                assert _guarded(list(keys), output_format, order) == expected


def _manifest(root, rows_by_run: dict[str, list[tuple]]):
    """Rows ``(key, output_key, status, output_bytes[, darkness])`` per run id."""
    for run_id, rows in rows_by_run.items():
        rows = [manifest_row(k, o, status, output_bytes=size, run_id=run_id,
                             darkness=rest[0] if rest else math.nan)
                for k, o, status, size, *rest in rows]  # fmt: skip
        write_manifest_part(
            pafs.LocalFileSystem(), f"{root}/{MANIFEST_DIR}", f"{run_id}.parquet", rows
        )


def test_resume_index_keeps_the_latest_finished_row_across_chunks(ray_local, tmp_path):
    keys = [f"k{i:03d}.jpg" for i in range(20)]
    _manifest(
        tmp_path,
        {
            "20260101T000000-aaaaaa": [(k, k, "enhanced", 100 + i) for i, k in enumerate(keys)],
            "20260102T000000-bbbbbb": [
                ("k003.jpg", "k003.jpg", "enhanced", 7),  # redone with --overwrite: latest wins
                ("k004.jpg", "k004.jpg", "failed", 0),  # a later failure keeps the earlier size
                ("k005.jpg", "k005.png", "enhanced", 55),  # same key, other format
                ("k006.jpg", "k006.jpg", "skipped", 106),
            ],
        },
    )
    index = build_resume_index(pafs.LocalFileSystem(), f"{tmp_path}/{MANIFEST_DIR}", chunk_rows=3)
    assert len(index.chunks) >= 6 and index.first_keys == sorted(index.first_keys)
    expected = {k: 100 + i for i, k in enumerate(keys)} | {"k003.jpg": 7}
    assert [index.recorded(k, k)[:2] for k in keys] == [("enhanced", expected[k]) for k in keys]
    assert index.recorded("k005.jpg", "k005.png")[:2] == ("enhanced", 55)
    assert index.recorded("k019.jpg", "k019.png")[:2] == ("", 0)
    assert index.recorded("a-before-all.jpg", "a-before-all.jpg")[:2] == ("", 0)
    assert index.recorded("zzz.jpg", "zzz.jpg")[:2] == ("", 0)
    # Out of order lookups are still right (they reload chunks).
    assert index.recorded("k001.jpg", "k001.jpg")[:2] == ("enhanced", 101)


def test_resume_index_records_how_each_output_was_decided_and_its_darkness(ray_local, tmp_path):
    _manifest(
        tmp_path,
        {
            "20260101T000000-aaaaaa": [
                ("dark.jpg", "dark.jpg", "enhanced", 50, 0.9),
                ("day.jpg", "day.jpg", "copied", 70, 0.2),
                ("noon.jpg", "noon.jpg", "not-dark", 0, 0.1),
                ("old.jpg", "old.jpg", "enhanced", 30),  # a manifest from before the scores
            ],
            "20260102T000000-bbbbbb": [
                ("dark.jpg", "dark.jpg", "skipped", 50, 0.9),  # repeats, never decides
                ("day.jpg", "day.jpg", "enhanced", 90, 0.2),  # a later run without --only-dark
            ],
        },
    )
    index = build_resume_index(pafs.LocalFileSystem(), f"{tmp_path}/{MANIFEST_DIR}")
    assert index.recorded("dark.jpg", "dark.jpg") == ("enhanced", 50, 0.9)
    assert index.recorded("day.jpg", "day.jpg") == ("enhanced", 90, 0.2)
    assert index.recorded("noon.jpg", "noon.jpg") == ("not-dark", 0, 0.1)
    status, size, darkness = index.recorded("old.jpg", "old.jpg")
    assert (status, size) == ("enhanced", 30) and math.isnan(darkness)


def test_resume_index_forgets_darkness_scored_the_old_way(ray_local, tmp_path):
    """Manifests from before issue 26 recorded ``1 - luma_p95 / 255`` as darkness: unknown now."""
    night, day = darkness_stats(_lamp_lit_night()), darkness_stats(wheel_photo("chelsea"))
    old_night = round(1 - night["luma_p95"] / 255, 4)  # what the old score recorded
    run = "20260101T000000-aaaaaa"
    rows = [
        manifest_row("night.jpg", "night.jpg", "not-dark", run_id=run,
                     **{**night, "darkness": old_night}),
        manifest_row("day.jpg", "day.jpg", "not-dark", run_id=run, **day),
    ]  # fmt: skip
    write_manifest_part(
        pafs.LocalFileSystem(), f"{tmp_path}/{MANIFEST_DIR}", f"{run}.parquet", rows
    )
    assert old_night < DEFAULT_DARK_THRESHOLD <= night["darkness"]
    index = build_resume_index(pafs.LocalFileSystem(), f"{tmp_path}/{MANIFEST_DIR}")
    status, _, darkness = index.recorded("night.jpg", "night.jpg")
    assert status == "not-dark" and math.isnan(darkness)
    assert index.recorded("day.jpg", "day.jpg") == ("not-dark", 0, day["darkness"])
    # So --only-dark skip reads the night photo again and leaves the day one out.
    batch = _batch([("night.jpg", "night.jpg", 0, "not-dark", darkness),
                    ("day.jpg", "day.jpg", 0, "not-dark", day["darkness"])])  # fmt: skip
    checked = check_finished(
        batch, pafs.LocalFileSystem(), str(tmp_path), policy=DarkPolicy("skip")
    )
    assert list(checked["status"]) == ["pending", "not-dark"]


def _lamp_lit_night() -> np.ndarray:
    """Chelsea four stops under, in linear light, with a lamp over a tenth of the frame."""
    photo = wheel_photo("chelsea").astype(np.float64) / 255.0
    night = np.round((photo**2.2 / 16) ** (1 / 2.2) * 255).astype(np.uint8)
    night[:, : night.shape[1] // 10] = 250
    return night


def test_resume_index_of_an_output_without_manifest_is_none(ray_local, tmp_path):
    assert build_resume_index(pafs.LocalFileSystem(), f"{tmp_path}/{MANIFEST_DIR}") is None


def _batch(rows: list[tuple]) -> dict[str, np.ndarray]:
    """Planned rows ``(key, output_key, recorded_bytes[, recorded_status, darkness])``."""

    def column(values):
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array

    rows = [(*row, "enhanced" if row[2] else "", math.nan)[:5] for row in rows]
    return {
        "key": column([row[0] for row in rows]),
        "output_key": column([row[1] for row in rows]),
        "status": column(["pending"] * len(rows)),
        "reason": column([""] * len(rows)),
        "recorded_status": column([row[3] for row in rows]),
        "recorded_bytes": np.array([row[2] for row in rows], dtype=np.int64),
        "recorded_darkness": np.array([row[4] for row in rows], dtype=np.float64),
    }


def test_check_finished_skips_only_outputs_with_the_recorded_size(tmp_path):
    (tmp_path / "done.jpg").write_bytes(b"x" * 10)
    (tmp_path / "cut.jpg").write_bytes(b"x" * 4)
    (tmp_path / "orphan.jpg").write_bytes(b"x" * 10)
    batch = _batch([("done.jpg", "done.jpg", 10), ("cut.jpg", "cut.jpg", 10),
                    ("orphan.jpg", "orphan.jpg", 0), ("gone.jpg", "gone.jpg", 10)])  # fmt: skip
    filesystem = pafs.LocalFileSystem()
    counted = check_finished(batch, filesystem, str(tmp_path))
    assert list(counted["status"]) == ["skipped", "pending", "pending", "pending"]
    assert not (tmp_path / MANIFEST_DIR).exists()

    target = ManifestTarget(filesystem, str(tmp_path), "run-x")
    kept = check_finished(batch, filesystem, str(tmp_path), target)
    assert list(kept["key"]) == ["cut.jpg", "orphan.jpg", "gone.jpg"]
    rows = read_manifest(filesystem, f"{tmp_path}/{MANIFEST_DIR}").to_pylist()
    assert [(row["key"], row["status"], row["output_bytes"]) for row in rows] == [
        ("done.jpg", "skipped", 10)
    ]
    # A retried task writes the same part again, not a second one.
    check_finished(batch, filesystem, str(tmp_path), target)
    assert len(list((tmp_path / MANIFEST_DIR).glob("*.parquet"))) == 1


def test_check_finished_follows_the_only_dark_policy_of_this_run(tmp_path):
    for name, size in (("dark.jpg", 10), ("day.jpg", 20), ("noon.jpg", 30)):
        (tmp_path / name).write_bytes(b"x" * size)
    batch = _batch(
        [
            ("dark.jpg", "dark.jpg", 10, "enhanced", 0.9),
            ("day.jpg", "day.jpg", 20, "copied", 0.2),
            ("noon.jpg", "noon.jpg", 30, "enhanced", 0.1),  # enhanced by a run without the rule
            ("night.jpg", "night.jpg", 0, "not-dark", 0.8),  # the threshold was higher then
            ("new.jpg", "new.jpg", 0, "", math.nan),
        ]
    )
    filesystem = pafs.LocalFileSystem()

    def statuses(policy):
        return list(check_finished(batch, filesystem, str(tmp_path), policy=policy)["status"])

    assert statuses(None) == ["skipped", "pending", "skipped", "pending", "pending"]
    assert statuses(DarkPolicy("copy", 0.5)) == [
        "skipped", "skipped", "pending", "pending", "pending"
    ]  # fmt: skip
    assert statuses(DarkPolicy("skip", 0.5)) == [
        "skipped", "not-dark", "not-dark", "pending", "pending"
    ]  # fmt: skip
    assert statuses(DarkPolicy("skip", 0.95))[:4] == ["not-dark"] * 4

    target = ManifestTarget(filesystem, str(tmp_path), "run-z")
    kept = check_finished(batch, filesystem, str(tmp_path), target, DarkPolicy("skip", 0.5))
    assert list(kept["key"]) == ["night.jpg", "new.jpg"]
    rows = read_manifest(filesystem, f"{tmp_path}/{MANIFEST_DIR}").to_pylist()
    assert sorted((r["key"], r["status"], r["output_bytes"], r["darkness"]) for r in rows) == [
        ("dark.jpg", "skipped", 10, 0.9),
        ("day.jpg", "not-dark", 0, 0.2),
        ("noon.jpg", "not-dark", 0, 0.1),
    ]


def test_list_work_marks_unusable_keys_and_filters_extensions(tmp_path):
    for key in ["a.jpg", "a.png", "_manifest/x.png", "_report/r.png", "notes.txt", "out/o.jpg",
                "b.JPEG"]:  # fmt: skip
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(b"x")
    rules = KeyRules(str(tmp_path), "png", (".jpg", ".jpeg", ".png"), "out/")
    batches = list(list_work({}, ListingSource(str(tmp_path)), rules, None, page_size=2))
    rows = [
        (key, output_key, status, reason)
        for batch in batches
        for key, output_key, status, reason in zip(
            batch["key"], batch["output_key"], batch["status"], batch["reason"], strict=True
        )
    ]
    assert rows == [
        ("_manifest/x.png", "_manifest/x.png", "failed", "reserved-key"),
        ("_report/r.png", "_report/r.png", "failed", "reserved-key"),
        ("a.jpg", "a.png", "pending", ""),
        ("a.png", "a.png", "failed", "output-key-collision"),
        ("b.JPEG", "b.png", "pending", ""),
    ]


def test_list_work_records_unusable_keys_itself_so_only_images_leave(tmp_path):
    source = tmp_path / "in"
    (source / "x").mkdir(parents=True)
    for name in ["a.jpg", "a.png", "b.jpg", "caf\udce9.jpg"]:  # the last: Latin-1 bytes on disk
        (source / "x" / name).write_bytes(b"x")
    filesystem = pafs.LocalFileSystem()
    target = ManifestTarget(filesystem, str(tmp_path / "out"), "run-y")
    rules = KeyRules(str(tmp_path / "out"), "png", (".jpg", ".png"))
    batches = list(list_work({}, ListingSource(str(source)), rules, None, 2, target))
    assert [key for batch in batches for key in batch["key"]] == ["x/a.jpg", "x/b.jpg"]
    assert {status for batch in batches for status in batch["status"]} == {"pending"}
    rows = read_manifest(filesystem, f"{tmp_path}/out/{MANIFEST_DIR}").to_pylist()
    assert sorted((row["key"], row["reason"]) for row in rows) == [
        ("x/a.png", "output-key-collision"),
        ("x/caf\\xe9.jpg", "undecodable-key"),
    ]


class _SourceWithAnUnreadableFolder(ListingSource):
    """A listing as a user without read permission on ``locked/`` gets it (tests run as root,
    who can read every folder)."""

    def pages(self, page_size=1000):
        yield [("a.jpg", 3), ("locked/", UNREADABLE), ("z.txt", 1)]


def test_an_unreadable_folder_becomes_one_failed_row(tmp_path):
    rules = KeyRules(str(tmp_path / "out"), "same", (".jpg",))
    batches = list(list_work({}, _SourceWithAnUnreadableFolder("unused"), rules, None, 10))
    rows = [
        row
        for batch in batches
        for row in zip(batch["key"], batch["status"], batch["reason"], strict=True)
    ]
    assert rows == [("a.jpg", "pending", ""), ("locked/", "failed", "unreadable-folder")]


@pytest.fixture(scope="module")
def many_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    for i in range(LISTED):
        (folder / f"{i:05d}-a-fairly-long-file-name-for-the-listing.jpg").touch()
    return folder


LISTED = 90000


@pytest.mark.parametrize("configured", [True, False])
def test_ray_data_streams_listing_pages_only_with_the_enhance_block_size(
    ray_local, many_files, tmp_path, configured
):
    """At Ray Data's default block size every page waits for the end of the listing and
    leaves as one block; with the enhance context pages leave while the listing goes on."""
    dataset = ray_local.data.from_items([{"root": str(many_files)}]).map_batches(
        list_work,
        fn_kwargs={
            "source": ListingSource(str(many_files)),
            "rules": KeyRules(str(tmp_path / "out")),
            "resume": None,
            "page_size": 1000,
        },
        batch_size=1,
        batch_format="numpy",
    )
    if configured:
        _configure(dataset.context)
    sizes = [len(b["key"]) for b in dataset.iter_batches(batch_size=None, batch_format="numpy")]
    assert sum(sizes) == LISTED
    if configured:
        assert len(sizes) >= 2 and max(sizes) < LISTED
    else:
        assert sizes == [LISTED]


def test_file_infos_on_s3_asks_in_parallel_and_keeps_the_order(s3_env):
    bucket = s3_env.make_bucket("stat")
    filesystem = s3_env.filesystem()
    paths = [f"{bucket}/out/{i:03d}.jpg" for i in range(100)]
    for i, path in enumerate(paths):
        if i % 3:
            with filesystem.open_output_stream(path) as stream:
                stream.write(b"x" * i)
    infos = file_infos(filesystem, paths)
    assert [info.path for info in infos] == paths
    assert [info.size if i % 3 else info.type for i, info in enumerate(infos)] == [
        i if i % 3 else pafs.FileType.NotFound for i in range(100)
    ]

"""pipelines.io.listing: sorted, paged, lazy listing of local folders and a real SeaweedFS bucket."""

from __future__ import annotations

import shutil
import socket

import pytest

from pipelines.io import storage
from pipelines.io.listing import UNREADABLE, ListingSource
from pipelines.io.retries import is_transient
from pipelines.io.s3_clients import S3Access

# Names whose sort order differs between "per directory" and "whole key" sorting: '-' and '.'
# sort before '/', so "a-b.jpg" and "a.jpg" come before everything inside "a/".
KEYS = ["a-b.jpg", "a.jpg", "a.png", "a/b.jpg", "a/c/d.jpg", "a0.jpg", "b.jpg", "ünï.png", "Z.JPG"]


def _write(root, keys):
    for key in keys:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(key.encode() * 3)


def _keys(source: ListingSource, page_size: int = 1000) -> list[tuple[str, int]]:
    return [item for page in source.pages(page_size) for item in page]


def test_local_listing_is_in_whole_key_order_with_sizes_and_no_hidden_files(tmp_path):
    _write(tmp_path, [*KEYS, ".hidden.jpg", "a/.cache/x.jpg"])
    listed = _keys(ListingSource(str(tmp_path)))
    assert [key for key, _ in listed] == sorted(KEYS)
    assert dict(listed) == {key: 3 * len(key.encode()) for key in KEYS}


def test_local_pages_have_the_asked_size(tmp_path):
    _write(tmp_path, [f"d{i % 3}/f{i:03d}.jpg" for i in range(25)])
    pages = list(ListingSource(str(tmp_path)).pages(page_size=10))
    assert [len(page) for page in pages] == [10, 10, 5]


def test_local_listing_is_lazy_it_walks_folders_only_as_pages_are_taken(tmp_path):
    _write(tmp_path, [f"d{folder}/f{i}.jpg" for folder in range(10) for i in range(5)])
    pages = ListingSource(str(tmp_path)).pages(page_size=5)
    first = next(pages)
    assert {key.split("/")[0] for key, _ in first} == {"d0"}
    # A walk that had listed everything up front would still return these folders' keys.
    for folder in range(5, 10):
        shutil.rmtree(tmp_path / f"d{folder}")
    rest = [(key, size) for page in pages for key, size in page]
    listed = {key.split("/")[0] for key, size in rest if size != UNREADABLE}
    assert listed == {f"d{folder}" for folder in range(1, 5)}
    # A folder gone by the time the walk reaches it is reported, not silently dropped.
    assert [key for key, size in rest if size == UNREADABLE] == [f"d{f}/" for f in range(5, 10)]


def test_unreadable_subfolder_is_skipped_not_fatal(tmp_path):
    _write(tmp_path, ["a/one.jpg", "b/two.jpg"])
    (tmp_path / "a").chmod(0)
    try:
        listed = [key for key, _ in _keys(ListingSource(str(tmp_path)))]
    finally:
        (tmp_path / "a").chmod(0o755)
    # root can read anything; as a normal user the folder comes back as one marked entry.
    assert listed in (["a/", "b/two.jpg"], ["a/one.jpg", "b/two.jpg"])


def test_s3_listing_pages_through_more_than_one_list_call_in_key_order(s3_env):
    bucket = s3_env.make_bucket("listing")
    root = storage.resolve(f"s3://{bucket}/in")
    many = [f"many/{i:04d}.jpg" for i in range(1005)]  # S3 answers 1,000 keys per call
    for key in [*KEYS, *many, ".hidden/x.jpg"]:
        storage.write_bytes(root.child(key), key.encode())
    storage.write_bytes(storage.resolve(f"s3://{bucket}/input-sibling/no.jpg"), b"x")
    source = ListingSource.of(root)
    listed = _keys(source, page_size=400)
    # AWS lists in UTF-8 binary order of the whole key; SeaweedFS (like other stores built on
    # a directory tree) walks folders with each one's names sorted. Both suit the later checks.
    keys = [key for key, _ in listed]
    assert keys in (sorted([*KEYS, *many]), sorted([*KEYS, *many], key=lambda k: k.split("/")))
    assert dict(listed)["a/c/d.jpg"] == len(b"a/c/d.jpg")
    assert [len(page) for page in source.pages(page_size=400)] == [400, 400, len(listed) - 800]


def test_s3_listing_source_never_shows_its_secret(s3_env):
    source = ListingSource.of(storage.resolve(f"s3://{s3_env.make_bucket('quiet')}"))
    assert s3_env.secret_key not in repr(source)
    assert s3_env.secret_key not in str(source)


def test_unreachable_s3_is_a_transient_error_so_ray_data_retries(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    access = S3Access("us-east-1", f"http://127.0.0.1:{port}", carried_keys=("key", "secret", None))
    source = ListingSource("bucket/prefix", access, attempts=1)
    with pytest.raises(OSError) as raised:
        next(source.pages())
    assert is_transient(raised.value)


def test_symlinked_folders_are_followed_but_not_into_a_loop(tmp_path):
    _write(tmp_path / "real", ["one.jpg"])
    _write(tmp_path / "root", ["a/two.jpg"])
    (tmp_path / "root" / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "root" / "a" / "loop").symlink_to(tmp_path / "root", target_is_directory=True)
    (tmp_path / "root" / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    keys = [key for key, _ in _keys(ListingSource(str(tmp_path / "root")))]
    assert keys == ["a/two.jpg", "linked/one.jpg"]

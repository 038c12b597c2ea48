"""pipelines.io.storage against a real SeaweedFS S3 server and the local filesystem."""

from __future__ import annotations

import pytest
from pyarrow import fs as pafs

from pipelines.errors import UserError
from pipelines.io import storage
from tests.fixtures.seaweed import all_keys, botocore_client


def test_local_paths_and_file_uris_resolve_to_the_same_place(tmp_path):
    plain = storage.resolve(str(tmp_path))
    as_uri = storage.resolve(f"file://{tmp_path}")
    assert plain.path == as_uri.path == str(tmp_path)
    assert isinstance(plain.filesystem, pafs.LocalFileSystem)


def test_local_write_read_list_delete(tmp_path):
    root = storage.resolve(tmp_path / "data")
    storage.write_bytes(root.child("a/b/one.JPG"), b"1")
    storage.write_bytes(root.child("two.png"), b"22")
    storage.write_bytes(root.child("notes.txt"), b"x")
    storage.write_bytes(root.child(".hidden/three.jpg"), b"x")
    assert storage.list_files(root) == ["a/b/one.JPG", "two.png"]
    assert storage.list_files(root, recursive=False) == ["two.png"]
    assert storage.read_bytes(root.child("two.png")) == b"22"
    assert [p.name for p in (tmp_path / "data").iterdir() if p.name.endswith(".tmp")] == []
    storage.delete_prefix(root.child("a"))
    assert not storage.exists(root.child("a/b/one.JPG"))
    assert storage.exists(root.child("two.png"))
    storage.delete_prefix(root.child("never-there"))


def test_s3_round_trip_on_real_server(s3_env):
    bucket = s3_env.make_bucket("storage")
    root = storage.resolve(f"s3://{bucket}/photos")
    storage.check_access(root)
    storage.write_bytes(root.child("nested/dir/Photo One.JPEG"), b"jpeg bytes")
    storage.write_bytes(root.child("ünïcødé.png"), b"png bytes")
    storage.write_bytes(root.child("readme.md"), b"text")
    assert storage.list_files(root) == ["nested/dir/Photo One.JPEG", "ünïcødé.png"]
    assert storage.read_bytes(root.child("ünïcødé.png")) == b"png bytes"
    assert storage.exists(root.child("readme.md"))
    storage.delete_prefix(root)
    assert storage.list_files(root, extensions=None) == []


def test_explicit_endpoint_setting_overrides_environment(s3_env, monkeypatch):
    bucket = s3_env.make_bucket("endpoint")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    options = storage.StorageOptions(endpoint_url=s3_env.endpoint_url)
    location = storage.resolve(f"s3://{bucket}/x", options)
    storage.write_bytes(location.child("k.jpg"), b"v")
    assert storage.list_files(location) == ["k.jpg"]


def test_profile_credentials_are_used(s3_server, tmp_path, monkeypatch):
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[lab]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent-config"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    bucket = s3_server.make_bucket("profile")
    location = storage.resolve(f"s3://{bucket}", storage.StorageOptions(profile="lab"))
    storage.write_bytes(location.child("p.png"), b"p")
    assert storage.list_files(location) == ["p.png"]
    with pytest.raises(UserError, match="profile 'other'"):
        storage.resolve(f"s3://{bucket}", storage.StorageOptions(profile="other"))


@pytest.mark.parametrize("wrong", ["secret", "access"])
def test_wrong_credentials_give_a_clear_error_without_the_secret(s3_env, monkeypatch, wrong):
    bucket = s3_env.make_bucket("denied")
    bad_secret = "not-the-secret-" + "x" * 20
    if wrong == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret)
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKNOSUCHKEY0000")
    location = storage.resolve(f"s3://{bucket}/in")
    with pytest.raises(UserError, match="refused the credentials") as caught:
        storage.check_access(location)
    with pytest.raises(UserError, match="refused the credentials"):
        storage.list_files(location)
    message = str(caught.value)
    assert bad_secret not in message and s3_env.secret_key not in message
    assert bad_secret not in repr(location) and s3_env.secret_key not in repr(location)


def test_missing_credentials_for_custom_endpoint_is_a_user_error(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UserError, match="no S3 credentials"):
        storage.resolve("s3://bucket/prefix")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "only-half")
    with pytest.raises(UserError, match="incomplete"):
        storage.resolve("s3://bucket/prefix")


def test_missing_bucket_is_a_user_error(s3_env):
    with pytest.raises(UserError, match="does not exist"):
        storage.list_files("s3://no-such-bucket-here/prefix")


@pytest.mark.parametrize(
    "key",
    [
        "../escape.jpg",
        "a/../../escape.jpg",
        "/etc/passwd",
        "a\\..\\b.jpg",
        "a/./b.jpg",
        "a//b.jpg",
        "nul\x00.jpg",
        "line\nbreak.jpg",
        "%2e%2e/escape.jpg",
        "a/%2E%2E/%2e%2e/x.jpg",
        "..%2fescape.jpg",
        "\uff0e\uff0e/escape.jpg",
        "C:/windows.jpg",
        "",
    ],
)
def test_safe_join_rejects_keys_that_could_escape(key):
    with pytest.raises(ValueError):
        storage.safe_join("bucket/out", key)


def test_safe_join_keeps_ordinary_keys():
    assert storage.safe_join("bucket/out/", "a b/ü 照片.jpg") == "bucket/out/a b/ü 照片.jpg"
    assert storage.safe_join("bucket/out", "x..y/v1.2..3.jpg") == "bucket/out/x..y/v1.2..3.jpg"


def test_display_uri_drops_embedded_secrets():
    assert storage.display_uri("s3://AKIA:topsecret@bucket/p?token=t") == "s3://bucket/p"
    assert storage.display_uri("/plain/path") == "/plain/path"


def test_fsspec_filesystem_reads_what_storage_wrote(s3_env):
    bucket = s3_env.make_bucket("fsspec")
    storage.write_bytes(f"s3://{bucket}/f/a.jpg", b"abc")
    filesystem, path = storage.fsspec_filesystem(f"s3://{bucket}/f")
    assert filesystem.cat_file(f"{path}/a.jpg") == b"abc"


def test_objects_carry_their_content_type_and_deletes_leave_no_folder_objects(s3_env):
    """Read back with a real S3 client: each object's Content-Type comes from its extension
    (SeaweedFS would guess some itself; AWS S3 and MinIO keep what the PUT said), and deleting
    leaves no zero-byte ``prefix/`` objects behind (pyarrow's own deletes write them)."""
    bucket = s3_env.make_bucket("types")
    client = botocore_client(s3_env.env())
    expected = {
        "out/a b/photo.JPG": "image/jpeg",
        "out/photo.jpeg": "image/jpeg",
        "out/plot.png": "image/png",
        "out/nested/deep/photo.webp": "image/webp",
        "out/shards/low/part-0.parquet": "application/vnd.apache.parquet",
        "out/manifest.json": "application/json",
        "out/metrics.jsonl": "application/jsonl",
        "out/weights.pt": "application/octet-stream",
    }
    for key in expected:
        storage.write_bytes(storage.resolve(f"s3://{bucket}/{key}"), b"data")
    for key, content_type in expected.items():
        assert client.head_object(Bucket=bucket, Key=key)["ContentType"] == content_type, key

    storage.delete_file(storage.resolve(f"s3://{bucket}/out/manifest.json"))
    storage.delete_file(storage.resolve(f"s3://{bucket}/out/nested/deep/photo.webp"))
    storage.delete_prefix(storage.resolve(f"s3://{bucket}/out/shards"))
    storage.delete_file(storage.resolve(f"s3://{bucket}/out/never-written.json"))
    assert all_keys(client, bucket) == sorted(
        key for key in expected if "manifest" not in key and "nested" not in key
        and "shards" not in key
    )  # fmt: skip

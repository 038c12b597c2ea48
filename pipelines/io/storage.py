"""URIs to filesystems: the one place that knows about local paths, ``file://`` and ``s3://``.

``resolve(uri)`` returns a :class:`Location`: a ``pyarrow.fs.FileSystem`` plus the path inside it.
The same filesystem object is what Ray Data (``read_*(filesystem=...)``,
``write_parquet(filesystem=...)``) and Ray Train (``RunConfig(storage_filesystem=...)``, with a
``storage_path`` that has no scheme) take, so every job reaches storage the same way.

S3 clients are built by :mod:`pipelines.io.s3_clients` from the AWS SDK's credential chain (keys,
profiles, SSO, ``credential_process``, roles; refreshed when temporary); ``--endpoint-url``,
``--profile`` and ``--region`` override what the environment and the profile say. Secrets are
never put in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
import posixpath
import re
import unicodedata
import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

from pyarrow import fs as pafs

from pipelines.errors import UserError
from pipelines.io import s3_clients
from pipelines.io.formats import IMAGE_EXTENSIONS

_CREDENTIAL_ERRORS = (
    "ACCESS_DENIED",
    "INVALID_ACCESS_KEY_ID",
    "SIGNATURE_DOES_NOT_MATCH",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "EXPIRED_TOKEN",
)


@dataclass(frozen=True)
class StorageOptions:
    """Explicit storage settings; anything left ``None`` comes from the AWS environment."""

    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    credentials_file: str | None = None


@dataclass(frozen=True)
class Location:
    """A place in storage: ``filesystem`` (pyarrow) and ``path`` inside it (``bucket/prefix`` for
    S3, an absolute path locally). ``uri`` is what the user wrote, safe to print."""

    filesystem: pafs.FileSystem = field(repr=False, compare=False)
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def is_s3(self) -> bool:
        return s3_clients.is_s3_filesystem(self.filesystem)

    def child(self, key: str) -> Location:
        """The location of relative ``key`` under this one (``key`` is checked by ``safe_join``)."""
        return Location(
            self.filesystem, safe_join(self.path, key), safe_join(self.uri.rstrip("/"), key)
        )


def safe_join(prefix: str, key: str) -> str:
    """``prefix/key`` where ``key`` is a relative key that cannot climb out of ``prefix``.

    Rejects (ValueError) empty keys, absolute keys, ``.`` / ``..`` / empty segments (also when
    percent-encoded or written with look-alike Unicode dots), backslashes, NUL and other control
    characters."""
    if not isinstance(key, str) or not key:
        raise ValueError("empty key")
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        raise ValueError(f"control character in key {key!r}")
    if "\\" in key:
        raise ValueError(f"backslash in key {key!r}")
    for spelling in {key, unquote(key), unicodedata.normalize("NFKC", key)}:
        if spelling.startswith("/") or re.match(r"^[A-Za-z]:", spelling):
            raise ValueError(f"absolute key {key!r}")
        if any(part in ("", ".", "..") for part in spelling.split("/")):
            raise ValueError(f"key {key!r} has an empty, '.' or '..' segment")
        if "\\" in spelling or "\x00" in spelling:
            raise ValueError(f"encoded separator or NUL in key {key!r}")
    return f"{prefix.rstrip('/')}/{key}" if prefix else key


def s3_access(options: StorageOptions) -> s3_clients.S3Access:
    """The S3 client recipe for ``options`` (one :class:`UserError` if no credentials resolve)."""
    return s3_clients.resolve_access(
        options.endpoint_url, options.profile, options.region, options.credentials_file
    )


def resolve(uri: str | os.PathLike, options: StorageOptions | None = None) -> Location:
    """Turn a local path, ``file://`` URI or ``s3://bucket/prefix`` into a :class:`Location`."""
    options = options or StorageOptions()
    text = os.fspath(uri)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file") or re.match(r"^[A-Za-z]:[\\/]", text):
        local = unquote(parsed.path) if parsed.scheme == "file" else text
        path = os.path.abspath(os.path.expanduser(local))
        return Location(pafs.LocalFileSystem(), path, text)
    if parsed.scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise UserError(f"{text!r} has no bucket: write s3://BUCKET/PREFIX")
        path = posixpath.join(parsed.netloc, parsed.path.lstrip("/")).rstrip("/")
        return Location(s3_clients.pyarrow_filesystem(s3_access(options)), path, text)
    try:
        filesystem, path = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as error:
        raise UserError(f"unsupported storage URI {text!r}: use a path, file:// or s3://") from (
            error
        )
    return Location(filesystem, path, text)


def display_uri(uri: str) -> str:
    """A URI safe to print or store: any ``user:password@`` and query string removed."""
    parsed = urlparse(uri)
    if not parsed.scheme or parsed.scheme == "file":
        return uri
    host = parsed.hostname or ""
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    return parsed._replace(netloc=netloc, query="", params="", fragment="").geturl()


def _explain(error: OSError, location: Location) -> Exception:
    message = str(error)
    if any(code in message for code in _CREDENTIAL_ERRORS):
        return UserError(
            f"S3 refused the credentials for {display_uri(location.uri)}: check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY (or the profile) and that they may access this bucket"
        )
    if "certificate" in message.lower():
        return UserError(
            f"the storage for {display_uri(location.uri)} presented a TLS certificate this "
            "machine does not trust: set AWS_CA_BUNDLE (or the profile's ca_bundle) to its CA's "
            "PEM file"
        )
    if "NO_SUCH_BUCKET" in message or "NoSuchBucket" in message:
        return UserError(f"bucket of {display_uri(location.uri)} does not exist")
    if "connect" in message.lower() or "resolve" in message.lower():
        return UserError(f"cannot reach the storage for {display_uri(location.uri)}: {message}")
    return error


def as_location(target: str | os.PathLike | Location, options: StorageOptions | None = None):
    return target if isinstance(target, Location) else resolve(target, options)


def check_access(target, options: StorageOptions | None = None) -> Location:
    """Touch the storage once so wrong or missing credentials become one clear UserError."""
    location = as_location(target, options)
    try:
        location.filesystem.get_file_info(pafs.FileSelector(location.path, allow_not_found=True))
    except NotADirectoryError:
        return location
    except OSError as error:
        raise _explain(error, location) from None
    _check_bucket(location)
    return location


def _check_bucket(location: Location) -> None:
    if location.is_s3:
        bucket = location.path.split("/", 1)[0]
        try:
            missing = location.filesystem.get_file_info(bucket).type == pafs.FileType.NotFound
        except OSError as error:
            raise _explain(error, location) from None
        if missing:
            raise UserError(f"bucket of {display_uri(location.uri)} does not exist")


def list_files(
    target, extensions: tuple[str, ...] | None = IMAGE_EXTENSIONS, recursive: bool = True
) -> list[str]:
    """Relative keys (``/``-separated, sorted) of the files under a location whose extension is in
    ``extensions`` (case-insensitive; ``None`` keeps every file). Hidden files are skipped."""
    location = as_location(target)
    selector = pafs.FileSelector(location.path, recursive=recursive, allow_not_found=True)
    try:
        infos = location.filesystem.get_file_info(selector)
    except OSError as error:
        raise _explain(error, location) from None
    if not infos:
        _check_bucket(location)
    wanted = tuple(ext.lower() for ext in extensions) if extensions else None
    base = location.path.rstrip("/") + "/"
    keys = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.startswith(base):
            continue
        key = info.path[len(base) :]
        if any(part.startswith(".") for part in key.split("/")):
            continue
        if wanted is None or key.lower().endswith(wanted):
            keys.append(key)
    return sorted(keys)


class FileTooLarge(ValueError):
    """A file bigger than the caller's ``max_bytes``: refused before reading it."""


def read_bytes(target, max_bytes: int | None = None) -> bytes:
    """The whole object; with ``max_bytes``, a bigger one raises :class:`FileTooLarge` unread."""
    location = as_location(target)
    with location.filesystem.open_input_file(location.path) as stream:
        if max_bytes is not None and stream.size() > max_bytes:
            raise FileTooLarge(f"{stream.size()} bytes > {max_bytes}")
        return stream.read()


# What every object this project writes is, so that browsers and CDNs show an image instead
# of downloading it: AWS S3 and MinIO store what the PUT says (pyarrow's default is
# application/octet-stream) and do not guess from the key.
CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".parquet": "application/vnd.apache.parquet",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".txt": "text/plain; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def content_type(path: str) -> str:
    """The Content-Type of an object from its key's extension (case-insensitive)."""
    return CONTENT_TYPES.get(posixpath.splitext(path)[1].lower(), DEFAULT_CONTENT_TYPE)


def open_output(location: Location):
    """An output stream for one whole object, with its Content-Type on S3 (where
    ``open_output_stream`` takes object metadata; a local file has none)."""
    if location.is_s3:
        metadata = {"Content-Type": content_type(location.path)}
        return location.filesystem.open_output_stream(location.path, metadata=metadata)
    return location.filesystem.open_output_stream(location.path)


def write_bytes(target, data: bytes) -> None:
    """Write a whole object; locally via a temporary file and rename, so readers never see half
    a file (an S3 PUT is atomic already). On S3 the object gets its Content-Type."""
    location = as_location(target)
    filesystem = location.filesystem
    parent = posixpath.dirname(location.path)
    if location.is_local:
        filesystem.create_dir(parent, recursive=True)
        temporary = f"{parent}/.{posixpath.basename(location.path)}.{uuid.uuid4().hex}.tmp"
        with filesystem.open_output_stream(temporary) as stream:
            stream.write(data)
        os.replace(temporary, location.path)
        return
    try:
        with open_output(location) as stream:
            stream.write(data)
    except OSError as error:
        raise _explain(error, location) from None


def check_writable(folder: Location, shown_uri: str) -> None:
    """Write and delete one small object in ``folder``, so an output that cannot be written at
    all (permission denied, a file in the way, a full disk, a read-only bucket) is one clear
    error naming ``shown_uri`` before any work starts."""
    probe = folder.child(f".write-check-{uuid.uuid4().hex}")
    try:
        write_bytes(probe, b"enlightengan write check\n")
        delete_file(probe)
    except (OSError, UserError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"cannot write to the output {shown_uri}: {detail}") from None


def exists(target) -> bool:
    location = as_location(target)
    return location.filesystem.get_file_info(location.path).type != pafs.FileType.NotFound


def delete_prefix(target) -> None:
    """Remove everything under a location (no error when there is nothing)."""
    location = as_location(target)
    if location.is_s3:
        _delete_s3_objects(location, prefix=True)
        return
    info = location.filesystem.get_file_info(location.path)
    if info.type == pafs.FileType.Directory:
        location.filesystem.delete_dir_contents(location.path, missing_dir_ok=True)
    elif info.type == pafs.FileType.File:
        location.filesystem.delete_file(location.path)


def delete_file(target) -> None:
    location = as_location(target)
    if location.is_s3:
        _delete_s3_objects(location, prefix=False)
        return
    try:
        location.filesystem.delete_file(location.path)
    except FileNotFoundError:
        pass


def _delete_s3_objects(location: Location, prefix: bool) -> None:
    """Delete the object at ``location`` (and, with ``prefix``, every object under it) without
    leaving folder markers (:func:`s3_clients.delete_objects`)."""
    s3_clients.delete_objects(s3_clients.access_of(location.filesystem), location.path, prefix)


def fsspec_filesystem(uri: str, options: StorageOptions | None = None):
    """An fsspec filesystem (``s3fs`` for S3) with the same endpoint and credentials, for code
    that wants fsspec rather than pyarrow; returns ``(filesystem, path)``."""
    location = resolve(uri, options)
    if location.is_local:
        import fsspec

        return fsspec.filesystem("file"), location.path
    return s3_clients.s3fs_filesystem(s3_clients.access_of(location.filesystem)), location.path

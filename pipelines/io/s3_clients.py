"""Every S3 client the project creates, from one credential resolution: the AWS SDK's own.

Credentials, region, endpoint and CA bundle are resolved by a botocore session, the same chain
the AWS CLI and boto3 walk: environment keys, the shared credentials and config files
(``AWS_SHARED_CREDENTIALS_FILE`` / ``AWS_CONFIG_FILE``), profiles that assume a role, IAM
Identity Center (SSO) profiles, ``credential_process``, web identity (EKS IRSA), container
credentials (ECS, EKS Pod Identity) and the EC2 instance profile, with temporary credentials
refreshed before they expire.

Why botocore resolves and pyarrow does the I/O: pyarrow's native S3 filesystem streams objects
fastest, but its own chain (the C++ SDK's) takes no profile per filesystem, ignores a profile's
``endpoint_url``, and fails late with a generic error; botocore is what users configured and
tested with their CLI. So :class:`RefreshingS3Handler` keeps a native ``pyarrow`` S3 filesystem
and rebuilds it whenever botocore hands out new keys; the listing client and ``s3fs`` use botocore
directly.

On Ray the filesystem travels to the workers as its :class:`S3Access` recipe, not as keys: each
worker resolves the chain itself (its pod's web identity, its node's instance profile, the same
profile and files) and refreshes on its own. Only keys the driver took from its environment
travel as keys, because a worker's environment need not hold them.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

from pyarrow import fs as pafs

from pipelines.errors import UserError

# The retry policy of every client: the SDKs' "standard" mode (exponential backoff with jitter,
# retrying throttling, 5xx and connection errors). Ray Data re-runs a task whose storage still
# fails after these (pipelines.io.retries), so per-request attempts stay modest. Attempts count the
# first try, as pyarrow's strategy does (botocore's ``total_max_attempts``).
RETRY_MODE = "standard"
RETRY_ATTEMPTS = 5
# A listing is one long task that Ray Data would re-run from its first page: more patience.
LISTING_RETRY_ATTEMPTS = 10
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Access:
    """How to build S3 clients: picklable, and without secrets except keys the driver took
    from its own environment (``carried_keys``, never in a repr).

    ``credential_source`` is botocore's name for where the credentials came from (``env``,
    ``shared-credentials-file``, ``custom-process``, ``sso``, ``assume-role``,
    ``assume-role-with-web-identity``, ``container-role``, ``iam-role``...), safe to print."""

    region: str
    endpoint: str | None = None
    profile: str | None = None
    config_file: str | None = None
    credentials_file: str | None = None
    ca_bundle: str | None = None
    credential_source: str = ""
    carried_keys: tuple[str, str, str | None] | None = field(default=None, repr=False)


def _session(profile: str | None, config_file: str | None, credentials_file: str | None):
    import botocore.session

    session = botocore.session.Session()
    if config_file:
        session.set_config_variable("config_file", config_file)
    if credentials_file:
        session.set_config_variable("credentials_file", credentials_file)
    if profile:
        session.set_config_variable("profile", profile)
    return session


def _configured_endpoint(session) -> str | None:
    """``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or the profile's (``services``) endpoint,
    as botocore resolves them; ``None`` for AWS itself."""
    from botocore.configprovider import ConfiguredEndpointProvider

    if session.get_config_variable("ignore_configured_endpoint_urls"):
        return None
    provider = ConfiguredEndpointProvider(
        full_config=session.full_config,
        scoped_config=session.get_scoped_config(),
        client_name="s3",
        environ=os.environ,
    )
    return provider.provide()


@contextlib.contextmanager
def _explained_resolution_errors(
    shown: str, config_file: str | None, credentials_file: str | None
) -> Iterator[None]:
    """botocore's errors while resolving the chain, each as one :class:`UserError` line that
    says what to fix (for profile ``shown``)."""
    from botocore import exceptions

    try:
        yield
    except exceptions.ProfileNotFound:
        raise UserError(
            f"AWS profile {shown!r} is not in {config_file or '~/.aws/config'} or "
            f"{credentials_file or '~/.aws/credentials'}: check --profile / AWS_PROFILE"
        ) from None
    except (exceptions.UnauthorizedSSOTokenError, exceptions.SSOTokenLoadError):
        raise UserError(
            f"the SSO session of AWS profile {shown!r} has expired or was never started: "
            f"run `aws sso login --profile {shown}`"
        ) from None
    except exceptions.CredentialRetrievalError as error:
        # Its message may quote the provider's output, which can hold secrets: name it only.
        provider = error.kwargs.get("provider", "credential provider")
        raise UserError(
            f"AWS profile {shown!r}: the {provider} credential source failed; run it by hand "
            "(e.g. its credential_process command) to see why"
        ) from None
    except exceptions.PartialCredentialsError as error:
        raise UserError(
            f"S3 credentials are incomplete ({error.kwargs.get('cred_var', 'a key')} missing "
            f"from {error.kwargs.get('provider', 'the configuration')}): set both "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or fix the profile"
        ) from None
    except exceptions.BotoCoreError as error:
        raise UserError(f"cannot resolve AWS credentials: {type(error).__name__}") from None


def resolve_access(
    endpoint_url: str | None = None,
    profile: str | None = None,
    region: str | None = None,
    credentials_file: str | None = None,
) -> S3Access:
    """Resolve the chain once on the driver, so that a missing profile, absent or incomplete
    credentials, an expired SSO session or a failing ``credential_process`` are one
    :class:`UserError` before any work starts."""
    config_file = os.environ.get("AWS_CONFIG_FILE")
    credentials_file = credentials_file or os.environ.get("AWS_SHARED_CREDENTIALS_FILE")
    shown = profile or os.environ.get("AWS_PROFILE") or "default"
    with _explained_resolution_errors(shown, config_file, credentials_file):
        session = _session(profile, config_file, credentials_file)
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
        endpoint = endpoint_url or _configured_endpoint(session)
        resolved_region = (
            region or os.environ.get("AWS_REGION") or session.get_config_variable("region")
        )
        ca_bundle = session.get_config_variable("ca_bundle")
    if frozen is None or not frozen.access_key:
        raise UserError(
            "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a "
            "profile (--profile / AWS_PROFILE), or run where a role is available (EC2 instance "
            "profile, EKS IRSA / Pod Identity, ECS task role)"
        )
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    carried = None
    if credentials.method == "env":
        carried = (frozen.access_key, frozen.secret_key, frozen.token)
    return S3Access(
        region=resolved_region or DEFAULT_REGION,
        endpoint=endpoint,
        profile=profile or os.environ.get("AWS_PROFILE"),
        config_file=config_file,
        credentials_file=credentials_file,
        ca_bundle=ca_bundle,
        credential_source=credentials.method,
        carried_keys=carried,
    )


# One credentials object per recipe and process: every Ray task unpickles its own filesystem,
# and resolving the chain per task would call STS, the instance metadata service or a
# credential_process thousands of times in a large job.
_CREDENTIALS: dict[S3Access, object] = {}
_CREDENTIALS_LOCK = threading.Lock()


def credentials_of(access: S3Access):
    """botocore credentials for ``access`` in this process: static for carried keys, else the
    chain's (refreshable where the source is temporary), shared by the process's clients."""
    import botocore.credentials

    if access.carried_keys is not None:
        return botocore.credentials.Credentials(*access.carried_keys, method="env")
    with _CREDENTIALS_LOCK:
        if access not in _CREDENTIALS:
            session = _session(access.profile, access.config_file, access.credentials_file)
            credentials = session.get_credentials()
            if credentials is None:
                raise OSError(
                    "no S3 credentials on this node: give it the same profile, role or keys as "
                    "the driver (see docs/clusters/credentials.md)"
                )
            _CREDENTIALS[access] = credentials
        return _CREDENTIALS[access]


def botocore_config(access: S3Access, attempts: int = RETRY_ATTEMPTS):
    import botocore.config

    return botocore.config.Config(
        retries={"total_max_attempts": attempts, "mode": RETRY_MODE},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        # Custom endpoints (MinIO, SeaweedFS) serve buckets by path, not by host name.
        s3={"addressing_style": "path"} if access.endpoint else None,
    )


def botocore_client(access: S3Access, attempts: int = RETRY_ATTEMPTS):
    """A botocore S3 client; credentials from the chain on this node refresh themselves."""
    session = _session(access.profile, access.config_file, access.credentials_file)
    if access.carried_keys is not None:
        session.set_credentials(*access.carried_keys)
    return session.create_client(
        "s3",
        region_name=access.region,
        endpoint_url=access.endpoint,
        verify=access.ca_bundle,
        config=botocore_config(access, attempts),
    )


def _native_filesystem(access: S3Access, frozen) -> pafs.S3FileSystem:
    kwargs: dict = {
        "access_key": frozen.access_key,
        "secret_key": frozen.secret_key,
        "session_token": frozen.token,
        "region": access.region,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "request_timeout": READ_TIMEOUT_S,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=RETRY_ATTEMPTS),
    }
    if access.endpoint:
        parsed = urlparse(access.endpoint)
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    if access.ca_bundle:
        kwargs["tls_ca_file_path"] = access.ca_bundle
    return pafs.S3FileSystem(**kwargs)


class RefreshingS3Handler(pafs.FileSystemHandler):
    """A ``pyarrow`` filesystem handler that serves every call from a native S3 filesystem
    built with the current botocore credentials, rebuilt when they change (a refreshed
    temporary credential). Pickles as its :class:`S3Access` only."""

    def __init__(self, access: S3Access):
        self.access = access
        self._lock = threading.Lock()
        self._credentials = None
        self._keys = None
        self._native: pafs.S3FileSystem | None = None

    def __reduce__(self):
        return RefreshingS3Handler, (self.access,)

    def __eq__(self, other):
        return isinstance(other, RefreshingS3Handler) and other.access == self.access

    def __hash__(self):
        return hash(self.access)

    @property
    def key_id(self) -> str | None:
        """The access key id the native filesystem was last built with (not a secret)."""
        return self._keys[0] if self._keys else None

    def native(self) -> pafs.S3FileSystem:
        """The native filesystem for the credentials valid now."""
        from botocore.exceptions import BotoCoreError

        with self._lock:
            try:
                if self._credentials is None:
                    self._credentials = credentials_of(self.access)
                # Refreshes (runs the credential source again) when expiry is near.
                frozen = self._credentials.get_frozen_credentials()
            except BotoCoreError as error:
                # Named only: a provider's message may quote its output, secrets included.
                raise OSError(
                    f"S3 credentials could not be refreshed: {type(error).__name__}"
                ) from None
            keys = (frozen.access_key, frozen.secret_key, frozen.token)
            if self._native is None or keys != self._keys:
                self._native = _native_filesystem(self.access, frozen)
                self._keys = keys
            return self._native

    def get_type_name(self):
        return "s3"

    def normalize_path(self, path):
        return self.native().normalize_path(path)

    def get_file_info(self, paths):
        return self.native().get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.native().get_file_info(selector)

    def create_dir(self, path, recursive):
        # S3 has no folders: a prefix exists once an object is written under it. The native
        # filesystem would write a zero-byte "prefix/" object for each level, which S3 clients
        # (the AWS CLI, boto3, a console) list as extra objects; Ray Train calls this for its
        # run and each checkpoint before writing their files. Only a bare bucket is created.
        if "/" in path.strip("/"):
            return
        self.native().create_dir(path, recursive=recursive)

    # Deletes go through delete_objects: the native ones write a "parent/" marker object after
    # each delete (Ray Train deletes old checkpoints this way).
    def delete_dir(self, path):
        delete_objects(self.access, path, prefix=True)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        delete_objects(self.access, path, prefix=True)

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete every bucket of an S3 account")

    def delete_file(self, path):
        if self.native().get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"no such object: {path}")
        delete_objects(self.access, path, prefix=False)

    def move(self, src, dest):
        self.native().move(src, dest)

    def copy_file(self, src, dest):
        self.native().copy_file(src, dest)

    def open_input_stream(self, path):
        return self.native().open_input_stream(path)

    def open_input_file(self, path):
        return self.native().open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.native().open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.native().open_append_stream(path, metadata=metadata)


def delete_objects(access: S3Access, path: str, prefix: bool) -> None:
    """Delete the object at ``path`` (``bucket/key``) and, with ``prefix``, every object under
    ``key/``, with plain S3 calls. S3 has no folders; pyarrow's deletes write a zero-byte
    ``parent/`` marker object after each one so that an emptied "directory" still exists, and
    those markers would litter every listing."""
    bucket, _, key = path.strip("/").partition("/")
    client = botocore_client(access)
    try:
        keys = [key] if key else []
        if prefix:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"{key}/" if key else ""
            )
            keys += [item["Key"] for page in pages for item in page.get("Contents", ())]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": name} for name in keys[start : start + 1000]]
            answer = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            refused = answer.get("Errors") or []
            if refused:
                raise OSError(f"S3 refused to delete {len(refused)} objects: {refused[0]['Code']}")
    except Exception as error:
        raise as_storage_error(error, "deleting") from None


def pyarrow_filesystem(access: S3Access) -> pafs.PyFileSystem:
    """The ``pyarrow`` filesystem every job reads and writes S3 with (also Ray Data's and Ray
    Train's storage filesystem)."""
    return pafs.PyFileSystem(RefreshingS3Handler(access))


def is_s3_filesystem(filesystem: pafs.FileSystem) -> bool:
    if isinstance(filesystem, pafs.S3FileSystem):
        return True
    return isinstance(filesystem, pafs.PyFileSystem) and isinstance(
        filesystem.handler, RefreshingS3Handler
    )


def access_of(filesystem: pafs.FileSystem) -> S3Access:
    """The :class:`S3Access` behind a filesystem made by :func:`pyarrow_filesystem`, or the
    endpoint and keys a plain ``pyarrow`` S3 filesystem was built with (as it pickles them)."""
    if isinstance(filesystem, pafs.PyFileSystem):
        return filesystem.handler.access
    state = filesystem.__reduce__()[1][0]
    endpoint = state.get("endpoint_override") or None
    if endpoint and "://" not in endpoint:
        endpoint = f"{state.get('scheme') or 'https'}://{endpoint}"
    keys = None
    if state.get("access_key"):
        keys = (state["access_key"], state["secret_key"], state.get("session_token") or None)
    return S3Access(
        region=state.get("region") or DEFAULT_REGION,
        endpoint=endpoint,
        ca_bundle=state.get("tls_ca_file_path") or None,
        credential_source="explicit",
        carried_keys=keys,
    )


def s3fs_filesystem(access: S3Access):
    """An ``s3fs`` filesystem (aiobotocore, refreshing its own credentials) for code that wants
    fsspec; same endpoint, region, CA bundle and retry policy."""
    import s3fs

    client_kwargs: dict = {"region_name": access.region}
    if access.endpoint:
        client_kwargs["endpoint_url"] = access.endpoint
    if access.ca_bundle:
        client_kwargs["verify"] = access.ca_bundle
    config_kwargs = {
        "retries": {"total_max_attempts": RETRY_ATTEMPTS, "mode": RETRY_MODE},
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
    }
    if access.endpoint:
        config_kwargs["s3"] = {"addressing_style": "path"}
    if access.carried_keys is not None:
        key, secret, token = access.carried_keys
        return s3fs.S3FileSystem(
            key=key,
            secret=secret,
            token=token,
            client_kwargs=client_kwargs,
            config_kwargs=config_kwargs,
        )
    from aiobotocore.session import AioSession

    session = AioSession()
    for name, value in (
        ("config_file", access.config_file),
        ("credentials_file", access.credentials_file),
        ("profile", access.profile),
    ):
        if value:
            session.set_config_variable(name, value)
    return s3fs.S3FileSystem(
        session=session, client_kwargs=client_kwargs, config_kwargs=config_kwargs
    )


def as_storage_error(error: Exception, action: str) -> Exception:
    """botocore's errors in the words ``pipelines.io.retries`` knows, so a store that went away
    makes Ray Data re-run the task instead of failing the job; ``action`` names what failed."""
    from botocore import exceptions

    if isinstance(error, exceptions.ConnectionError | exceptions.HTTPClientError):
        return OSError(f"cannot reach the storage while {action}: {type(error).__name__}")
    if isinstance(error, exceptions.ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return OSError(f"{action} failed: {code or 'error'} (HTTP status {status})")
    return error

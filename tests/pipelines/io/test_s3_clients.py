"""pipelines.io.s3_clients: the AWS SDK's credential chain against the real SeaweedFS server.

Profiles live in temporary shared-credentials / config files; ``credential_process`` is a small
shell script that prints the server's keys and records each call; role assumption talks to a
loopback STS endpoint that answers with the server's keys, so the whole botocore path runs.
"""

from __future__ import annotations

import http.server
import os
import pickle
import re
import threading
from pathlib import Path

import pytest
import torch

from enlightengan.checkpoint import save_checkpoint
from enlightengan.config import tiny_config
from enlightengan.generator import Generator
from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.io import s3_clients, storage
from pipelines.io.listing import ListingSource
from tests.fixtures.photos import darken, encode, fit_within, wheel_photo
from tests.fixtures.seaweed import start_seaweed


@pytest.fixture
def aws_home(tmp_path, monkeypatch) -> Path:
    """No AWS variables but the config-file locations, pointing into a temporary folder; the
    instance-metadata lookup is off so an empty chain answers at once."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    home = tmp_path / "aws"
    home.mkdir()
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return home


def credential_process(home: Path, server, lifetime_s: int) -> Path:
    """A ``credential_process`` script printing the server's keys with an ``Expiration``
    ``lifetime_s`` ahead; each call appends its parent's PID to ``calls``. While a file
    ``revoked`` exists it prints a wrong secret."""
    script = home / "issue-keys.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$PPID" >> "{home}/calls"\n'
        f'secret="{server.secret_key}"\n'
        f'[ -e "{home}/revoked" ] && secret="revoked-secret-0000000000"\n'
        f'expires=$(date -u -d "+{lifetime_s} seconds" +%Y-%m-%dT%H:%M:%SZ)\n'
        'printf \'{"Version": 1, "AccessKeyId": "%s", "SecretAccessKey": "%s", '
        '"Expiration": "%s"}\' '
        f'"{server.access_key}" "$secret" "$expires"\n'
    )
    script.chmod(0o700)
    return script


def calls(home: Path) -> list[str]:
    path = home / "calls"
    return path.read_text().split() if path.exists() else []


def test_static_keys_from_a_shared_credentials_profile(s3_server, aws_home):
    (aws_home / "credentials").write_text(
        f"[lab]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    bucket = s3_server.make_bucket("static")
    options = storage.StorageOptions(endpoint_url=s3_server.endpoint_url, profile="lab")
    location = storage.check_access(storage.resolve(f"s3://{bucket}/p", options))
    storage.write_bytes(location.child("a.jpg"), b"a")
    assert storage.list_files(location) == ["a.jpg"]
    access = s3_clients.access_of(location.filesystem)
    assert access.credential_source == "shared-credentials-file"
    # Keys from a file are read again on each node, never shipped inside the filesystem.
    assert s3_server.secret_key.encode() not in pickle.dumps(location.filesystem)


def test_an_explicit_credentials_file_is_read_and_wins_over_environment_keys(
    s3_server, aws_home, tmp_path, monkeypatch
):
    own = tmp_path / "job-credentials"
    own.write_text(
        f"[job]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-wrong-secret-wrong-secret00")
    bucket = s3_server.make_bucket("ownfile")
    options = storage.StorageOptions(
        endpoint_url=s3_server.endpoint_url, profile="job", credentials_file=str(own)
    )
    location = storage.check_access(storage.resolve(f"s3://{bucket}/p", options))
    storage.write_bytes(location.child("a.jpg"), b"a")
    assert storage.list_files(location) == ["a.jpg"]
    access = s3_clients.access_of(location.filesystem)
    assert access.credential_source == "shared-credentials-file"
    assert access.credentials_file == str(own)
    assert s3_server.secret_key.encode() not in pickle.dumps(location.filesystem)


def test_endpoint_and_region_come_from_the_profile(s3_server, aws_home):
    (aws_home / "config").write_text(
        f"[profile site]\nregion = eu-west-3\nendpoint_url = {s3_server.endpoint_url}\n"
        f"aws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    bucket = s3_server.make_bucket("fromconfig")
    location = storage.resolve(f"s3://{bucket}/x", storage.StorageOptions(profile="site"))
    access = s3_clients.access_of(location.filesystem)
    assert (access.endpoint, access.region) == (s3_server.endpoint_url, "eu-west-3")
    storage.write_bytes(location.child("k.png"), b"v")
    assert [key for page in ListingSource.of(location).pages() for key, _ in page] == ["k.png"]
    filesystem, path = storage.fsspec_filesystem(
        f"s3://{bucket}/x", storage.StorageOptions("", "site")
    )
    assert filesystem.cat_file(f"{path}/k.png") == b"v"


def test_credential_process_profile_reads_writes_and_lists(s3_server, aws_home):
    script = credential_process(aws_home, s3_server, lifetime_s=3600)
    (aws_home / "config").write_text(f"[profile vault]\ncredential_process = {script}\n")
    bucket = s3_server.make_bucket("process")
    options = storage.StorageOptions(endpoint_url=s3_server.endpoint_url, profile="vault")
    location = storage.check_access(storage.resolve(f"s3://{bucket}", options))
    storage.write_bytes(location.child("one.jpg"), b"1")
    assert storage.read_bytes(location.child("one.jpg")) == b"1"
    assert [key for page in ListingSource.of(location).pages() for key, _ in page] == ["one.jpg"]
    assert s3_clients.access_of(location.filesystem).credential_source == "custom-process"
    used = len(calls(aws_home))
    storage.write_bytes(location.child("two.jpg"), b"2")
    # An hour of validity left: no new call for the next request, nor for the copies that Ray
    # tasks unpickle in the same process.
    for _ in range(3):
        copy = pickle.loads(pickle.dumps(location.filesystem))
        assert copy.get_file_info(f"{bucket}/two.jpg").size == 1
    assert len(calls(aws_home)) == used
    assert s3_server.secret_key.encode() not in pickle.dumps(location.filesystem)


def test_refreshed_credentials_are_the_ones_sent(s3_server, aws_home):
    # A minute is inside botocore's refresh window, so every request asks the process again.
    script = credential_process(aws_home, s3_server, lifetime_s=60)
    (aws_home / "config").write_text(f"[profile short]\ncredential_process = {script}\n")
    bucket = s3_server.make_bucket("refresh")
    options = storage.StorageOptions(endpoint_url=s3_server.endpoint_url, profile="short")
    location = storage.resolve(f"s3://{bucket}", options)
    storage.write_bytes(location.child("before.jpg"), b"b")
    before = len(calls(aws_home))
    (aws_home / "revoked").touch()
    with pytest.raises(UserError, match="refused the credentials"):
        storage.write_bytes(location.child("after.jpg"), b"a")
    assert len(calls(aws_home)) > before
    (aws_home / "revoked").unlink()
    storage.write_bytes(location.child("after.jpg"), b"a")
    assert storage.list_files(location) == ["after.jpg", "before.jpg"]


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    torch.manual_seed(3)
    config = tiny_config()
    run = tmp_path / "run"
    save_checkpoint(
        run / "exp" / "checkpoint_000001",
        config=config,
        networks={"generator": Generator(config.generator)},
        trainer_state={"step": 1},
    )
    return run


def test_a_job_finishes_while_its_temporary_credentials_keep_expiring(
    ray_local, s3_server, aws_home, tiny_run, capsys
):
    script = credential_process(aws_home, s3_server, lifetime_s=60)
    (aws_home / "config").write_text(f"[profile short]\ncredential_process = {script}\n")
    bucket = s3_server.make_bucket("expiring")
    filesystem = s3_server.filesystem()
    for name in ("coffee", "rocket", "chelsea", "astronaut"):
        with filesystem.open_output_stream(f"{bucket}/in/{name}.jpg") as stream:
            stream.write(encode(darken(fit_within(wheel_photo(name), 160, 120)), "JPEG"))
    status = main(
        ["enhance", "--checkpoint", str(tiny_run), "--input", f"s3://{bucket}/in",
         "--output", f"s3://{bucket}/out", "--profile", "short",
         "--endpoint-url", s3_server.endpoint_url]
    )  # fmt: skip
    out = capsys.readouterr()
    assert status == 0, out.err
    assert "enhanced: 4  skipped: 0  failed: 0" in out.out
    assert s3_server.secret_key not in out.out + out.err
    outputs = [info.path for info in filesystem.get_file_info(pafs_selector(f"{bucket}/out"))]
    assert sum(path.endswith(".jpg") for path in outputs) == 4
    by_process: dict[str, int] = {}
    for pid in calls(aws_home):
        by_process[pid] = by_process.get(pid, 0) + 1
    # The driver and the Ray workers each ran the process, and ran it again as it expired.
    assert len(by_process) >= 2
    assert max(by_process.values()) >= 3


def pafs_selector(path: str):
    from pyarrow import fs

    return fs.FileSelector(path, recursive=True)


class _STSHandler(http.server.BaseHTTPRequestHandler):
    """AssumeRole on loopback: answers with the SeaweedFS keys as temporary credentials."""

    server_version = "sts-on-loopback"

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.server.requests.append((body, self.headers.get("Authorization", "")))
        keys = self.server.keys
        answer = (
            "<AssumeRoleResponse xmlns='https://sts.amazonaws.com/doc/2011-06-15/'>"
            "<AssumeRoleResult><Credentials>"
            f"<AccessKeyId>{keys[0]}</AccessKeyId><SecretAccessKey>{keys[1]}</SecretAccessKey>"
            # SeaweedFS checks session tokens against its own STS; its static keys carry none.
            "<SessionToken></SessionToken>"
            "<Expiration>2099-01-01T00:00:00Z</Expiration>"
            "</Credentials><AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn>"
            "<AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser></AssumeRoleResult>"
            "</AssumeRoleResponse>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def test_role_profile_is_assumed_through_botocore(s3_server, aws_home, monkeypatch):
    sts = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _STSHandler)
    sts.requests, sts.keys = [], (s3_server.access_key, s3_server.secret_key)
    thread = threading.Thread(target=sts.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", f"http://127.0.0.1:{sts.server_port}")
        (aws_home / "credentials").write_text(
            "[base]\naws_access_key_id = AKIABASEKEY\naws_secret_access_key = base-secret\n"
        )
        (aws_home / "config").write_text(
            "[profile analyst]\nrole_arn = arn:aws:iam::123456789012:role/enhance\n"
            "source_profile = base\nregion = us-east-1\n"
        )
        bucket = s3_server.make_bucket("role")
        options = storage.StorageOptions(endpoint_url=s3_server.endpoint_url, profile="analyst")
        location = storage.check_access(storage.resolve(f"s3://{bucket}", options))
        storage.write_bytes(location.child("r.jpg"), b"r")
        assert storage.list_files(location) == ["r.jpg"]
    finally:
        sts.shutdown()
        sts.server_close()
    body, authorization = sts.requests[0]
    assert "Action=AssumeRole" in body and "role%2Fenhance" in body
    assert "Credential=AKIABASEKEY/" in authorization
    assert s3_clients.access_of(location.filesystem).credential_source == "assume-role"


def test_sso_profile_without_a_login_asks_for_aws_sso_login(aws_home, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (aws_home / "config").write_text(
        "[profile corp]\nsso_session = corp\nsso_account_id = 123456789012\n"
        "sso_role_name = Enhance\nregion = us-east-1\n\n"
        "[sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\n"
        "sso_region = us-east-1\nsso_registration_scopes = sso:account:access\n"
    )
    with pytest.raises(UserError, match=re.escape("run `aws sso login --profile corp`")):
        storage.resolve("s3://bucket/x", storage.StorageOptions(profile="corp"))


def test_failing_credential_process_is_one_line_without_its_output(aws_home, tmp_path, capsys):
    script = aws_home / "broken.sh"
    script.write_text("#!/bin/sh\necho 'vault said: secret-in-stderr-123' >&2\nexit 3\n")
    script.chmod(0o700)
    (aws_home / "config").write_text(f"[profile broken]\ncredential_process = {script}\n")
    status = main(
        ["enhance", "--input", "s3://bucket/in", "--output", str(tmp_path / "out"),
         "--profile", "broken", "--endpoint-url", "http://127.0.0.1:9"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2
    assert "custom-process credential source failed" in err
    assert "secret-in-stderr-123" not in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_profile_and_no_credentials_are_user_errors(aws_home):
    with pytest.raises(UserError, match="AWS profile 'ghost' is not in"):
        storage.resolve("s3://bucket/x", storage.StorageOptions(profile="ghost"))
    with pytest.raises(UserError, match="no S3 credentials found"):
        storage.resolve("s3://bucket/x")


def test_every_client_uses_the_one_retry_policy(s3_server, aws_home):
    access = s3_clients.S3Access(
        "us-east-1", s3_server.endpoint_url, carried_keys=(s3_server.access_key, "s", None)
    )
    config = s3_clients.botocore_config(access)
    assert config.retries == {"total_max_attempts": s3_clients.RETRY_ATTEMPTS, "mode": "standard"}
    client = s3_clients.botocore_client(access, attempts=2)
    assert client.meta.config.retries == {"total_max_attempts": 2, "mode": "standard"}
    fsspec = s3_clients.s3fs_filesystem(access)
    assert fsspec.config_kwargs["retries"] == config.retries


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A CA-capable certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enlightengan test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "ca.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """SeaweedFS whose S3 gateway speaks HTTPS with a certificate no system store trusts."""
    directory = tmp_path_factory.mktemp("seaweed-tls")
    server = start_seaweed(directory, tls=self_signed_certificate(directory))
    try:
        yield server
    finally:
        server.stop()


def test_ca_bundle_variable_lets_every_client_trust_a_private_endpoint(
    tls_server, aws_home, monkeypatch
):
    for name, value in tls_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = tls_server.make_bucket("tls")
    with pytest.raises(UserError, match="AWS_CA_BUNDLE"):
        storage.check_access(storage.resolve(f"s3://{bucket}/in"))
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tls_server.ca_file))
    location = storage.check_access(storage.resolve(f"s3://{bucket}/in"))
    assert s3_clients.access_of(location.filesystem).ca_bundle == str(tls_server.ca_file)
    storage.write_bytes(location.child("t.jpg"), b"t")
    assert storage.read_bytes(location.child("t.jpg")) == b"t"
    assert [key for page in ListingSource.of(location).pages() for key, _ in page] == ["t.jpg"]
    filesystem, path = storage.fsspec_filesystem(f"s3://{bucket}/in")
    assert filesystem.cat_file(f"{path}/t.jpg") == b"t"

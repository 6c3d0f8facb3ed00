"""The embedded local cluster against the real Postgres binaries: start, identity, settings, stop, reuse, faults."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pytest_dbsnap.errors import ServerError, ToolError
from pytest_dbsnap.postgres import account as account_module
from pytest_dbsnap.postgres.account import DEDICATED_ACCOUNT, runtime_base, server_account
from pytest_dbsnap.postgres.base import PgTools, find_pg_tools, free_port
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.postgres.parking import (
    CLUSTER_FORMAT,
    PG_HBA,
    SECRET_FILE,
    evict_parked,
    remove_stale_clusters,
    start_postmaster,
    stop_postmaster,
)


def postmaster_pid(data_dir: Path) -> int:
    """The postmaster's pid, from the first line of postmaster.pid (never found by process name)."""
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def is_running(pid: int) -> bool:
    """True while the process exists and has not exited. A zombie has exited: this container's PID 1 does
    not reap orphans, so a stopped postmaster can linger as one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _has_account(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def uids_of(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(uid) for uid in line.split()[1:]]
    raise AssertionError(f"no Uid line in /proc/{pid}/status")


def pristine_dirs(cache_dir: Path) -> list[Path]:
    return [path for path in cache_dir.glob("pristine-*") if path.is_dir()]


@pytest.fixture(scope="module")
def pg_tools() -> PgTools:
    return find_pg_tools(None)


@pytest.fixture(scope="module")
def pg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pristine-cluster cache for the session (other modules use the same folder), so initdb runs once."""
    cache = tmp_path_factory.getbasetemp() / "pg-cache"
    cache.mkdir(exist_ok=True)
    return cache


@pytest.fixture(scope="module")
def cluster(pg_tools: PgTools, pg_cache: Path) -> Iterator[LocalCluster]:
    """A cluster the read-only tests share."""
    with LocalCluster(pg_tools, cache_dir=pg_cache).start() as started:
        assert isinstance(started, LocalCluster)
        yield started


@pytest.fixture
def private_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp folder of our own for runtime_base(), so other sessions' clusters are neither seen nor touched.

    Kept short (under /tmp) because the server's unix socket path must stay below 108 bytes, and
    world-traversable because the server account must reach its cluster folder.
    """
    folder = Path(tempfile.mkdtemp(prefix="dbsnap-t-", dir="/tmp"))
    folder.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    # A failed test may leave a postmaster behind: stop it by its data folder, then remove everything.
    for data_dir in folder.glob("*/cluster-*/data"):
        if (data_dir / "postmaster.pid").exists():
            stop_postmaster(find_pg_tools(None), data_dir, server_account())
    shutil.rmtree(folder, ignore_errors=True)


# --- a running cluster ----------------------------------------------------------------------------------------


def test_postmaster_runs_as_an_unprivileged_account(cluster: LocalCluster) -> None:
    pid = postmaster_pid(cluster.data_dir)
    assert is_running(pid)
    if os.geteuid() == 0:
        assert cluster.account is not None, "started by root, the cluster needs an unprivileged account"
        # Never the machine's own `postgres` account, which owns the system's PostgreSQL data.
        assert cluster.account.user == DEDICATED_ACCOUNT
        expected = pwd.getpwnam(cluster.account.user).pw_uid
        assert expected != 0
        if _has_account("postgres"):
            assert expected != pwd.getpwnam("postgres").pw_uid
    else:
        assert cluster.account is None
        expected = os.geteuid()
    assert os.stat(f"/proc/{pid}").st_uid == expected
    assert uids_of(pid) == [expected] * 4


def test_accepts_connections_by_keyword_and_url_dsn(cluster: LocalCluster) -> None:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT current_user, 40 + 2").fetchone() == ("postgres", 42)
    with psycopg.connect(cluster.dsn("postgres")) as conn:
        conn.execute("CREATE TEMP TABLE probe (n int)")
        conn.execute("INSERT INTO probe VALUES (1), (2)")
        assert conn.execute("SELECT sum(n) FROM probe").fetchone() == (3,)
    secret = cluster.params["password"]
    assert len(secret) >= 24
    assert cluster.dsn() == f"postgresql://postgres:{secret}@127.0.0.1:{cluster.port}/postgres"
    assert cluster.version.split(".")[0] == str(cluster.tools.major)


def test_listens_on_loopback_only_with_durability_off(cluster: LocalCluster) -> None:
    with cluster.connect() as conn:
        shown = {
            name: conn.execute(f"SHOW {name}").fetchone()
            for name in ("listen_addresses", "fsync", "synchronous_commit", "full_page_writes", "port")
        }
    assert shown["listen_addresses"] == ("127.0.0.1",)
    assert shown["fsync"] == ("off",)
    assert shown["synchronous_commit"] == ("off",)
    assert shown["full_page_writes"] == ("off",)
    assert shown["port"] == (str(cluster.port),)


def test_cluster_folder_lives_under_the_runtime_base(cluster: LocalCluster) -> None:
    assert cluster.folder is not None
    assert cluster.folder.parent == runtime_base()
    assert cluster.folder.name.startswith("cluster-")
    assert (cluster.folder / "owner.json").is_file()


# --- stop and reuse -------------------------------------------------------------------------------------------


def test_stop_ends_the_postmaster_and_removes_the_folder(pg_tools: PgTools, pg_cache: Path) -> None:
    cluster = LocalCluster(pg_tools, cache_dir=pg_cache).start()
    assert cluster.folder is not None
    folder = cluster.folder
    pid = postmaster_pid(cluster.data_dir)
    assert is_running(pid)

    cluster.stop()

    assert not is_running(pid)
    # The postmaster is this process's child (started directly, not through pg_ctl): stop() collects its exit,
    # so it does not linger as a zombie of the session.
    assert not Path(f"/proc/{pid}").exists()
    assert not folder.exists()
    assert cluster.folder is None
    cluster.stop()  # a second stop is harmless


def test_a_postmaster_that_exits_at_start_fails_at_once_and_is_never_taken_for_the_running_one(
    cluster: LocalCluster,
) -> None:
    """A second postmaster on the running cluster's folder finds the first one's pid file, says `ready` in it,
    and exits: the start must see its own exit (not the other's ready line, nor wait for its timeout)."""
    assert cluster.folder is not None
    first = postmaster_pid(cluster.data_dir)
    log_path = cluster.folder / "second-start.log"
    port = str(free_port())

    with pytest.raises(ToolError, match="exited at start") as caught:
        start_postmaster(
            cluster.tools,
            cluster.data_dir,
            ["-p", port, "-h", "127.0.0.1", "-k", str(cluster.socket_dir)],
            log_path=log_path,
            account=cluster.account,
            cwd=cluster.folder,
            timeout=300,
            what="a second start",
        )

    assert "not ready within" not in str(caught.value)
    assert 'lock file "postmaster.pid" already exists' in log_path.read_text()
    assert postmaster_pid(cluster.data_dir) == first
    with psycopg.connect(cluster.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_server_not_ready_within_the_start_timeout_is_ended_not_left_running(
    pg_tools: PgTools, pg_cache: Path, private_runtime: Path
) -> None:
    cluster = LocalCluster(pg_tools, cache_dir=pg_cache, start_timeout=0)

    with pytest.raises(ServerError, match="not ready within 0 s"):
        cluster.start()

    needle = os.fsencode(str(private_runtime))
    servers = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes() and is_running(int(entry.name)):
                servers.append(entry.name)
    assert servers == []
    assert list(private_runtime.glob("*/cluster-*")) == []


def test_first_start_initdbs_an_empty_cache_and_the_next_start_reuses_it(pg_tools: PgTools, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with LocalCluster(pg_tools, cache_dir=cache).start() as first:
        assert isinstance(first, LocalCluster)
        assert first.reused_pristine is False
    [pristine] = pristine_dirs(cache)
    assert (pristine / "PG_VERSION").read_text().strip() == str(pg_tools.major)
    before = pristine.stat()
    version_before = (pristine / "PG_VERSION").stat()

    with LocalCluster(pg_tools, cache_dir=cache).start() as second:
        assert isinstance(second, LocalCluster)
        assert second.reused_pristine is True
        with second.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

    # initdb again would have replaced the folder: a new inode and a new change time (cp -a keeps mtime
    # but cannot keep ctime).
    after = pristine.stat()
    version_after = (pristine / "PG_VERSION").stat()
    assert pristine_dirs(cache) == [pristine]
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )
    assert (version_after.st_ino, version_after.st_ctime_ns) == (version_before.st_ino, version_before.st_ctime_ns)


def test_warm_start_copies_the_pristine_folder(pg_tools: PgTools, pg_cache: Path, cluster: LocalCluster) -> None:
    # `cluster` made sure the pristine copy exists; a warm start copies it and starts the postmaster (how fast
    # is measured in benchmarks/, not asserted here).
    with LocalCluster(pg_tools, cache_dir=pg_cache).start() as warm:
        assert isinstance(warm, LocalCluster)
        assert warm.reused_pristine is True
        assert warm.started_warm is False
        with warm.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


# --- the parked (warm) data folder ----------------------------------------------------------------------------


def test_a_parked_folder_comes_back_with_its_databases_and_names_its_project(
    pg_tools: PgTools, pg_cache: Path, private_runtime: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    with LocalCluster(pg_tools, cache_dir=pg_cache, warm_key="t1", warm_owner=project).start() as first:
        assert isinstance(first, LocalCluster)
        assert first.started_warm is False
        with first.connect() as conn:
            conn.execute("CREATE DATABASE kept_between_sessions")
        slot = first.warm_slot
    assert slot is not None
    assert slot.is_dir()
    owner = json.loads(slot.with_name(f"{slot.name}.owner.json").read_text())
    assert owner["project_root"] == str(project)
    with LocalCluster(pg_tools, cache_dir=pg_cache, warm_key="t1", warm_owner=project).start() as second:
        assert isinstance(second, LocalCluster)
        assert second.started_warm is True
        assert not slot.exists(), "a claimed folder is no longer parked"
        with second.connect() as conn:
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = 'kept_between_sessions'").fetchone()


def _park_fake(base: Path, key: str, project: Path | None, parked_at: float) -> Path:
    slot = base / f"warm-pg15-test-{key}"
    (slot / "base").mkdir(parents=True)
    (slot / "pg_hba.conf").write_text(PG_HBA)
    owner = {"project_root": str(project) if project else None, "parked_at": parked_at}
    slot.with_name(f"{slot.name}.owner.json").write_text(json.dumps(owner))
    return slot


def test_parked_folders_of_gone_projects_or_a_week_unused_are_evicted(tmp_path: Path) -> None:
    base = tmp_path / "runtime"
    live, gone = tmp_path / "live", tmp_path / "gone"
    live.mkdir()
    now = time.time()
    kept = _park_fake(base, "kept", live, now - 3600)
    orphaned = _park_fake(base, "orphaned", gone, now - 60)
    stale = _park_fake(base, "stale", live, now - 8 * 24 * 3600)
    unowned_recent = _park_fake(base, "unowned", None, now - 60)

    evicted = evict_parked(base, now=now)

    assert sorted(evicted) == sorted([orphaned, stale])
    assert kept.is_dir()
    assert unowned_recent.is_dir()
    assert not orphaned.exists()
    assert not stale.exists()
    assert not orphaned.with_name(f"{orphaned.name}.owner.json").exists()
    assert list(base.glob(".trash-*")) == []


def test_owner_files_left_without_their_folder_are_removed_once_their_project_is_gone(tmp_path: Path) -> None:
    base = tmp_path / "runtime"
    live, gone = tmp_path / "live", tmp_path / "gone"
    live.mkdir()
    now = time.time()
    taken = _park_fake(base, "taken", live, now - 60)  # a session holds it now: it writes the file when it parks
    left = _park_fake(base, "left", gone, now - 60)
    for slot in (taken, left):
        shutil.rmtree(slot)

    evict_parked(base, now=now)

    assert taken.with_name(f"{taken.name}.owner.json").exists()
    assert not left.with_name(f"{left.name}.owner.json").exists()


def test_parked_folders_of_an_older_version_are_evicted(tmp_path: Path) -> None:
    base = tmp_path / "runtime"
    live = tmp_path / "live"
    live.mkdir()
    trusting = _park_fake(base, "trusting", live, time.time() - 60)
    (trusting / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    assert evict_parked(base) == [trusting]
    assert not trusting.exists()


# --- who gets in ----------------------------------------------------------------------------------------------


def _psql_as(user: str, *args: str) -> subprocess.CompletedProcess[str]:
    psql = find_pg_tools(None).bindir / "psql"
    return subprocess.run(
        ["runuser", "-u", user, "--", str(psql), "-w", "-X", "-d", "postgres", "-U", "postgres", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another OS account needs root (runuser)")
def test_another_local_account_cannot_connect_without_the_secret(cluster: LocalCluster) -> None:
    over_tcp = _psql_as("nobody", "-h", "127.0.0.1", "-p", str(cluster.port), "-c", "SELECT 1")
    assert over_tcp.returncode != 0
    assert "password" in over_tcp.stderr, over_tcp.stderr
    over_socket = _psql_as("nobody", "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-c", "SELECT 1")
    assert over_socket.returncode != 0
    assert "Permission denied" in over_socket.stderr or "No such file" in over_socket.stderr, over_socket.stderr
    # The same account with the secret gets in: what stops it is the secret, not the network.
    with_secret = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(find_pg_tools(None).bindir / "psql"), "-X", "-At", "-c",
         "SELECT current_user", cluster.dsn("postgres")],
        capture_output=True, text=True, timeout=30, cwd="/", check=False,
    )  # fmt: skip
    assert with_secret.stdout.strip() == "postgres", with_secret.stderr


def test_a_wrong_or_missing_password_is_refused_over_tcp(cluster: LocalCluster) -> None:
    for password in ("", "not-the-secret"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(
                host="127.0.0.1", port=cluster.port, user="postgres", dbname="postgres", password=password,
                connect_timeout=5,
            )  # fmt: skip


def test_no_trust_lines_a_private_socket_folder_and_a_private_secret(cluster: LocalCluster) -> None:
    hba = (cluster.data_dir / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert rules, "pg_hba.conf has no rules"
    assert all("trust" not in rule for rule in rules), hba
    assert {rule[-1] for rule in rules if rule[0] == "host"} == {"scram-sha-256"}
    with cluster.connect() as conn:
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'").fetchone()
    assert row is not None
    assert str(row[0]).startswith("SCRAM-SHA-256$")
    sock = cluster.socket_dir.stat()
    assert sock.st_mode & 0o777 == 0o700
    owner = cluster.account.uid if cluster.account else os.geteuid()
    assert sock.st_uid == owner
    secret_file = cluster.data_dir / SECRET_FILE
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert secret_file.read_text() == cluster.params["password"]


def test_each_cluster_gets_its_own_secret_and_a_parked_one_keeps_it(
    pg_tools: PgTools, pg_cache: Path, private_runtime: Path, tmp_path: Path, cluster: LocalCluster
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    with LocalCluster(pg_tools, cache_dir=pg_cache, warm_key="sec", warm_owner=project).start() as first:
        assert isinstance(first, LocalCluster)
        secret = first.params["password"]
        assert secret != cluster.params["password"], "two clusters from one pristine copy share a secret"
    with LocalCluster(pg_tools, cache_dir=pg_cache, warm_key="sec", warm_owner=project).start() as second:
        assert isinstance(second, LocalCluster)
        assert second.started_warm is True
        assert second.params["password"] == secret
        with psycopg.connect(second.dsn("postgres")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_parked_cluster_of_an_older_version_is_rebuilt(
    pg_tools: PgTools, pg_cache: Path, private_runtime: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    with LocalCluster(pg_tools, cache_dir=pg_cache, warm_key="old", warm_owner=project).start() as first:
        assert isinstance(first, LocalCluster)
        with first.connect() as conn:
            conn.execute("CREATE DATABASE made_under_trust")
        slot = first.warm_slot
    assert slot is not None
    # What 0.1 left behind: trust for everyone, no secret.
    (slot / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    (slot / SECRET_FILE).unlink()
    with LocalCluster(pg_tools, cache_dir=pg_cache, warm_key="old", warm_owner=project).start() as second:
        assert isinstance(second, LocalCluster)
        assert second.started_warm is False
        with second.connect() as conn:
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = 'made_under_trust'").fetchone() is None
        assert "trust" not in (second.data_dir / "pg_hba.conf").read_text().split("\n", 1)[1]


def test_an_older_pristine_copy_is_removed_and_rebuilt(pg_tools: PgTools, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    old = cache / f"pristine-pg{pg_tools.version}-postgres"
    (old / "global").mkdir(parents=True)
    (old / "PG_VERSION").write_text(str(pg_tools.major))
    with LocalCluster(pg_tools, cache_dir=cache).start() as started:
        assert isinstance(started, LocalCluster)
        assert started.reused_pristine is False
    assert not old.exists()
    expected = f"pristine-v{CLUSTER_FORMAT}-pg{pg_tools.version}-{pg_tools.build_tag}-{_account_name()}"
    assert [p.name for p in pristine_dirs(cache)] == [expected]


def _account_name() -> str:
    account = server_account()
    return account.user if account else str(os.geteuid())


@pytest.mark.skipif(os.geteuid() != 0, reason="the server account differs from ours only when run as root")
def test_a_private_tmpdir_falls_back_to_a_folder_the_server_account_can_reach(
    pg_tools: PgTools, pg_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = Path(tempfile.mkdtemp(prefix="dbsnap-private-", dir="/tmp"))  # 0700, as root's own TMPDIR is
    try:
        inner = private / "tmp"
        inner.mkdir(mode=0o755)
        monkeypatch.setattr(tempfile, "tempdir", str(inner))
        assert runtime_base() == Path("/tmp") / f"pytest-dbsnap-{os.geteuid()}"
        with LocalCluster(pg_tools, cache_dir=pg_cache).start() as started:
            assert isinstance(started, LocalCluster)
            with started.connect() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def test_a_tmpdir_too_long_for_the_socket_falls_back_to_tmp_and_starts(
    pg_tools: PgTools, pg_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deep TMPDIR (a CI workspace's) would put the server's socket past the 107 bytes of a socket path."""
    deep = Path(tempfile.mkdtemp(prefix="dbsnap-deep-", dir="/tmp"))
    try:
        inner = deep / ("workspace-" + "x" * 60) / "tmp"
        inner.mkdir(parents=True)
        for folder in (deep, inner.parent, inner):
            folder.chmod(0o755)
        monkeypatch.setattr(tempfile, "tempdir", str(inner))
        assert runtime_base() == Path("/tmp") / f"pytest-dbsnap-{os.geteuid()}"
        with LocalCluster(pg_tools, cache_dir=pg_cache).start() as started, started.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        shutil.rmtree(deep, ignore_errors=True)


def test_when_no_folder_is_short_enough_the_error_says_to_set_tmpdir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(account_module, "SOCKET_PATH_MAX", 10)  # as if /tmp itself were too deep
    with pytest.raises(ServerError) as caught:
        runtime_base()
    message = str(caught.value)
    assert "too long for the server's socket" in message
    assert "Set TMPDIR to a short folder" in message


# --- faults ---------------------------------------------------------------------------------------------------


def test_fixed_port_in_use_is_a_server_error_naming_the_port(
    pg_tools: PgTools, pg_cache: Path, private_runtime: Path
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = LocalCluster(pg_tools, cache_dir=pg_cache, port=port)
        with pytest.raises(ServerError) as caught:
            cluster.start()
    assert f"Port {port} on 127.0.0.1 is already in use" in str(caught.value)
    assert cluster.folder is None
    assert list(runtime_base().glob("cluster-*")) == [], "the failed cluster's folder was left behind"


_OWNER_SCRIPT = """
import sys
from pathlib import Path
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster

cluster = LocalCluster(find_pg_tools(None), cache_dir=Path(sys.argv[1])).start()
print(cluster.folder, flush=True)
sys.stdin.read()  # stay alive, as a test session would, until killed
"""


def start_owner_session(cache: Path, runtime: Path) -> tuple[subprocess.Popen[str], Path]:
    """A separate process that starts a cluster and keeps it, like a pytest session; returns its folder."""
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER_SCRIPT, str(cache)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(runtime)},
    )
    assert owner.stdout is not None
    line = owner.stdout.readline().strip()
    if not line:
        _, stderr = owner.communicate(timeout=30)
        pytest.fail(f"the owner session did not start a cluster:\n{stderr}")
    return owner, Path(line)


def test_start_removes_a_cluster_left_by_a_session_killed_with_sigkill(
    pg_tools: PgTools, pg_cache: Path, private_runtime: Path
) -> None:
    owner, folder = start_owner_session(pg_cache, private_runtime)
    orphan_pid = postmaster_pid(folder / "data")
    assert is_running(orphan_pid)
    assert remove_stale_clusters(runtime_base(), pg_tools) == [], "a cluster whose owner lives is not stale"
    assert folder.exists()

    os.kill(owner.pid, signal.SIGKILL)
    owner.communicate(timeout=30)  # reaps the owner: its pid is gone
    assert owner.returncode == -signal.SIGKILL
    assert is_running(orphan_pid), "the postmaster outlives its owner; that is what needs cleaning"

    with LocalCluster(pg_tools, cache_dir=pg_cache).start() as fresh:
        assert isinstance(fresh, LocalCluster)
        assert fresh.folder != folder
        assert not is_running(orphan_pid)
        assert not folder.exists()


def test_remove_stale_clusters_treats_an_unreaped_dead_owner_as_gone(
    pg_tools: PgTools, pg_cache: Path, private_runtime: Path
) -> None:
    owner, folder = start_owner_session(pg_cache, private_runtime)
    orphan_pid = postmaster_pid(folder / "data")
    try:
        os.kill(owner.pid, signal.SIGKILL)
        # Wait for the exit without reaping it: the owner stays a zombie, as under a PID 1 that never reaps.
        os.waitid(os.P_PID, owner.pid, os.WEXITED | os.WNOWAIT)
        assert Path(f"/proc/{owner.pid}").exists()

        removed = remove_stale_clusters(runtime_base(), pg_tools)

        assert removed == [folder]
        assert not folder.exists()
        assert not is_running(orphan_pid)
    finally:
        owner.communicate(timeout=30)


def test_missing_binaries_are_a_tool_error_naming_the_programs(tmp_path: Path) -> None:
    (tmp_path / "initdb").write_text("#!/bin/sh\n")
    with pytest.raises(ToolError) as caught:
        find_pg_tools(tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message
    lacking = message.split("which lacks ", 1)[1].split(".", 1)[0]
    assert lacking == "pg_ctl, postgres, pg_dump, pg_restore"
    assert "pg_config --bindir" in message


def test_missing_client_binaries_are_named_when_only_clients_are_needed(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"lacks pg_dump, pg_restore\."):
        find_pg_tools(tmp_path, need_server=False)

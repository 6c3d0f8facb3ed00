"""Cluster snapshots against real clusters and files: written when a session's data came from the dump, a fresh
machine (no parked folder, an empty pristine cache) starts from it with the same data, and every damaged or
foreign snapshot falls back to the dump with a warning; a writer killed with -9 or two writers at once leave
nothing a later session would use wrongly."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.core.progress import Reporter
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres.account import server_account
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.postgres.parking import SECRET_FILE, stop_postmaster
from pytest_dbsnap.postgres.snapshot import (
    LEFT_OUT,
    Snapshot,
    SnapshotMeta,
    locate_snapshot,
    snapshots_of,
    verify_snapshot,
)
from pytest_dbsnap.stack.session import DatabaseOutcome, prepare_database, snapshot_source

ProjectWriter = Callable[..., Path]

ENV = "dev"
# Every row of the seeded tables, so "the same data" means the same bytes, not only the same counts.
DATA_QUERY = (
    "SELECT (SELECT count(*) FROM reality_nodes), (SELECT count(*) FROM reality_edges), "
    "(SELECT md5(string_agg(n::text, '|' ORDER BY n.id)) FROM reality_nodes n), "
    "(SELECT md5(string_agg(e::text, '|' ORDER BY e.id)) FROM reality_edges e)"
)
# Holds the zstd program until a file appears, so a test can act while a snapshot is being written.
HELD_ZSTD = """#!/bin/sh
while [ ! -e "{release}" ]; do sleep 0.02; done
exec {zstd} "$@"
"""


def settings_for(root: Path, **cli: object) -> Settings:
    return load_settings(project_root=root, pyproject=root / "pyproject.toml", environ={}, cli=cli)


def data_of(cluster: LocalCluster, database: str = "app") -> tuple[object, ...]:
    with cluster.connect(database) as conn:
        row = conn.execute(DATA_QUERY).fetchone()
    assert row is not None
    return tuple(row)


def archive_bytes(snapshot: Snapshot) -> bytes:
    """The uncompressed tar stream (small here: a cluster with one tiny database)."""
    return subprocess.run(["zstd", "-dcq", str(snapshot.archive)], check=True, capture_output=True).stdout


def archive_members(snapshot: Snapshot) -> list[str]:
    listing = subprocess.run(
        ["tar", "-tf", "-"], input=archive_bytes(snapshot), check=True, capture_output=True
    ).stdout.decode()
    return [line.removeprefix("./").rstrip("/") for line in listing.splitlines()]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A runtime folder of this module's own (short, under /tmp, world-traversable): parked folders and clusters
    of other sessions on this machine are neither seen nor touched."""
    tmp_path_factory.getbasetemp()  # fixed before tempfile's folder is patched, so it does not move in here
    folder = Path(tempfile.mkdtemp(prefix="dbsnap-s-", dir="/tmp"))
    folder.chmod(0o755)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(folder))
        yield folder
    for data_dir in folder.glob("*/cluster-*/data"):
        if (data_dir / "postmaster.pid").exists():
            stop_postmaster(find_pg_tools(None), data_dir, server_account())
    shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Original:
    """A project whose first session generated the dump and wrote its snapshot, and what the data was."""

    root: Path
    dump_name: str
    data: tuple[object, ...]
    secret: str
    snapshot: Snapshot


@pytest.fixture(scope="module")
def original(runtime: Path, project_writer: ProjectWriter, tmp_path_factory: pytest.TempPathFactory) -> Original:
    root = project_writer(tmp_path_factory.mktemp("snapshot") / "project")
    settings = settings_for(root)
    assert snapshot_source(settings) is None, "no dump yet, so nothing to start from"
    cache = tmp_path_factory.mktemp("snapshot-cache")
    with LocalCluster(find_pg_tools(None), cache_dir=cache).start() as cluster:
        assert isinstance(cluster, LocalCluster)
        outcome = prepare_database(cluster, settings, spare_in_background=False)
        assert outcome.generated
        data, secret = data_of(cluster), cluster.params["password"]
    assert cluster.snapshot_written is not None, cluster.snapshot_problem
    store = DumpStore(root / "dumps")
    [name] = store.names(ENV)
    [snapshot] = snapshots_of(store.dump_path(ENV, name))
    return Original(root, name, data, secret, snapshot)


def fresh_machine(original: Original, tmp_path: Path, *, drop_snapshot: bool = False) -> Settings:
    """A copy of the project (its dump store with the snapshot) as a CI cache brings it to a new runner."""
    root = tmp_path / "project"
    shutil.copytree(original.root, root)
    if drop_snapshot:
        for path in (root / "dumps" / ENV).glob("*.pgdata-*"):
            path.unlink()
    return settings_for(root)


def start_fresh(settings: Settings, cache: Path) -> LocalCluster:
    """A cluster as a fresh machine starts it: no parked folder (no warm key), an empty pristine cache."""
    return LocalCluster(find_pg_tools(None), cache_dir=cache, snapshot_of=snapshot_source(settings)).start()


def copied(original: Original, settings: Settings) -> Snapshot:
    [snapshot] = snapshots_of(DumpStore(settings.dumps_dir).dump_path(ENV, original.dump_name))
    return snapshot


# --- writing ----------------------------------------------------------------------------------------------------


def test_the_snapshot_sits_beside_the_dump_and_carries_no_secret(original: Original) -> None:
    snapshot = original.snapshot
    assert snapshot.archive.name.startswith(f"{original.dump_name}.pgdata-")
    assert snapshot.archive.name.endswith(".tar.zst")
    assert snapshot.archive.stat().st_mode & 0o777 == 0o600
    meta = verify_snapshot(snapshot)
    recorded = json.loads(snapshot.meta_path.read_text())
    assert (
        recorded["key"]["dump_sha256"] == DumpStore(original.root / "dumps").read_meta(ENV, original.dump_name).sha256
    )
    assert recorded["key_digest"] in snapshot.archive.name
    assert meta.size_bytes == snapshot.archive.stat().st_size
    assert meta.write_seconds > 0
    members = archive_members(snapshot)
    assert "PG_VERSION" in members
    assert not set(members) & LEFT_OUT, "lock files, the secret or the ident map were packed"
    assert original.secret.encode() not in archive_bytes(snapshot)
    assert original.secret not in snapshot.meta_path.read_text()
    assert DumpStore(original.root / "dumps").names(ENV) == [original.dump_name], "a snapshot is not a dump"


# --- starting from it -------------------------------------------------------------------------------------------


def test_a_fresh_machine_starts_from_the_snapshot_with_the_same_data(original: Original, tmp_path: Path) -> None:
    settings = fresh_machine(original, tmp_path)
    cache = tmp_path / "cache"
    reporter = Reporter()  # as the plugin's: the server start is a step, the unpack a part of it
    reporter.step("starting PostgreSQL (local)")
    with start_fresh(settings, cache) as cluster:
        reporter.end()
        started, unpacked = reporter.steps
        assert unpacked.label == f"unpacking the cluster snapshot {original.snapshot.archive.name}"
        assert unpacked.within == started.label == "starting PostgreSQL (local)"
        assert started.seconds >= unpacked.seconds > 0
        assert isinstance(cluster, LocalCluster)
        assert cluster.started_from_snapshot == original.snapshot.archive.name
        assert cluster.snapshot_problem is None
        assert not cache.exists(), "initdb ran although the snapshot was used"
        outcome = prepare_database(cluster, settings, spare_in_background=False)
        assert outcome.method == "cluster snapshot"
        assert outcome.warnings == []
        assert outcome.describe().startswith(f"{ENV}/{original.dump_name} -> 'app': cluster snapshot in ")
        assert data_of(cluster) == original.data
        # Its own secret, set through the socket at its first start; the old one is refused.
        secret = cluster.params["password"]
        assert secret != original.secret
        assert (cluster.data_dir / SECRET_FILE).read_text() == secret
        with psycopg.connect(cluster.dsn("app")) as conn:
            assert conn.execute("SELECT count(*) FROM reality_nodes").fetchone() == (original.data[0],)
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(cluster.dsn("app").replace(secret, original.secret), connect_timeout=5)
    assert cluster.snapshot_written is None, "a snapshot that exists is not written again"
    assert copied(original, settings).archive.stat().st_size == original.snapshot.archive.stat().st_size


def test_the_snapshot_is_not_used_when_turned_off(original: Original, tmp_path: Path) -> None:
    settings = fresh_machine(original, tmp_path)
    settings = settings_for(settings.project_root, cluster_snapshot=False)
    assert snapshot_source(settings) is None


# --- falling back -----------------------------------------------------------------------------------------------


def _flip_a_byte(snapshot: Snapshot) -> None:
    with snapshot.archive.open("r+b") as archive:
        archive.seek(snapshot.archive.stat().st_size // 2)
        byte = archive.read(1)
        archive.seek(-1, os.SEEK_CUR)
        archive.write(bytes([byte[0] ^ 0xFF]))


def _truncate(snapshot: Snapshot) -> None:
    os.truncate(snapshot.archive, snapshot.archive.stat().st_size // 2)


def _other_machine(snapshot: Snapshot) -> None:
    recorded = json.loads(snapshot.meta_path.read_text())
    recorded["key"]["arch"] = "sparc64"
    snapshot.meta_path.write_text(json.dumps(recorded))


def _missing_archive(snapshot: Snapshot) -> None:
    snapshot.archive.unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_flip_a_byte, "sha256 does not match"),
        (_truncate, "truncated"),
        (_other_machine, "arch 'x86_64' here, 'sparc64' in the snapshot"),
        (_missing_archive, "is missing"),
    ],
    ids=["flipped-byte", "truncated", "key-mismatch", "missing-file"],
)
def test_a_damaged_or_foreign_snapshot_falls_back_to_the_dump_and_is_replaced(
    original: Original, tmp_path: Path, damage: object, reason: str
) -> None:
    settings = fresh_machine(original, tmp_path)
    snapshot = copied(original, settings)
    assert callable(damage)
    damage(snapshot)
    if "x86_64" in reason:
        reason = reason.replace("x86_64", os.uname().machine)
    with start_fresh(settings, tmp_path / "cache") as cluster:
        assert isinstance(cluster, LocalCluster)
        assert cluster.started_from_snapshot is None
        assert cluster.snapshot_problem is not None
        assert snapshot.archive.name in cluster.snapshot_problem
        assert reason in cluster.snapshot_problem
        assert not snapshot.meta_path.exists(), "the broken snapshot was kept"
        outcome = prepare_database(cluster, settings, spare_in_background=False)
        assert (outcome.method, outcome.verified) == ("pg_restore", True)
        assert outcome.warnings == [cluster.snapshot_problem]
        assert "\n" not in outcome.warnings[0]
        assert data_of(cluster) == original.data
    # The cold restore wrote a good one in its place.
    assert cluster.snapshot_written is not None
    assert verify_snapshot(snapshot).archive == snapshot.archive.name


def test_a_snapshot_the_server_refuses_falls_back_to_the_dump(original: Original, tmp_path: Path) -> None:
    settings = fresh_machine(original, tmp_path)
    snapshot = copied(original, settings)
    # Repack it with a damaged control file: the archive and its metadata agree, but the server will not start.
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-C", str(unpacked), "-xf", "-"], input=archive_bytes(snapshot), check=True)
    control = unpacked / "global" / "pg_control"
    # As if written by a build of another catalog version (recorded so in the metadata too): the server refuses
    # the control file at start (its CRC no longer matches either).
    content = bytearray(control.read_bytes())
    catalog_version = int.from_bytes(content[12:16], "little") + 1
    content[12:16] = catalog_version.to_bytes(4, "little")
    control.write_bytes(bytes(content))
    tar = subprocess.run(["tar", "-C", str(unpacked), "-cf", "-", "."], check=True, capture_output=True).stdout
    packed = subprocess.run(["zstd", "-1", "-q", "-c"], input=tar, check=True, capture_output=True).stdout
    snapshot.archive.write_bytes(packed)
    recorded = json.loads(snapshot.meta_path.read_text())
    recorded.update(
        size_bytes=len(packed), sha256=hashlib.sha256(packed).hexdigest(), catalog_version=str(catalog_version)
    )
    snapshot.meta_path.write_text(json.dumps(recorded))

    with start_fresh(settings, tmp_path / "cache") as cluster:
        assert isinstance(cluster, LocalCluster)
        assert cluster.started_from_snapshot is None
        assert cluster.snapshot_problem is not None
        assert "the server did not start from it" in cluster.snapshot_problem
        assert "control file" in cluster.snapshot_problem, "the server's own reason is not named"
        assert not snapshot.meta_path.exists(), "the snapshot the server refused was kept"
        outcome = prepare_database(cluster, settings, spare_in_background=False)
        assert outcome.method == "pg_restore"
        assert data_of(cluster) == original.data


# --- writers killed or racing -----------------------------------------------------------------------------------

_SESSION = """
import sys
from pathlib import Path
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.stack.session import prepare_database, snapshot_source
from pytest_dbsnap.config.loading import load_settings

root = Path(sys.argv[1])
settings = load_settings(project_root=root, pyproject=root / "pyproject.toml", environ={})
cluster = LocalCluster(find_pg_tools(None), cache_dir=Path(sys.argv[2]), snapshot_of=snapshot_source(settings))
cluster.start()
prepare_database(cluster, settings, spare_in_background=False)
cluster.stop()
"""


def held_zstd(folder: Path) -> tuple[Path, Path]:
    """A folder to put first on PATH whose zstd waits for the returned release file."""
    folder.mkdir()
    release = folder / "release"
    wrapper = folder / "zstd"
    wrapper.write_text(HELD_ZSTD.format(release=release, zstd=shutil.which("zstd")))
    wrapper.chmod(0o755)
    return folder, release


def wait_for_temporary(folder: Path, archive_name: str, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(folder.glob(f".{archive_name}.*.tmp"))
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no snapshot was being written in {folder} within {timeout} s")


def test_a_writer_killed_with_sigkill_leaves_nothing_a_later_session_uses(
    original: Original, tmp_path: Path, runtime: Path
) -> None:
    settings = fresh_machine(original, tmp_path, drop_snapshot=True)
    ref = snapshot_source(settings)
    assert ref is not None
    snapshot, _key = locate_snapshot(find_pg_tools(None), ref)
    bindir, _release = held_zstd(tmp_path / "bin")
    writer = subprocess.Popen(
        [sys.executable, "-c", _SESSION, str(settings.project_root), str(tmp_path / "cache")],
        env={**os.environ, "TMPDIR": str(runtime), "PATH": f"{bindir}:{os.environ['PATH']}"},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        temporary = wait_for_temporary(snapshot.archive.parent, snapshot.archive.name)
    finally:
        os.killpg(writer.pid, signal.SIGKILL)
        writer.communicate(timeout=30)
    assert temporary.exists()
    assert not snapshot.archive.exists()
    assert not snapshot.meta_path.exists()

    with start_fresh(settings, tmp_path / "cache") as cluster:
        assert isinstance(cluster, LocalCluster)
        assert cluster.started_from_snapshot is None
        assert cluster.snapshot_problem is None, "a half-written snapshot is not a snapshot"
        outcome = prepare_database(cluster, settings, spare_in_background=False)
        assert outcome.method == "pg_restore"
        assert data_of(cluster) == original.data
    assert cluster.snapshot_written is not None
    verify_snapshot(snapshot)
    assert not temporary.exists(), "the killed writer's leftover was not removed"


def test_two_sessions_writing_the_same_snapshot_produce_one(
    original: Original, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = fresh_machine(original, tmp_path, drop_snapshot=True)
    bindir, release = held_zstd(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    first = start_fresh(settings, tmp_path / "cache")
    second = start_fresh(settings, tmp_path / "cache")
    stopping: threading.Thread | None = None
    try:
        outcomes: list[DatabaseOutcome] = [
            prepare_database(cluster, settings, spare_in_background=False) for cluster in (first, second)
        ]
        # Both restored the dump cold, each on its own cluster, so both will write its snapshot when they stop.
        assert [outcome.method for outcome in outcomes] == ["pg_restore", "pg_restore"]
        ref = snapshot_source(settings)
        assert ref is not None
        stopping = threading.Thread(target=first.stop)
        stopping.start()
        snapshot, _key = locate_snapshot(find_pg_tools(None), ref)
        wait_for_temporary(snapshot.archive.parent, snapshot.archive.name)
        second.stop()  # the first holds the snapshot's lock: the second leaves it to it
        assert second.snapshot_written is None
        assert second.snapshot_problem is None
    finally:
        release.touch()
        if stopping is not None:
            stopping.join(timeout=120)
        first.stop()
        second.stop()
    assert first.snapshot_written is not None
    found = snapshots_of(DumpStore(settings.dumps_dir).dump_path(ENV, original.dump_name))
    assert [s.archive.name for s in found] == [snapshot.archive.name]
    verify_snapshot(found[0])
    assert list(snapshot.archive.parent.glob("*.tmp")) == []


def test_snapshot_metadata_that_is_not_json_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "x.pgdata-0.json"
    path.write_text("{not json")
    with pytest.raises(Exception, match="not readable JSON") as caught:
        SnapshotMeta.read(path)
    assert type(caught.value).__name__ == "SnapshotUnusable"


# --- the command line -------------------------------------------------------------------------------------------


def test_dbsnap_list_show_and_verify_show_snapshots_and_prune_removes_them_with_the_dump(
    original: Original, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_dbsnap.cli import main

    settings = fresh_machine(original, tmp_path)
    snapshot = copied(original, settings)
    monkeypatch.chdir(settings.project_root)

    assert main(["list", "--env", ENV]) == 0
    listed = capsys.readouterr().out
    assert f"cluster snapshot {snapshot.archive.name.removeprefix(original.dump_name)}: " in listed
    assert main(["show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [s["archive"] for s in shown["snapshots"]] == [snapshot.archive.name]
    assert main(["verify"]) == 0
    assert f"ok      {ENV}/{snapshot.archive.name}" in capsys.readouterr().out

    _flip_a_byte(snapshot)
    assert main(["verify"]) == 1
    assert f"FAILED  {ENV}/{snapshot.archive.name}: " in capsys.readouterr().err

    DumpStore(settings.dumps_dir).remove(ENV, original.dump_name)  # what prune does with each dump it removes
    assert list((settings.dumps_dir / ENV).glob(f"*{original.dump_name}*")) == []

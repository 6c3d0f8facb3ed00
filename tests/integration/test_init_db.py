"""seeds/scripts/init-db.sh run for real, outside any container, against a local cluster this module starts.

No Docker engine was used: there is none on the machine these tests were written on. What runs here is the
script itself, executed through its `#!/bin/sh` line the way the postgres image's entrypoint executes it, as an
unprivileged account when the tests run as root (the image runs it as its postgres user), with the image's
first-start environment: POSTGRES_USER and POSTGRES_DB set, the target database created empty beforehand, and
a connection over the cluster's unix socket only (PGHOST is its socket folder), like the image's socket-only
init server. The dumps are made by pytest-dbsnap itself (`import_dump`), so their metadata is the real thing.
What was not run: the image's entrypoint, the bind mounts of docker-compose.dev.yml, and a real container start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from pytest_dbsnap.core.proc import RunAs, chown_tree, run
from pytest_dbsnap.dumps.importer import import_dump
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.binaries import Binaries
from pytest_dbsnap.postgres.local import LocalCluster

SCRIPT = Path(__file__).resolve().parents[2] / "seeds" / "scripts" / "init-db.sh"
ENV = "dev"
ROWS = [(1, "root"), (2, "docs"), (3, "src")]
NO_DUMP_LINE = "no dump for environment dev in {dumps}; leaving the empty database for migrations"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster for the module, of the system's PostgreSQL, as in a project pinned to an older major (the
    compose file's postgres:18 would read every dump); the pristine cache is shared with the other modules."""
    cache = tmp_path_factory.getbasetemp() / "pg-cache"
    cache.mkdir(exist_ok=True)
    with LocalCluster(find_pg_tools(Binaries(postgres_binaries="system")), cache_dir=cache).start() as started:
        assert isinstance(started, LocalCluster)
        yield started


@pytest.fixture(scope="module")
def source_dump(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pg_dump -Fc archive of a small database: a table `nodes` with three rows."""
    with cluster.connect() as admin:
        databases.create_empty(admin, "init_db_source")
    with cluster.connect("init_db_source") as conn:
        conn.execute("CREATE TABLE nodes (id integer PRIMARY KEY, label text NOT NULL)")
        for row in ROWS:
            conn.execute("INSERT INTO nodes VALUES (%s, %s)", row)
    path = tmp_path_factory.mktemp("init-db-source") / "source.dump"
    conninfo, env = cluster.tool_args("init_db_source")
    run([cluster.tools.path("pg_dump"), "-Fc", "-f", str(path), "-d", conninfo], what="pg_dump", env=env, timeout=60)
    return path


@pytest.fixture
def dumps_dir() -> Iterator[Path]:
    """An empty dump store the script's account can reach (pytest's own temp folder is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="dbsnap-initdb-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def target_db(cluster: LocalCluster) -> Iterator[str]:
    """A fresh empty database, as the image creates POSTGRES_DB before running its init scripts."""
    name = f"init_db_target_{secrets.token_hex(4)}"
    with cluster.connect() as admin:
        databases.create_empty(admin, name)
    yield name
    with cluster.connect() as admin:
        databases.drop(admin, name)


def script_account(cluster: LocalCluster) -> RunAs | None:
    """Who runs the script: the server's unprivileged account when we are root, like the image; else us."""
    return cluster.account


def store_dump(cluster: LocalCluster, dumps_dir: Path, source: Path) -> DumpMeta:
    """Import a dump the way `dbsnap import` does (real metadata, `latest` pointer), owned by the script's
    account, as the dumps service of docker-compose.dev.yml stages them for the server."""
    meta = import_dump(DumpStore(dumps_dir), cluster.tools, source, ENV)
    hand_over(cluster, dumps_dir)
    return meta


def hand_over(cluster: LocalCluster, dumps_dir: Path) -> None:
    account = script_account(cluster)
    if account is not None:
        chown_tree(dumps_dir, account)


def run_init_db(
    cluster: LocalCluster, database: str, dumps_dir: Path, env: str = ENV
) -> subprocess.CompletedProcess[str]:
    """Execute the script with the image's first-start environment and a socket-only connection."""
    assert cluster.folder is not None
    account = script_account(cluster)
    environ = {
        "PATH": f"{cluster.tools.bindir}:/usr/local/bin:/usr/bin:/bin",
        "PGHOST": str(cluster.folder / "sock"),
        "PGPORT": str(cluster.port),
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": database,
        "DBSNAP_DUMPS_DIR": str(dumps_dir),
        "DBSNAP_ENV": env,
    }
    return subprocess.run(
        [str(SCRIPT)],
        env=environ,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        user=account.uid if account else None,
        group=account.gid if account else None,
        extra_groups=[] if account else None,
    )


def user_relations(cluster: LocalCluster, database: str) -> list[str]:
    """Tables, sequences, indexes and views outside the system schemas: none in a database left empty."""
    with cluster.connect(database) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
            "ORDER BY 1"
        ).fetchall()
    return [str(row[0]) for row in rows]


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The script's one-line refusal on stderr."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("init-db: refusing to restore:")]
    assert len(lines) == 1, result.stderr
    assert "Nothing was restored" in lines[0]
    assert "down -v" in lines[0]
    return lines[0]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows_of(cluster: LocalCluster, database: str) -> list[tuple[object, ...]]:
    with cluster.connect(database) as conn:
        return conn.execute("SELECT id, label FROM nodes ORDER BY id").fetchall()


def test_init_db_script_is_an_executable_posix_sh_script() -> None:
    """The image runs it with /bin/sh (dash on Debian, busybox on Alpine): no bash-only syntax."""
    assert os.access(SCRIPT, os.X_OK), "the image sources, rather than runs, an init script without the x bit"
    assert SCRIPT.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(SCRIPT)], check=True, capture_output=True, timeout=30)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck); the sh -n syntax check passed")
    result = subprocess.run(
        [shellcheck, "-s", "sh", str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout


# --- restores -------------------------------------------------------------------------------------------------


def test_init_db_script_outside_container_restores_the_latest_dump(
    cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    meta = store_dump(cluster, dumps_dir, source_dump)
    result = run_init_db(cluster, target_db, dumps_dir)
    assert result.returncode == 0, result.stderr
    assert rows_of(cluster, target_db) == ROWS
    restored = [line for line in result.stdout.splitlines() if line.startswith("init-db: restored dump")]
    assert len(restored) == 1, result.stdout
    assert f"dump {meta.name} of environment dev into database {target_db}" in restored[0]
    assert f"{meta.size_bytes} bytes" in restored[0]
    assert f"sha256 {meta.sha256[:16]}..." in restored[0]
    assert "schema version unknown" in restored[0]  # an imported dump records none
    assert f"chosen by {dumps_dir}/dev/latest" in result.stdout


def test_init_db_script_outside_container_logs_the_schema_version_from_the_metadata(
    cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    store = DumpStore(dumps_dir)
    imported = import_dump(store, cluster.tools, source_dump, ENV)
    temporary = store.new_temporary(ENV)
    shutil.copyfile(source_dump, temporary)
    generated = dataclasses.replace(
        imported, name=f"{imported.name}-generated", schema_version="0042_add_edges", source="generated"
    )
    store.install(temporary, generated)
    hand_over(cluster, dumps_dir)
    result = run_init_db(cluster, target_db, dumps_dir)
    assert result.returncode == 0, result.stderr
    assert f"restored dump {generated.name} of environment dev" in result.stdout
    assert "schema version 0042_add_edges" in result.stdout


def test_init_db_script_outside_container_without_latest_pointer_restores_the_newest_dump(
    cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    store = DumpStore(dumps_dir)
    first = import_dump(store, cluster.tools, source_dump, ENV)
    # A second, newer dump (names sort by their UTC time) that differs from the first: one row less.
    with cluster.connect("init_db_source") as conn:
        conn.execute("DELETE FROM nodes WHERE id = 3")
    try:
        smaller = source_dump.with_name("smaller.dump")
        conninfo, env = cluster.tool_args("init_db_source")
        run(
            [cluster.tools.path("pg_dump"), "-Fc", "-f", str(smaller), "-d", conninfo],
            what="pg_dump",
            env=env,
            timeout=60,
        )
    finally:
        with cluster.connect("init_db_source") as conn:
            conn.execute("INSERT INTO nodes VALUES (%s, %s)", ROWS[2])
    temporary = store.new_temporary(ENV)
    shutil.copyfile(smaller, temporary)
    size = smaller.stat().st_size
    newest = dataclasses.replace(
        first, name=f"29991231T235959Z-import-{first.sha256[:8]}", size_bytes=size, sha256=sha256_of(smaller)
    )
    store.install(temporary, newest, make_latest=False)
    (dumps_dir / ENV / "latest").unlink()
    hand_over(cluster, dumps_dir)
    result = run_init_db(cluster, target_db, dumps_dir)
    assert result.returncode == 0, result.stderr
    assert rows_of(cluster, target_db) == ROWS[:2]
    assert f"restored dump {newest.name}" in result.stdout
    assert "chosen by the newest metadata file" in result.stdout


# --- no dump --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["no environment folder", "empty environment folder", "dump without metadata"])
def test_init_db_script_outside_container_without_a_dump_leaves_the_database_empty(
    layout: str, cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    if layout != "no environment folder":
        (dumps_dir / ENV).mkdir()
    if layout == "dump without metadata":
        shutil.copyfile(source_dump, dumps_dir / ENV / "orphan.dump")
    hand_over(cluster, dumps_dir)
    result = run_init_db(cluster, target_db, dumps_dir)
    assert result.returncode == 0, result.stderr
    assert f"init-db: {NO_DUMP_LINE.format(dumps=dumps_dir)}" in result.stdout.splitlines()
    if layout == "dump without metadata":
        assert f"ignoring {dumps_dir}/dev/orphan.dump: it has no metadata" in result.stdout
    assert user_relations(cluster, target_db) == []


# --- refusals: the database is never touched -------------------------------------------------------------------


def test_init_db_script_outside_container_refuses_a_corrupt_dump(
    cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    meta = store_dump(cluster, dumps_dir, source_dump)
    dump = dumps_dir / ENV / f"{meta.name}.dump"
    content = bytearray(dump.read_bytes())
    content[len(content) // 2] ^= 0xFF  # same size, one byte flipped
    dump.write_bytes(bytes(content))
    result = run_init_db(cluster, target_db, dumps_dir)
    message = refusal(result)
    assert f"the dump {dump} does not match the sha256" in message
    assert f"expected {meta.sha256}, got {sha256_of(dump)}" in message
    assert "regenerate it (dbsnap generate --env dev)" in message
    assert user_relations(cluster, target_db) == []


def test_init_db_script_outside_container_refuses_a_truncated_dump(
    cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    meta = store_dump(cluster, dumps_dir, source_dump)
    dump = dumps_dir / ENV / f"{meta.name}.dump"
    with dump.open("r+b") as handle:
        handle.truncate(meta.size_bytes - 100)
    result = run_init_db(cluster, target_db, dumps_dir)
    message = refusal(result)
    assert f"the dump {dump} has {meta.size_bytes - 100} bytes but its metadata" in message
    assert f"records {meta.size_bytes}: the file is truncated" in message
    assert user_relations(cluster, target_db) == []


def test_init_db_script_outside_container_refuses_a_dump_without_metadata(
    cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    meta = store_dump(cluster, dumps_dir, source_dump)
    (dumps_dir / ENV / f"{meta.name}.json").unlink()
    result = run_init_db(cluster, target_db, dumps_dir)
    message = refusal(result)
    assert f"the metadata {dumps_dir}/dev/{meta.name}.json of dump {meta.name}" in message
    assert "cannot be verified" in message
    assert user_relations(cluster, target_db) == []


def test_init_db_script_outside_container_refuses_metadata_without_sha256(
    cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    meta = store_dump(cluster, dumps_dir, source_dump)
    meta_path = dumps_dir / ENV / f"{meta.name}.json"
    meta_path.write_text(meta_path.read_text().replace('"sha256"', '"sha_256"'))
    result = run_init_db(cluster, target_db, dumps_dir)
    message = refusal(result)
    assert f'the metadata {meta_path} has no single valid "sha256"' in message
    assert user_relations(cluster, target_db) == []


def test_init_db_script_outside_container_refuses_a_missing_dump_file(
    cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    meta = store_dump(cluster, dumps_dir, source_dump)
    (dumps_dir / ENV / f"{meta.name}.dump").unlink()
    message = refusal(run_init_db(cluster, target_db, dumps_dir))
    assert f"the dump file {dumps_dir}/dev/{meta.name}.dump is missing" in message
    assert user_relations(cluster, target_db) == []


def test_init_db_script_outside_container_refuses_a_dump_from_a_newer_pg_dump(
    cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    meta = store_dump(cluster, dumps_dir, source_dump)
    meta_path = dumps_dir / ENV / f"{meta.name}.json"
    meta_path.write_text(meta_path.read_text().replace(f'"{meta.pg_dump_version}"', '"99.1"'))
    message = refusal(run_init_db(cluster, target_db, dumps_dir))
    assert f"the dump dev/{meta.name} ({dumps_dir}/dev/{meta.name}.dump) was written by pg_dump 99.1" in message
    assert f"the pg_restore of this image is PostgreSQL {cluster.tools.version}" in message
    assert "use an image of PostgreSQL 99 or newer (postgres:99)" in message
    assert user_relations(cluster, target_db) == []


def test_init_db_script_outside_container_refuses_a_real_dump_of_a_newer_pg_dump(
    cluster: LocalCluster, dump_by_newer_pg: Any, dumps_dir: Path, target_db: str
) -> None:
    """Written by the wheel's pg_dump 18, read by the system's pg_restore 15, as in a project pinned to 15."""
    meta = dump_by_newer_pg.meta
    shutil.copytree(dump_by_newer_pg.root / "dumps" / ENV, dumps_dir / ENV)
    hand_over(cluster, dumps_dir)
    message = refusal(run_init_db(cluster, target_db, dumps_dir))
    assert f"was written by pg_dump {meta.pg_dump_version}, and the pg_restore of this image is PostgreSQL " in message
    assert f"postgres:{meta.pg_dump_major}" in message
    assert user_relations(cluster, target_db) == []


@pytest.mark.parametrize("env", ["../x", "dev/../dev", "..", ".hidden", "a b"])
def test_init_db_script_outside_container_refuses_a_bad_environment_name(
    env: str, cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    store_dump(cluster, dumps_dir, source_dump)
    message = refusal(run_init_db(cluster, target_db, dumps_dir, env=env))
    assert f"DBSNAP_ENV='{env}' is not a plain environment name" in message
    assert user_relations(cluster, target_db) == []


def test_init_db_script_outside_container_refuses_a_latest_pointer_outside_the_folder(
    cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    store_dump(cluster, dumps_dir, source_dump)
    (dumps_dir / ENV / "latest").write_text("../other/20260101T000000Z-x\n")
    message = refusal(run_init_db(cluster, target_db, dumps_dir))
    assert f"{dumps_dir}/dev/latest holds '../other/20260101T000000Z-x', which is not a dump name" in message
    assert user_relations(cluster, target_db) == []


@pytest.mark.parametrize("what", ["dump file", "metadata file", "latest pointer", "environment folder"])
def test_init_db_script_outside_container_refuses_what_its_account_cannot_read(
    what: str, cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    meta = store_dump(cluster, dumps_dir, source_dump)
    unreadable = {
        "dump file": dumps_dir / ENV / f"{meta.name}.dump",
        "metadata file": dumps_dir / ENV / f"{meta.name}.json",
        "latest pointer": dumps_dir / ENV / "latest",
        "environment folder": dumps_dir / ENV,
    }[what]
    # What a bind mount shows on Linux when the container's uid is not the owner of the store's 0600 files.
    if os.geteuid() == 0:
        os.chown(unreadable, 0, 0)
        unreadable.chmod(0o700 if unreadable.is_dir() else 0o600)
    else:
        unreadable.chmod(0)
    try:
        message = refusal(run_init_db(cluster, target_db, dumps_dir))
    finally:
        unreadable.chmod(0o700 if unreadable.is_dir() else 0o600)  # so the fixture can remove it
    assert f"cannot read {unreadable} as uid" in message
    assert "the dumps service stages the chosen dump" in message
    assert user_relations(cluster, target_db) == []


def test_init_db_script_outside_container_failed_restore_leaves_nothing_behind(
    cluster: LocalCluster, source_dump: Path, dumps_dir: Path, target_db: str
) -> None:
    """A verified dump whose restore fails part-way (here: its table already exists, after the dump's other
    objects were created) is rolled back whole by --single-transaction."""
    with cluster.connect("init_db_source") as conn:
        conn.execute("CREATE TABLE a_created_first (n integer)")
        conn.execute("INSERT INTO a_created_first VALUES (1)")
    try:
        two_tables = source_dump.with_name("two-tables.dump")
        conninfo, env = cluster.tool_args("init_db_source")
        run(
            [cluster.tools.path("pg_dump"), "-Fc", "-f", str(two_tables), "-d", conninfo],
            what="pg_dump",
            env=env,
            timeout=60,
        )
    finally:
        with cluster.connect("init_db_source") as conn:
            conn.execute("DROP TABLE a_created_first")
    store_dump(cluster, dumps_dir, two_tables)
    with cluster.connect(target_db) as conn:
        conn.execute("CREATE TABLE nodes (conflicting integer)")
    result = run_init_db(cluster, target_db, dumps_dir)
    message = refusal(result)
    assert f"pg_restore could not restore {dumps_dir}/dev/" in message
    assert "the database is left as it was, empty on a first start" in message
    assert 'relation "nodes" already exists' in result.stderr
    assert user_relations(cluster, target_db) == ["nodes"]  # only what was there before; a_created_first is gone


def test_init_db_script_outside_container_leaves_out_policies_for_roles_the_server_lacks(
    cluster: LocalCluster,
    older_cluster: LocalCluster,
    dumps_dir: Path,
    target_db: str,
    tmp_path: Path,
    database_with_policies: Callable[[LocalCluster], AbstractContextManager[tuple[str, str]]],
) -> None:
    """A pg_dump of staging or prod whose row-level security policies name its own roles: the compose server has
    none of them, so those policies are left out and named, and the rest restores (PUBLIC's policy included)."""
    with database_with_policies(older_cluster) as (name, _role):  # another cluster: the role is its own
        path = tmp_path / "staging.dump"
        conninfo, env = older_cluster.tool_args(name)
        run([older_cluster.tools.path("pg_dump"), "-Fc", "-f", str(path), "-d", conninfo], what="pg_dump", env=env)
    store_dump(cluster, dumps_dir, path)
    result = run_init_db(cluster, target_db, dumps_dir)
    assert result.returncode == 0, result.stderr
    assert "leaving out the row-level security policies public people own_team" in result.stdout
    with cluster.connect(target_db) as conn:
        kept = conn.execute("SELECT policyname FROM pg_policies WHERE tablename = 'people' ORDER BY 1").fetchall()
        assert kept == [("admins",), ("everyone",)]
        assert conn.execute("SELECT count(*) FROM people").fetchone() == (9,)

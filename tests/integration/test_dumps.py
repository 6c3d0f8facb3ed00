"""Dumps against a real local cluster: generate -> metadata -> restore, template clones and spares, faults
(corrupt and truncated files, a restore killed with -9, bad metadata, newer pg_dump), prune, import, staleness."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from psycopg import sql

from pytest_dbsnap._version import __version__
from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.dumps.fingerprint import compute_fingerprint, file_sha256
from pytest_dbsnap.dumps.generate import dump_name, generate_dump
from pytest_dbsnap.dumps.importer import import_dump
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.restore import (
    check_target,
    count_rows,
    drop_orphan_templates,
    prepare_spare,
    restore_dump,
    spare_name,
    template_name,
)
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.errors import (
    ConfigError,
    DumpCorrupt,
    DumpError,
    DumpNotFound,
    DumpTooNew,
    RestoreError,
    ServerError,
    ToolError,
)
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import Server
from pytest_dbsnap.postgres.external import ExternalServer, connect_external
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.stack.session import prepare_database, staleness
from refapp.migrate import head_revision

ENV = "dev"
# The local cluster trusts every local connection, so any password works: it shows where one could leak.
SECRET = "s3cret-Pw-4-dbsnap"  # noqa: S105 - a made-up password, to find it where it must not be
EXPECTED_ROWS = {"public.alembic_version": 1, "public.reality_nodes": 200, "public.reality_edges": 100}


@dataclasses.dataclass(frozen=True)
class Generated:
    """The dump this module generates once, and what it was generated from."""

    root: Path
    settings: Settings
    store: DumpStore
    meta: DumpMeta

    @property
    def dump_path(self) -> Path:
        return self.store.dump_path(ENV, self.meta.name)

    @property
    def meta_path(self) -> Path:
        return self.store.meta_path(ENV, self.meta.name)


def settings_for(root: Path, **cli: object) -> Settings:
    """Settings as the CLI builds them for a project folder, without the caller's DBSNAP_* or DATABASE_URL."""
    return load_settings(project_root=root, pyproject=root / "pyproject.toml", environ={}, cli=cli)


@pytest.fixture(scope="module")
def server(dumps_cluster: LocalCluster) -> ExternalServer:
    """The session's cluster reached through a DSN with a password, as a CI database would be."""
    with dumps_cluster.connect() as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'ci_admin'").fetchone() is None:
            conn.execute(f"CREATE ROLE ci_admin LOGIN SUPERUSER PASSWORD '{SECRET}'")
    dsn = f"postgresql://ci_admin:{SECRET}@127.0.0.1:{dumps_cluster.port}/postgres"
    return connect_external(dsn, allow_remote=False, tools=dumps_cluster.tools)


@pytest.fixture(scope="module")
def generated(
    tmp_path_factory: pytest.TempPathFactory, project_writer: Callable[..., Path], server: ExternalServer
) -> Generated:
    root = project_writer(tmp_path_factory.mktemp("generated") / "project", git=True)
    settings = settings_for(root, dumps_dir=str(root / "dumps"))
    store = DumpStore(settings.dumps_dir)
    generation = generate_dump(server, settings, store, ENV)
    meta, made = generation.meta, generation.made
    assert made
    return Generated(root, settings, store, meta)


# --- helpers --------------------------------------------------------------------------------------------------


def database_names(server: Server, like: str) -> set[str]:
    with server.connect() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (like,)).fetchall()
    return {str(row[0]) for row in rows}


def own_staging(server: Server, pid: int | None = None) -> set[str]:
    """Staging databases of one process (this one by default): other processes may share the server."""
    return database_names(server, f"dbsnap\\_stage\\_{pid or os.getpid()}\\_%")


def forget_templates(server: Server, meta: DumpMeta) -> None:
    """Make the next restore of `meta` read the dump file, whatever earlier tests restored."""
    with server.connect() as conn:
        for name in (template_name(meta), spare_name(meta)):
            if databases.exists(conn, name):
                databases.drop_template(conn, name)


def make_marked_database(server: Server, name: str, note: str, *, ours: bool = True) -> None:
    """A database with distinguishable content, to prove later that it was (or was not) replaced; `ours`: as
    an earlier restore left it (carrying pytest-dbsnap's comment), else as a user made it."""
    with server.connect() as conn:
        databases.drop(conn, name)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if ours:
            databases.mark(conn, name)
    with server.connect(name) as conn:
        conn.execute("CREATE TABLE marker (note text NOT NULL)")
        conn.execute("INSERT INTO marker VALUES (%s)", (note,))


def marker_notes(server: Server, name: str) -> list[str] | None:
    """The marker rows of a database, or None when it has no marker table."""
    with server.connect(name) as conn:
        if conn.execute("SELECT to_regclass('public.marker')").fetchone() == (None,):
            return None
        return [str(row[0]) for row in conn.execute("SELECT note FROM marker ORDER BY note").fetchall()]


def content_of(server: Server, name: str) -> tuple[dict[str, int], str]:
    """Row counts and a digest of every node, to compare two copies of the seeded data."""
    with server.connect(name) as conn:
        counts = count_rows(conn)
        row = conn.execute("SELECT md5(string_agg(n::text, '|' ORDER BY n.id)) FROM reality_nodes n").fetchone()
    assert row is not None
    return counts, str(row[0])


def copy_store(source: Generated, destination: Path) -> DumpStore:
    """A private copy of the generated store, for tests that damage or prune it."""
    shutil.copytree(source.store.root, destination)
    return DumpStore(destination)


def rewrite_meta(store: DumpStore, name: str, **changes: object) -> None:
    path = store.meta_path(ENV, name)
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


# --- generate and restore ------------------------------------------------------------------------------------


def test_generated_metadata_records_what_was_dumped(
    generated: Generated, server: ExternalServer, dumps_cluster: LocalCluster
) -> None:
    meta = generated.meta
    assert meta.format_version == 1
    assert (meta.format, meta.source, meta.environment, meta.database) == ("custom", "generated", ENV, "app")
    assert meta.sha256 == file_sha256(generated.dump_path)
    assert meta.size_bytes == generated.dump_path.stat().st_size > 0
    assert meta.schema_version == head_revision()
    assert meta.pg_dump_version == dumps_cluster.tools.version
    assert meta.server_version == dumps_cluster.version
    assert meta.row_counts == EXPECTED_ROWS
    assert meta.tool_version == __version__
    assert meta.duration_seconds > 0

    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=generated.root, check=True, capture_output=True, text=True
    ).stdout.strip()
    assert (meta.git_commit, meta.git_dirty) == (head, False)

    fingerprint, inputs = compute_fingerprint(generated.settings)
    assert (meta.fingerprint, meta.fingerprint_inputs) == (fingerprint, inputs)
    assert inputs["seed-inputs/universe.txt"] == file_sha256(generated.root / "seed-inputs" / "universe.txt")
    assert inputs["missing:missing-*.sql"] == "0" * 64
    assert "setting:commands" in inputs

    created = dt.datetime.strptime(meta.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert meta.name == dump_name(created, head, False, fingerprint)
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}Z-{head}-{fingerprint[:8]}", meta.name)

    for path in (generated.dump_path, generated.meta_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (generated.store.env_dir(ENV) / "latest").read_text() == f"{meta.name}\n"
    assert generated.store.latest_name(ENV) == meta.name

    text = generated.meta_path.read_text()
    assert text == meta.to_json()
    assert DumpMeta.read(generated.meta_path) == meta
    assert "password" not in text.lower()
    assert SECRET not in text
    for log in generated.settings.logs_dir.glob("*.log"):
        assert SECRET not in log.read_text(), f"{log} shows the password"
    assert sorted(p.name for p in generated.store.env_dir(ENV).iterdir() if p.name != ".generate.lock") == sorted(
        [generated.dump_path.name, generated.meta_path.name, "latest"]
    )
    assert own_staging(server) == set(), "the scratch database of the generate was left behind"


def test_restore_replaces_the_target_with_the_recorded_rows(generated: Generated, server: ExternalServer) -> None:
    forget_templates(server, generated.meta)
    make_marked_database(server, "round_trip", "old content")

    result = restore_dump(server, generated.meta, generated.dump_path, "round_trip")

    assert (result.method, result.verified, result.database) == ("pg_restore", True, "round_trip")
    counts, _digest = content_of(server, "round_trip")
    assert counts == generated.meta.row_counts
    assert marker_notes(server, "round_trip") is None, "the old content is still there"
    with server.connect() as conn:
        row = conn.execute(
            "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = %s", (template_name(generated.meta),)
        ).fetchone()
    assert row == (True, False), "the verified restore is kept as the dump's template, closed to connections"
    assert own_staging(server) == set()
    # The replaced database is dropped off the critical path, by a thread of this process.
    deadline = time.monotonic() + 30
    while database_names(server, f"dbsnap\\_old\\_{os.getpid()}\\_%"):
        assert time.monotonic() < deadline, "the replaced database was never dropped"
        time.sleep(0.05)  # polling interval while the background drop finishes


def test_second_restore_clones_the_template_and_a_prepared_spare_is_swapped_in(
    generated: Generated, server: ExternalServer
) -> None:
    meta, path = generated.meta, generated.dump_path
    forget_templates(server, meta)
    make_marked_database(server, "bystander", "not mine")
    make_marked_database(server, "swapped", "old content")

    first = restore_dump(server, meta, path, "swapped")
    restored = content_of(server, "swapped")
    make_marked_database(server, "swapped", "written since")

    second = restore_dump(server, meta, path, "swapped")

    assert (first.method, second.method) == ("pg_restore", "template clone")
    assert second.verified is False
    assert content_of(server, "swapped") == restored
    assert marker_notes(server, "swapped") is None

    with server.connect("swapped") as conn:
        conn.execute("CREATE TABLE marker (note text)")
    assert prepare_spare(server, meta) is True
    assert prepare_spare(server, meta) is False, "a second spare of the same dump is not needed"
    with server.connect() as conn:
        spare = conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (spare_name(meta),)).fetchone()
    assert spare == (False,), "the spare stays closed so it cannot drift from its template"

    third = restore_dump(server, meta, path, "swapped")

    assert third.method == "spare swap"
    assert content_of(server, "swapped") == restored
    assert marker_notes(server, "swapped") is None
    assert database_names(server, spare_name(meta).replace("_", "\\_")) == set(), "the spare was used up"
    assert template_name(meta) in database_names(server, "dbsnap\\_tpl\\_%")
    assert marker_notes(server, "bystander") == ["not mine"]
    assert own_staging(server) == set()
    assert database_names(server, "dbsnap\\_old\\_%") == set()


def test_a_deferred_app_database_is_cloned_before_the_next_spare(generated: Generated, server: ExternalServer) -> None:
    """A session's first test makes the app database (a clone of the template); the spare for the next session is
    cloned after it, not before: one template gives one copy at a time, so a spare begun first would make that test
    wait for a whole copy of the database."""
    meta = generated.meta
    restore_dump(server, meta, generated.dump_path, "deferred_app")  # the template is there, as after a restore
    with server.connect() as conn:
        databases.drop(conn, "deferred_app")
        databases.drop(conn, spare_name(meta))
    settings = dataclasses.replace(generated.settings, database="deferred_app")

    outcome = prepare_database(server, settings, defer_app=True)
    outcome.wait_for_spare()

    assert outcome.pending
    assert database_names(server, spare_name(meta).replace("_", "\\_")) == set(), "a spare was copied first"
    assert outcome.database == "deferred_app"
    outcome.wait_for_spare()
    with server.connect() as conn:
        rows = conn.execute(
            "SELECT datname, oid::bigint FROM pg_database WHERE datname IN (%s, %s)", ("deferred_app", spare_name(meta))
        ).fetchall()
    oids = {str(name): int(str(oid)) for name, oid in rows}
    assert oids["deferred_app"] < oids[spare_name(meta)], "the spare was made after the app database"
    with server.connect("deferred_app") as conn:
        assert conn.execute("SELECT count(*) FROM reality_nodes").fetchone() == (EXPECTED_ROWS["public.reality_nodes"],)


def test_restore_refuses_system_and_own_databases_as_targets(generated: Generated, server: ExternalServer) -> None:
    for target in ("postgres", "template1", "dbsnap_tpl_x"):
        with pytest.raises(ConfigError, match="Refusing to restore into"):
            check_target(target)
    with pytest.raises(ConfigError, match="'postgres'"):
        restore_dump(server, generated.meta, generated.dump_path, "postgres")


# --- damaged dumps --------------------------------------------------------------------------------------------


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate_to_half(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (flip_a_byte, r"does not match its recorded sha256 \(expected [0-9a-f]{16}\.\.\., got [0-9a-f]{16}\.\.\.\)"),
        (truncate_to_half, r"has \d+ bytes but its metadata records \d+: the file is truncated"),
    ],
    ids=["flipped-byte", "truncated"],
)
def test_damaged_dump_is_refused_before_the_target_is_touched(
    generated: Generated,
    server: ExternalServer,
    tmp_path: Path,
    damage: Callable[[Path], None],
    expected: str,
) -> None:
    store = copy_store(generated, tmp_path / "dumps")
    path = store.dump_path(ENV, generated.meta.name)
    damage(path)
    forget_templates(server, generated.meta)
    make_marked_database(server, "damaged_target", "keep me")

    with pytest.raises(DumpCorrupt, match=expected) as caught:
        restore_dump(server, generated.meta, path, "damaged_target")

    message = str(caught.value)
    assert str(path) in message
    assert "Nothing was restored" in message
    assert "dbsnap generate" in message
    assert marker_notes(server, "damaged_target") == ["keep me"]
    assert own_staging(server) == set()
    assert template_name(generated.meta) not in database_names(server, "dbsnap\\_tpl\\_%")


def test_unverified_damaged_dump_fails_in_pg_restore_and_leaves_the_target(
    generated: Generated, server: ExternalServer, tmp_path: Path
) -> None:
    store = copy_store(generated, tmp_path / "dumps")
    path = store.dump_path(ENV, generated.meta.name)
    truncate_to_half(path)
    forget_templates(server, generated.meta)
    make_marked_database(server, "unverified_target", "keep me")

    with pytest.raises(RestoreError) as caught:
        restore_dump(server, generated.meta, path, "unverified_target", verify=False)

    message = str(caught.value)
    assert f"Restoring {generated.meta.name} into" in message
    assert "the database 'unverified_target' was not touched" in message
    assert "pg_restore" in message
    assert SECRET not in message
    assert marker_notes(server, "unverified_target") == ["keep me"]
    assert own_staging(server) == set()
    assert template_name(generated.meta) not in database_names(server, "dbsnap\\_tpl\\_%")


def test_rows_that_differ_from_the_metadata_fail_the_restore_and_leave_the_target(
    generated: Generated, server: ExternalServer, tmp_path: Path
) -> None:
    store = copy_store(generated, tmp_path / "dumps")
    rewrite_meta(store, generated.meta.name, row_counts={**generated.meta.row_counts, "public.reality_nodes": 999})
    meta = store.get(ENV)
    forget_templates(server, meta)
    make_marked_database(server, "count_target", "keep me")

    with pytest.raises(RestoreError) as caught:
        restore_dump(server, meta, store.dump_path(ENV, meta.name), "count_target")

    assert "does not match its metadata (public.reality_nodes: 200 rows, expected 999)" in str(caught.value)
    assert "the database 'count_target' was not touched" in str(caught.value)
    assert marker_notes(server, "count_target") == ["keep me"]
    assert own_staging(server) == set()
    assert template_name(meta) not in database_names(server, "dbsnap\\_tpl\\_%")


# A check that sleeps in staging databases only: the source fills fast, a restore of its dump takes seconds.
# In a staging database (a restore), a row waits while the hold file exists: the test sees the COPY held, kills the
# restore there and only then removes the file, so the kill never depends on how long the COPY takes.
HELD_SOURCE_SQL = [
    """CREATE FUNCTION public.held_in_staging(n integer) RETURNS boolean LANGUAGE plpgsql AS $$
       BEGIN
           WHILE current_database() LIKE 'dbsnap\\_stage\\_%' AND (pg_stat_file('HOLD', true)).size IS NOT NULL
                 AND clock_timestamp() < statement_timestamp() + interval '2 min' LOOP
               PERFORM pg_sleep(0.02);
           END LOOP;
           RETURN n IS NOT NULL;
       END $$""",
    "CREATE TABLE public.held (n integer CHECK (public.held_in_staging(n)))",
    "INSERT INTO public.held SELECT generate_series(1, 20)",
]
RESTORE_SCRIPT = """
import sys
from pathlib import Path
from pytest_dbsnap.dumps.restore import restore_dump
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres.external import connect_external

server = connect_external(sys.argv[1], allow_remote=False)
store = DumpStore(Path(sys.argv[2]))
meta = store.get(sys.argv[3])
restore_dump(server, meta, store.dump_path(sys.argv[3], meta.name), sys.argv[4], jobs=1)
"""


def dump_database(server: Server, database: str, destination: Path) -> Path:
    """pg_dump -Fc by hand, as a user would bring a dump of a managed database."""
    conninfo, env = server.tool_args(database)
    subprocess.run(
        [str(server.tools.path("pg_dump")), "-Fc", "-f", str(destination), "-d", conninfo],
        env=env,
        check=True,
        capture_output=True,
    )
    return destination


def test_restore_killed_mid_way_leaves_the_target_and_the_next_run_drops_its_staging(
    generated: Generated, server: ExternalServer, tmp_path: Path, hold_folder: Path
) -> None:
    hold = hold_folder / "hold-copy"
    make_marked_database(server, "slow_source", "source")
    with server.connect("slow_source") as conn:
        for statement in HELD_SOURCE_SQL:
            conn.execute(statement.replace("HOLD", str(hold)).encode())
    store = DumpStore(tmp_path / "dumps")
    import_dump(store, server.tools, dump_database(server, "slow_source", tmp_path / "slow.dump"), "slow")
    make_marked_database(server, "kill_target", "keep me")
    hold.touch()

    # The backend of a killed client notices at once only when asked to check; otherwise it keeps
    # working through the rows it has buffered and the staging database stays busy for seconds.
    environ = {**os.environ, "PGOPTIONS": "-c client_connection_check_interval=50ms"}
    admin_dsn = f"postgresql://ci_admin:{SECRET}@127.0.0.1:{server.params['port']}/postgres"
    with subprocess.Popen(
        [sys.executable, "-c", RESTORE_SCRIPT, admin_dsn, str(store.root), "slow", "kill_target"],
        env=environ,
        start_new_session=True,  # its own process group: pg_restore, its child, dies with it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as restoring:
        staging_pattern = f"dbsnap\\_stage\\_{restoring.pid}\\_%"
        deadline = time.monotonic() + 60
        with server.connect() as conn:
            while not conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname LIKE %s AND query LIKE 'COPY%%'", (staging_pattern,)
            ).fetchone():
                if restoring.poll() is not None:
                    pytest.fail(f"the restore ended before it could be killed: {restoring.communicate()[1]!r}")
                assert time.monotonic() < deadline, "pg_restore never started copying into a staging database"
                time.sleep(0.02)  # polling interval while waiting for the COPY to show
        os.killpg(restoring.pid, signal.SIGKILL)  # held in the COPY: it cannot have gone further
        restoring.wait(timeout=30)
    hold.unlink()
    assert restoring.returncode == -signal.SIGKILL

    [leftover] = own_staging(server, restoring.pid)
    assert marker_notes(server, "kill_target") == ["keep me"]
    assert database_names(server, "dbsnap\\_old\\_%") == set()

    result = restore_dump(server, generated.meta, generated.dump_path, "after_kill")

    assert result.database == "after_kill"
    assert leftover not in database_names(server, "dbsnap\\_stage\\_%"), "the next restore did not drop it"
    assert marker_notes(server, "kill_target") == ["keep me"]


# --- metadata and store faults --------------------------------------------------------------------------------


def test_missing_metadata_hides_the_dump(generated: Generated, tmp_path: Path) -> None:
    store = copy_store(generated, tmp_path / "dumps")
    name = generated.meta.name
    store.meta_path(ENV, name).unlink()

    assert store.names(ENV) == []
    with pytest.raises(DumpNotFound, match=f"no dump named '{name}'.*has no dumps yet.*dbsnap generate --env dev"):
        store.get(ENV, name)
    with pytest.raises(DumpNotFound, match="There is no latest dump"):
        store.get(ENV)
    with pytest.raises(DumpCorrupt, match="is missing: a dump without its metadata cannot be verified"):
        DumpMeta.read(store.meta_path(ENV, name))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", r"is not readable JSON"),
        ('["a list"]', r"is not a JSON object"),
        (None, r"is malformed: sha256 must be 64 lowercase hex digits"),
        ("format_version", r"has format_version 7; this pytest-dbsnap reads version 1"),
        ("pg_dump_version", r"is malformed: pg_dump_version must be a version number"),
    ],
    ids=["not-json", "not-object", "bad-sha256", "format-version", "pg-dump-version"],
)
def test_malformed_metadata_is_a_clear_error(
    generated: Generated, tmp_path: Path, content: str | None, expected: str
) -> None:
    store = copy_store(generated, tmp_path / "dumps")
    name = generated.meta.name
    if content is None:
        rewrite_meta(store, name, sha256="XYZ")
    elif content == "format_version":
        rewrite_meta(store, name, format_version=7)
    elif content == "pg_dump_version":
        rewrite_meta(store, name, pg_dump_version="fifteen")
    else:
        store.meta_path(ENV, name).write_text(content)

    with pytest.raises(DumpCorrupt, match=expected) as caught:
        store.get(ENV)
    assert str(store.meta_path(ENV, name)) in str(caught.value)
    assert "dbsnap generate" in str(caught.value) or "Upgrade pytest-dbsnap" in str(caught.value)


def test_renamed_metadata_is_refused(generated: Generated, tmp_path: Path) -> None:
    store = copy_store(generated, tmp_path / "dumps")
    moved = "20200101T000000Z-nogit-00000000"
    store.meta_path(ENV, generated.meta.name).rename(store.meta_path(ENV, moved))
    store.dump_path(ENV, generated.meta.name).rename(store.dump_path(ENV, moved))
    with pytest.raises(DumpCorrupt, match="the files were renamed or moved by hand"):
        store.get(ENV, moved)


def test_unknown_environment_lists_the_known_ones(generated: Generated) -> None:
    with pytest.raises(DumpNotFound) as caught:
        generated.store.get("nope")
    message = str(caught.value)
    assert "there is no environment 'nope'" in message
    assert "(environments: dev)" in message
    assert "dbsnap generate --env nope" in message
    with pytest.raises(ConfigError, match="The environment name 'a b' is not accepted"):
        generated.store.get("a b")


def test_missing_dump_file_is_a_clear_error(generated: Generated, server: ExternalServer, tmp_path: Path) -> None:
    store = copy_store(generated, tmp_path / "dumps")
    path = store.dump_path(ENV, generated.meta.name)
    path.unlink()
    with pytest.raises(DumpNotFound, match="is missing although its metadata exists"):
        store.get(ENV)
    forget_templates(server, generated.meta)
    with pytest.raises(DumpCorrupt, match=f"The dump file {re.escape(str(path))} is missing"):
        restore_dump(server, generated.meta, path, "never_made")
    assert "never_made" not in database_names(server, "never\\_made")


def test_dump_of_a_newer_pg_dump_is_refused_naming_both_versions(
    generated: Generated, server: ExternalServer, tmp_path: Path
) -> None:
    store = copy_store(generated, tmp_path / "dumps")
    rewrite_meta(store, generated.meta.name, pg_dump_version="99.0")
    meta = store.get(ENV)
    forget_templates(server, meta)
    make_marked_database(server, "version_target", "keep me")

    with pytest.raises(DumpError) as caught:
        restore_dump(server, meta, store.dump_path(ENV, meta.name), "version_target")

    message = str(caught.value)
    assert isinstance(caught.value, DumpTooNew)
    assert f"The dump {ENV}/{meta.name} ({store.dump_path(ENV, meta.name)}) was written by pg_dump 99.0" in message
    assert f"would read it here is PostgreSQL {server.tools.version} ({server.tools.bindir})" in message
    assert "or point pg_bindir (--pg-bindir, DBSNAP_PG_BINDIR) at a PostgreSQL >= 99 installation" in message
    assert marker_notes(server, "version_target") == ["keep me"]
    assert own_staging(server) == set()


def test_generate_replaces_a_latest_dump_whose_metadata_is_unreadable(
    generated: Generated, server: ExternalServer, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(generated.root, project)
    settings = settings_for(project)
    store = DumpStore(settings.dumps_dir)
    store.meta_path(ENV, generated.meta.name).write_text("{broken")

    generation = generate_dump(server, settings, store, ENV)
    meta, made = generation.meta, generation.made

    assert made
    assert store.latest_name(ENV) == meta.name != generated.meta.name
    assert store.get(ENV) == meta


def test_failed_seed_leaves_the_store_and_the_server_as_they_were(
    server: ExternalServer, project_writer: Callable[..., Path], tmp_path: Path
) -> None:
    settings = dataclasses.replace(
        settings_for(project_writer(tmp_path / "project")),
        seed_command=("python", "-c", "import sys; print('seed broke'); sys.exit(3)"),
    )
    store = DumpStore(settings.dumps_dir)

    with pytest.raises(ToolError) as caught:
        generate_dump(server, settings, store, ENV)

    message = str(caught.value)
    assert "Generating a dump of environment 'dev' failed; the store was not changed." in message
    assert "the store was not changed. The seed command failed with exit code 3" in message
    assert "seed broke" in message
    assert SECRET not in message
    assert [p.name for p in store.env_dir(ENV).iterdir() if p.name != ".generate.lock"] == []
    assert own_staging(server) == set()


# --- prune ----------------------------------------------------------------------------------------------------


def add_copy(store: DumpStore, meta: DumpMeta, source: Path, name: str) -> DumpMeta:
    """Another dump in the store (same bytes, another name), as an older or newer generate would leave."""
    temporary = store.new_temporary(ENV)
    shutil.copyfile(source, temporary)
    return store.install(temporary, dataclasses.replace(meta, name=name), make_latest=False)


def test_prune_keeps_the_newest_and_never_the_latest_pointer(generated: Generated, tmp_path: Path) -> None:
    store = DumpStore(tmp_path / "dumps")
    names = [f"2099010{i}T000000Z-nogit-0000000{i}" for i in range(1, 5)]
    for name in names:
        add_copy(store, generated.meta, generated.dump_path, name)
    store.set_latest(ENV, names[0])
    (store.env_dir(ENV) / ".incoming-0123456789ab.dump.tmp").write_bytes(b"half a dump")

    with pytest.raises(ConfigError, match="--keep must be 1 or more"):
        store.prune(ENV, 0)
    removed = store.prune(ENV, 1)

    assert removed == names[1:3]
    assert store.names(ENV) == [names[0], names[3]]
    assert store.latest_name(ENV) == names[0]
    left = sorted(p.name for p in store.env_dir(ENV).iterdir() if p.name != ".generate.lock")
    assert left == sorted([f"{names[0]}.dump", f"{names[0]}.json", f"{names[3]}.dump", f"{names[3]}.json", "latest"])


def test_orphan_templates_are_dropped_and_current_ones_kept(generated: Generated, server: ExternalServer) -> None:
    restore_dump(server, generated.meta, generated.dump_path, "orphan_check")
    orphans = [f"{databases.TEMPLATE_PREFIX}{'e' * 20}", f"{databases.SPARE_PREFIX}{'e' * 20}"]
    with server.connect() as conn:
        for name in orphans:
            databases.drop(conn, name)
            databases.create_empty(conn, name)
        databases.mark_template(conn, orphans[0])

    dropped = drop_orphan_templates(server, generated.store.all_sha256())

    assert set(orphans) <= set(dropped)
    assert template_name(generated.meta) not in dropped
    assert database_names(server, "dbsnap\\_%\\_eeeeeeeeeeeeeeeeeeee") == set()
    assert template_name(generated.meta) in database_names(server, "dbsnap\\_tpl\\_%")
    assert content_of(server, "orphan_check")[0] == generated.meta.row_counts


# --- import ---------------------------------------------------------------------------------------------------


def test_imported_dump_is_listed_latest_and_restorable(server: ExternalServer, tmp_path: Path) -> None:
    make_marked_database(server, "handmade", "alpha")
    with server.connect("handmade") as conn:
        conn.execute("INSERT INTO marker VALUES ('beta'), ('gamma')")
    source = dump_database(server, "handmade", tmp_path / "handmade.dump")
    store = DumpStore(tmp_path / "dumps")

    meta = import_dump(store, server.tools, source, "imported")

    assert store.names("imported") == [meta.name]
    assert store.latest_name("imported") == meta.name
    assert store.get("imported") == meta
    assert re.fullmatch(r"\d{8}T\d{6}Z-import-[0-9a-f]{8}", meta.name)
    assert (meta.source, meta.fingerprint, meta.database) == ("imported", None, "handmade")
    assert meta.fingerprint_inputs == {"imported_from": "handmade.dump"}
    assert meta.pg_dump_version == server.tools.version
    assert meta.server_version.split(".")[0] == str(server.tools.major)
    stored = store.dump_path("imported", meta.name)
    assert meta.sha256 == file_sha256(source) == file_sha256(stored)
    assert meta.size_bytes == source.stat().st_size
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert staleness(settings_for(tmp_path), meta) is None, "an imported dump is never stale"

    forget_templates(server, meta)
    result = restore_dump(server, meta, stored, "from_import")

    assert result.method == "pg_restore"
    assert marker_notes(server, "from_import") == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"CREATE TABLE t (n int);\n", "is not a pg_dump custom-format archive"),
        (b"PGDMP\x01\x0e\x00", "cannot be read by pg_restore"),
    ],
    ids=["plain-sql", "truncated-archive"],
)
def test_import_of_a_non_archive_is_refused(
    server: ExternalServer, tmp_path: Path, content: bytes, expected: str
) -> None:
    source = tmp_path / "backup.dump"
    source.write_bytes(content)
    store = DumpStore(tmp_path / "dumps")

    with pytest.raises(DumpCorrupt, match=expected):
        import_dump(store, server.tools, source, "imported")

    assert not store.env_dir("imported").exists(), "a refused file must leave no trace in the store"
    with pytest.raises(DumpCorrupt, match="There is no file"):
        import_dump(store, server.tools, tmp_path / "absent.dump", "imported")
    (tmp_path / "directory.dump").mkdir()  # pg_dump -Fd writes a folder
    with pytest.raises(DumpCorrupt, match=r"is a folder \(a pg_dump -Fd archive, say\).*pg_dump -Fc"):
        import_dump(store, server.tools, tmp_path / "directory.dump", "imported")


# --- the session's database step ------------------------------------------------------------------------------


def test_changed_input_makes_the_dump_stale_and_the_session_regenerates_it(
    generated: Generated, server: ExternalServer, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(generated.root, project)
    settings = settings_for(project, database="stale_app")
    store = DumpStore(settings.dumps_dir)
    assert staleness(settings, generated.meta) is None

    (project / "seed-inputs" / "universe.txt").write_text("galaxies: elliptical\n")

    reason = staleness(settings, generated.meta)
    assert reason == "stale: seed-inputs/universe.txt changed"

    outcome = prepare_database(server, settings, spare_in_background=False)

    assert outcome.generated is True
    assert outcome.stale_reason == reason
    assert outcome.meta is not None
    new = outcome.meta
    assert new.name != generated.meta.name
    assert store.names(ENV) == sorted([generated.meta.name, new.name])
    assert store.latest_name(ENV) == new.name
    assert new.git_dirty is True, "a tracked input changed since the commit"
    assert "-dirty-" in new.name
    assert outcome.method == "template clone", "the seeded database itself became the template"
    assert content_of(server, "stale_app")[0] == new.row_counts
    assert staleness(settings, new) is None
    assert "generated in" in outcome.describe()

    no_seed = dataclasses.replace(settings, seed_command=None)
    with pytest.raises(DumpError) as caught:
        prepare_database(server, no_seed, spare_in_background=False)
    message = str(caught.value)
    assert f"The latest dump {new.name} of environment 'dev'" in message
    assert "is stale: setting:commands changed" in message
    assert "no seed_command is configured" in message
    assert "`dbsnap generate --env dev`" in message


def test_the_stale_reason_tells_removed_and_added_inputs_from_changed_ones(
    generated: Generated, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(generated.root, project)
    settings = settings_for(project)
    (project / "seed-inputs" / "universe.txt").unlink()
    (project / "seed-inputs" / "stars.txt").write_text("stars: many\n")
    assert staleness(settings, generated.meta) == (
        "stale: seed-inputs/stars.txt added, seed-inputs/universe.txt removed"
    )


def test_without_a_dump_or_a_seed_command_the_session_says_how_to_make_one(
    server: ExternalServer, project_writer: Callable[..., Path], tmp_path: Path
) -> None:
    settings = settings_for(project_writer(tmp_path / "project", seed=False), database="no_dump_app")
    with pytest.raises(DumpError) as caught:
        prepare_database(server, settings, spare_in_background=False)
    message = str(caught.value)
    assert message.startswith(f"There is no dump of environment 'dev' in {settings.dumps_dir}")
    assert "no seed_command is configured" in message
    assert "`dbsnap generate --env dev`" in message
    assert "`dbsnap import FILE --env dev`" in message
    assert "--skip-dump-restore" in message
    assert "no_dump_app" not in database_names(server, "no\\_dump\\_app")


def test_skip_dump_restore_keeps_the_database_and_still_migrates(generated: Generated, server: ExternalServer) -> None:
    make_marked_database(server, "kept_app", "mine")
    settings = dataclasses.replace(generated.settings, skip_dump_restore=True, database="kept_app")
    with server.connect() as conn:
        databases.drop(conn, "created_app")

    kept = prepare_database(server, settings, spare_in_background=False)
    created = prepare_database(server, dataclasses.replace(settings, database="created_app"), spare_in_background=False)

    for outcome in (kept, created):
        assert outcome.method == "kept as it was"
        assert outcome.generated is False
        assert outcome.meta == generated.meta
    assert marker_notes(server, "kept_app") == ["mine"]
    for name in ("kept_app", "created_app"):
        with server.connect(name) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)
            assert conn.execute("SELECT count(*) FROM reality_nodes").fetchone() == (0,)


def test_connection_errors_do_not_show_the_password(server: ExternalServer) -> None:
    with pytest.raises(ServerError, match="Cannot connect to database 'no_such_database'") as caught:
        server.connect("no_such_database")
    assert SECRET not in str(caught.value)

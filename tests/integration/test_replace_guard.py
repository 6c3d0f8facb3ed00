"""Never replace a database pytest-dbsnap did not make: every database the tool creates carries its mark, and a
restore (library, session, CLI) replaces only a marked, missing or empty database unless told to, against a real
server reached by DSN as a developer's own server would be."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from psycopg import sql

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.dumps.generate import generate_dump
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.restore import count_rows, prepare_spare, restore_dump, spare_name, template_name
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.errors import UnmanagedDatabase
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import Server
from pytest_dbsnap.postgres.external import ExternalServer, connect_external
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.stack.session import ensure_database, prepare_database

ENV = "dev"
DBSNAP = Path(sys.executable).with_name("dbsnap")


@dataclasses.dataclass(frozen=True)
class Generated:
    root: Path
    settings: Settings
    store: DumpStore
    meta: DumpMeta

    @property
    def dump_path(self) -> Path:
        return self.store.dump_path(ENV, self.meta.name)


@pytest.fixture(scope="module")
def server(dumps_cluster: LocalCluster) -> ExternalServer:
    """The session's cluster reached by DSN: to the tool it is somebody's server, holding somebody's data."""
    return connect_external(dumps_cluster.dsn("postgres"), allow_remote=False, tools=dumps_cluster.tools)


@pytest.fixture(scope="module")
def generated(
    tmp_path_factory: pytest.TempPathFactory, project_writer: Callable[..., Path], server: ExternalServer
) -> Generated:
    root = project_writer(tmp_path_factory.mktemp("guard") / "project")
    settings = load_settings(project_root=root, pyproject=root / "pyproject.toml", environ={})
    store = DumpStore(settings.dumps_dir)
    generation = generate_dump(server, settings, store, ENV)
    meta, made = generation.meta, generation.made
    assert made
    return Generated(root, settings, store, meta)


def users_database(server: Server, name: str, *, rows: int) -> None:
    """A database as a developer has it: made by hand, unmarked, with a table of `rows` rows (0: no table)."""
    with server.connect() as conn:
        databases.drop(conn, name)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    if rows:
        with server.connect(name) as conn:
            conn.execute("CREATE TABLE customers (name text NOT NULL)")
            conn.execute("INSERT INTO customers SELECT 'customer ' || n FROM generate_series(1, %s) n", (rows,))


def customers(server: Server, name: str) -> int | None:
    with server.connect(name) as conn:
        if conn.execute("SELECT to_regclass('public.customers')").fetchone() == (None,):
            return None
        row = conn.execute("SELECT count(*) FROM customers").fetchone()
    return int(str(row[0])) if row else None


def is_marked(server: Server, name: str) -> bool:
    with server.connect() as conn:
        return databases.is_marked(conn, name)


def staging_of_this_process(server: Server) -> list[str]:
    with server.connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"dbsnap\\_%\\_{os.getpid()}\\_%",)
        ).fetchall()
    return [str(row[0]) for row in rows]


def test_an_unmarked_database_with_data_is_refused_and_left_as_it_was(
    generated: Generated, server: ExternalServer
) -> None:
    users_database(server, "devs_app", rows=3)
    with pytest.raises(UnmanagedDatabase) as refused:
        restore_dump(server, generated.meta, generated.dump_path, "devs_app")
    message = str(refused.value)
    assert message.startswith(f"Refusing to replace the database 'devs_app' on {server.describe()}: it holds 1 ")
    for advice in ("--dbsnap-database", "replace_database = true", "--dbsnap-replace-database", "--replace"):
        assert advice in message
    assert "\n" not in message
    assert customers(server, "devs_app") == 3
    assert not is_marked(server, "devs_app")
    assert staging_of_this_process(server) == []


def test_an_empty_unmarked_database_is_replaced_and_marked(generated: Generated, server: ExternalServer) -> None:
    users_database(server, "empty_app", rows=0)
    restore_dump(server, generated.meta, generated.dump_path, "empty_app")
    with server.connect("empty_app") as conn:
        assert count_rows(conn) == generated.meta.row_counts
    assert is_marked(server, "empty_app")


def test_a_marked_database_is_replaced_and_a_missing_one_created(generated: Generated, server: ExternalServer) -> None:
    users_database(server, "ours_app", rows=5)
    with server.connect() as conn:
        databases.mark(conn, "ours_app")
        databases.drop(conn, "new_app")
    restore_dump(server, generated.meta, generated.dump_path, "ours_app")
    restore_dump(server, generated.meta, generated.dump_path, "new_app")
    for name in ("ours_app", "new_app"):
        assert customers(server, name) is None
        assert is_marked(server, name)


def test_replace_opt_in_replaces_an_unmarked_database(generated: Generated, server: ExternalServer) -> None:
    users_database(server, "consented_app", rows=2)
    restore_dump(server, generated.meta, generated.dump_path, "consented_app", replace=True)
    assert customers(server, "consented_app") is None
    assert is_marked(server, "consented_app")


def test_every_database_the_tool_makes_carries_the_mark(generated: Generated, server: ExternalServer) -> None:
    """Templates (renamed from staging), spares and clones (a clone does not copy its template's comment), the
    app database after each kind of swap, and a database --skip-dump-restore creates."""
    meta, path = generated.meta, generated.dump_path
    with server.connect() as conn:
        for name in (template_name(meta), spare_name(meta)):
            if databases.exists(conn, name):
                databases.drop_template(conn, name)
        databases.drop(conn, "marks_app")
    assert restore_dump(server, meta, path, "marks_app").method == "pg_restore"
    assert is_marked(server, template_name(meta))
    assert restore_dump(server, meta, path, "marks_app").method == "template clone"
    assert is_marked(server, "marks_app")
    assert prepare_spare(server, meta)
    assert is_marked(server, spare_name(meta))
    assert restore_dump(server, meta, path, "marks_app").method == "spare swap"
    assert is_marked(server, "marks_app")
    with server.connect() as conn:
        databases.clone(conn, template_name(meta), "marks_clone")
        assert databases.is_marked(conn, "marks_clone")
        databases.drop(conn, "marks_clone")
        databases.drop(conn, "marks_kept")
    ensure_database(server, "marks_kept")
    assert is_marked(server, "marks_kept")


def test_the_session_refuses_unless_replace_database_is_set(generated: Generated, server: ExternalServer) -> None:
    users_database(server, "session_app", rows=4)
    refuse = dataclasses.replace(generated.settings, database="session_app")
    with pytest.raises(UnmanagedDatabase):
        prepare_database(server, refuse, spare_in_background=False)
    assert customers(server, "session_app") == 4
    allowed = load_settings(
        project_root=generated.root,
        pyproject=generated.root / "pyproject.toml",
        environ={"DBSNAP_REPLACE_DATABASE": "1", "DBSNAP_DATABASE": "session_app"},
    )
    outcome = prepare_database(server, allowed, spare_in_background=False)
    assert outcome.database == "session_app"
    assert customers(server, "session_app") is None


def test_the_tools_own_cluster_needs_no_mark(generated: Generated, dumps_cluster: LocalCluster) -> None:
    """The local provider's cluster is a throwaway the tool made: nothing in it is anybody else's."""
    users_database(dumps_cluster, "throwaway_app", rows=1)
    restore_dump(dumps_cluster, generated.meta, generated.dump_path, "throwaway_app")
    assert customers(dumps_cluster, "throwaway_app") is None


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBSNAP_") and k not in {"DATABASE_URL", "CI"}}
    return subprocess.run(
        [str(DBSNAP), *args], cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_cli_refuses_too_and_replace_allows_it(generated: Generated, server: ExternalServer) -> None:
    users_database(server, "cli_devs", rows=6)
    dsn = server.dsn("cli_devs")
    refused = run_cli(generated.root, "restore", "--dsn", dsn, "--no-spare")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("dbsnap: Refusing to replace the database 'cli_devs' on external PostgreSQL")
    assert "Traceback" not in refused.stderr
    assert customers(server, "cli_devs") == 6
    allowed = run_cli(generated.root, "restore", "--dsn", dsn, "--no-spare", "--replace")
    assert allowed.returncode == 0, allowed.stderr
    assert customers(server, "cli_devs") is None


def test_database_url_picks_no_server_and_the_header_says_it_is_ignored(tmp_path: Path) -> None:
    settings = load_settings(project_root=tmp_path, environ={"DATABASE_URL": "postgresql://postgres@127.0.0.1/app"})
    assert settings.dsn is None
    assert settings.database_url_ignored
    from pytest_dbsnap.stack.servers import choose_provider

    assert choose_provider(settings)[0] == "local"

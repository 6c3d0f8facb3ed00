"""Dump names never repeat, and nothing is found by a name alone: one file imported twice (within a second, as a
script or a suite does) is kept twice under distinct names, and a dump that has another dump's name but other
content is restored from its own bytes, never cloned from the other's template."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

from psycopg import sql

from pytest_dbsnap.dumps.importer import import_dump
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.restore import restore_dump, spare_name, template_name
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.local import LocalCluster


def dump_of(cluster: LocalCluster, database: str, note: str, destination: Path) -> Path:
    """A database holding one distinguishable row, dumped by hand (pg_dump -Fc), as a user brings a dump."""
    with cluster.connect() as conn:
        databases.drop(conn, database)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    with cluster.connect(database) as conn:
        conn.execute("CREATE TABLE marker (note text NOT NULL)")
        conn.execute("INSERT INTO marker VALUES (%s)", (note,))
    conninfo, env = cluster.tool_args(database)
    subprocess.run(
        [str(cluster.tools.path("pg_dump")), "-Fc", "-f", str(destination), "-d", conninfo],
        env=env,
        check=True,
        capture_output=True,
    )
    return destination


def forget(cluster: LocalCluster, *metas: DumpMeta) -> None:
    with cluster.connect() as conn:
        for meta in metas:
            for name in (template_name(meta), spare_name(meta)):
                if databases.exists(conn, name):
                    databases.drop_template(conn, name)


def test_one_file_imported_twice_is_kept_twice_under_distinct_names(
    dumps_cluster: LocalCluster, tmp_path: Path
) -> None:
    source = dump_of(dumps_cluster, "names_twice", "once", tmp_path / "twice.dump")
    store = DumpStore(tmp_path / "dumps")

    with dumps_cluster.connect() as conn:
        databases.drop(conn, "names_twice")

    first = import_dump(store, dumps_cluster.tools, source, "twice")
    second = import_dump(store, dumps_cluster.tools, source, "twice")

    assert first.name != second.name
    assert first.sha256 == second.sha256
    assert store.names("twice") == sorted([first.name, second.name])
    assert store.latest_name("twice") == second.name
    assert store.get("twice", first.name) == first


def test_a_dump_with_another_dumps_name_is_restored_from_its_own_bytes(
    dumps_cluster: LocalCluster, tmp_path: Path
) -> None:
    first = import_dump(
        DumpStore(tmp_path / "first"),
        dumps_cluster.tools,
        dump_of(dumps_cluster, "names_first", "first", tmp_path / "first.dump"),
        "same",
    )
    other_store = DumpStore(tmp_path / "other")
    other = import_dump(
        other_store,
        dumps_cluster.tools,
        dump_of(dumps_cluster, "names_other", "other", tmp_path / "other.dump"),
        "same",
    )
    # Another machine's dump of the same name (made in the same second, or renamed): only its content differs.
    namesake = dataclasses.replace(other, name=first.name)
    forget(dumps_cluster, first, namesake)
    try:
        restore_dump(dumps_cluster, first, DumpStore(tmp_path / "first").dump_path("same", first.name), "names_app")
        result = restore_dump(dumps_cluster, namesake, other_store.dump_path("same", other.name), "names_app")

        assert result.method == "pg_restore"
        with dumps_cluster.connect("names_app") as conn:
            assert conn.execute("SELECT note FROM marker").fetchall() == [("other",)]
    finally:
        forget(dumps_cluster, first, namesake)
        with dumps_cluster.connect() as conn:
            for name in ("names_app", "names_first", "names_other"):
                databases.drop(conn, name)

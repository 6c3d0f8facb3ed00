"""A server whose encoding is not UTF8 (SQL_ASCII, where psycopg returns text as bytes unless told otherwise):
row counts, schema versions and names come back as text on every provider's connections."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest

from pytest_dbsnap.dumps.restore import count_rows
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.local import LocalCluster


@pytest.fixture
def sql_ascii_db(dumps_cluster: LocalCluster) -> Iterator[str]:
    name = f"sql_ascii_{secrets.token_hex(4)}"
    with dumps_cluster.connect() as admin:
        admin.execute(
            psycopg.sql.SQL(
                "CREATE DATABASE {} ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(psycopg.sql.Identifier(name))
        )
    with dumps_cluster.connect(name) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num text)")
        conn.execute("INSERT INTO alembic_version VALUES ('0002')")
        conn.execute("CREATE SCHEMA app")
        conn.execute('CREATE TABLE app."Mixed Case" (id int)')
        conn.execute('INSERT INTO app."Mixed Case" VALUES (1), (2)')
    yield name
    with dumps_cluster.connect() as admin:
        databases.drop(admin, name)


def test_row_counts_on_a_sql_ascii_database_use_text_names(dumps_cluster: LocalCluster, sql_ascii_db: str) -> None:
    with dumps_cluster.connect(sql_ascii_db) as conn:
        row = conn.execute("SHOW server_encoding").fetchone()
        assert row == ("SQL_ASCII",)
        assert count_rows(conn) == {"app.Mixed Case": 2, "public.alembic_version": 1}
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert version == ("0002",)


def test_row_counts_on_a_raw_sql_ascii_connection_handle_bytes(dumps_cluster: LocalCluster, sql_ascii_db: str) -> None:
    """A connection made elsewhere, in the server's own encoding: psycopg returns names as bytes there."""
    with psycopg.connect(dumps_cluster.conninfo(sql_ascii_db), autocommit=True) as conn:
        row = conn.execute("SELECT relname FROM pg_class WHERE relname = 'alembic_version'").fetchone()
        assert row == (b"alembic_version",)
        assert count_rows(conn) == {"app.Mixed Case": 2, "public.alembic_version": 1}

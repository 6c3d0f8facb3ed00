"""Phase 2, database: the server answers, the dump was restored intact, migrations are at head."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pytest_dbsnap import DatabaseOutcome, Server, Settings, verify_restored_dump
from refapp.migrate import head_revision

pytestmark = [pytest.mark.smoke, pytest.mark.order(2)]


def test_server_answers(pg_server: Server) -> None:
    with pg_server.connect() as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row == (1,)


def test_dump_was_restored_with_its_checksum(dbsnap_database: DatabaseOutcome, dbsnap_settings: Settings) -> None:
    if dbsnap_settings.skip_dump_restore:
        pytest.skip("--skip-dump-restore: the database was kept as it was")
    meta = dbsnap_database.meta
    assert meta is not None
    assert dbsnap_database.method in {"spare swap", "template clone", "cluster snapshot", "pg_restore"}
    verify_restored_dump(dbsnap_database, dbsnap_settings)  # raises DumpCorrupt on any changed byte


def test_migrations_are_at_head(dbsnap_db: psycopg.Connection[Any], dbsnap_database: DatabaseOutcome) -> None:
    row = dbsnap_db.execute("SELECT version_num FROM alembic_version").fetchone()
    assert row is not None
    assert row[0] == head_revision()
    if dbsnap_database.meta is not None and dbsnap_database.method != "kept as it was":
        assert row[0] == dbsnap_database.meta.schema_version


def test_app_database_accepts_connections(dbsnap_db: psycopg.Connection[Any], dbsnap_settings: Settings) -> None:
    row = dbsnap_db.execute("SELECT current_database(), count(*) FROM reality_nodes").fetchone()
    assert row is not None
    assert row[0] == dbsnap_settings.database

"""Phase 5, data validation: the data is what the dump recorded, the tree is whole, and the API serves it."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pytest_dbsnap import DatabaseOutcome, RunningService

pytestmark = [pytest.mark.smoke, pytest.mark.order(5)]


def test_row_counts_equal_the_dump(dbsnap_db: psycopg.Connection[Any], dbsnap_database: DatabaseOutcome) -> None:
    meta = dbsnap_database.meta
    if meta is None or dbsnap_database.method == "kept as it was":
        pytest.skip("no dump was restored in this session, so there are no recorded counts to compare")
    for table in ("public.reality_nodes", "public.reality_edges"):
        row = dbsnap_db.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        assert row[0] == meta.row_counts[table], f"{table}: {row[0]} rows, the dump recorded {meta.row_counts[table]}"


def test_tree_is_consistent(dbsnap_db: psycopg.Connection[Any]) -> None:
    orphans = dbsnap_db.execute(
        "SELECT count(*) FROM reality_nodes c LEFT JOIN reality_nodes p ON p.id = c.parent_id "
        "WHERE c.parent_id IS NOT NULL AND p.id IS NULL"
    ).fetchone()
    dangling_edges = dbsnap_db.execute(
        "SELECT count(*) FROM reality_edges e LEFT JOIN reality_nodes s ON s.id = e.source_id "
        "LEFT JOIN reality_nodes t ON t.id = e.target_id WHERE s.id IS NULL OR t.id IS NULL"
    ).fetchone()
    roots = dbsnap_db.execute("SELECT count(*) FROM reality_nodes WHERE parent_id IS NULL").fetchone()
    assert orphans == (0,)
    assert dangling_edges == (0,)
    assert roots is not None
    assert roots[0] >= 1


def test_api_returns_what_the_database_holds(backend: RunningService, dbsnap_db: psycopg.Connection[Any]) -> None:
    rows = dbsnap_db.execute("SELECT id, kind, name FROM reality_nodes ORDER BY id LIMIT 20").fetchall()
    items = backend.client.get("/api/reality-nodes", params={"limit": 20}).json()["items"]
    assert [(item["id"], item["kind"], item["name"]) for item in items] == [tuple(row) for row in rows]
    kind = rows[0][1]
    filtered = backend.client.get("/api/reality-nodes", params={"kind": kind, "limit": 500}).json()
    expected = dbsnap_db.execute("SELECT count(*) FROM reality_nodes WHERE kind = %s", (kind,)).fetchone()
    assert expected is not None
    assert filtered["total"] == expected[0]
    assert all(item["kind"] == kind for item in filtered["items"])

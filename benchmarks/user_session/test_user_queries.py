"""What a user's own pytest run looks like for the session benchmark (benchmarks/snapshot_bench.py): a few tests
that read the restored app database through the plugin's fixtures, not the smoke suite's whole-dataset checks.
Run only when named on the command line (it is outside testpaths)."""

from __future__ import annotations

from typing import Any


def test_a_node_is_found_by_its_id(dbsnap_db: Any) -> None:
    row = dbsnap_db.execute("SELECT id, kind FROM reality_nodes ORDER BY id LIMIT 1").fetchone()
    assert row is not None
    assert dbsnap_db.execute("SELECT kind FROM reality_nodes WHERE id = %s", (row[0],)).fetchone() == (row[1],)


def test_a_universe_has_children(dbsnap_db: Any) -> None:
    parent = dbsnap_db.execute("SELECT parent_id FROM reality_nodes WHERE parent_id IS NOT NULL LIMIT 1").fetchone()
    assert parent is not None
    children = dbsnap_db.execute("SELECT count(*) FROM reality_nodes WHERE parent_id = %s", parent).fetchone()
    assert children is not None
    assert children[0] >= 1


def test_the_schema_is_migrated(dbsnap_db: Any) -> None:
    assert dbsnap_db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)

"""Schema access shared by the backend and the seed, so both go through one code path."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypedDict

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from refapp.settings import ConfigError, database_url

__all__ = [
    "ConfigError",
    "Node",
    "Stats",
    "connect",
    "count_nodes",
    "create_edge",
    "create_node",
    "database_url",
    "find_child",
    "get_node",
    "list_nodes",
    "missing_tables",
    "stats",
]

REQUIRED_TABLES = ("alembic_version", "reality_nodes", "reality_edges")

_NODE_COLUMNS = "id, parent_id, kind, name, attributes, created_at"


class Node(TypedDict):
    id: int
    parent_id: int | None
    kind: str
    name: str
    attributes: dict[str, Any]
    created_at: str


class Stats(TypedDict):
    nodes: int
    edges: int
    kinds: dict[str, int]


def connect(url: str, *, autocommit: bool = False, connect_timeout: int = 5) -> psycopg.Connection[Any]:
    """Open a connection with a timeout so a dead server fails fast instead of hanging."""
    return psycopg.connect(url, autocommit=autocommit, connect_timeout=connect_timeout)


def missing_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Tell an unmigrated database apart from an empty one before writing to it."""
    missing = []
    with conn.cursor() as cur:
        for table in REQUIRED_TABLES:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",))
            row = cur.fetchone()
            if row is None or not row[0]:
                missing.append(table)
    return missing


def create_node(
    conn: psycopg.Connection[Any],
    parent_id: int | None,
    kind: str,
    name: str,
    attributes: Mapping[str, Any],
    *,
    created_at: datetime | None = None,
) -> int:
    """Insert one node; ``created_at`` is only passed by the seed, to keep its data reproducible."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO reality_nodes (parent_id, kind, name, attributes, created_at)"
            " VALUES (%s, %s, %s, %s, coalesce(%s, now())) RETURNING id",
            (parent_id, kind, name, Jsonb(dict(attributes)), created_at),
        )
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def create_edge(conn: psycopg.Connection[Any], source_id: int, target_id: int, relation: str) -> int:
    """Link two nodes; the database rejects self-links and unknown ids."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO reality_edges (source_id, target_id, relation) VALUES (%s, %s, %s) RETURNING id",
            (source_id, target_id, relation),
        )
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def _node(row: DictRow) -> Node:
    created_at = row["created_at"]
    return Node(
        id=int(row["id"]),
        parent_id=None if row["parent_id"] is None else int(row["parent_id"]),
        kind=str(row["kind"]),
        name=str(row["name"]),
        attributes=dict(row["attributes"]),
        created_at=created_at.isoformat() if isinstance(created_at, datetime) else str(created_at),
    )


def find_child(conn: psycopg.Connection[Any], parent_id: int | None, name: str) -> int | None:
    """Look a sibling up by name, so callers can keep names unique under one parent."""
    with conn.cursor() as cur:
        if parent_id is None:
            cur.execute("SELECT id FROM reality_nodes WHERE parent_id IS NULL AND name = %s LIMIT 1", (name,))
        else:
            cur.execute("SELECT id FROM reality_nodes WHERE parent_id = %s AND name = %s LIMIT 1", (parent_id, name))
        row = cur.fetchone()
    return None if row is None else int(row[0])


def list_nodes(conn: psycopg.Connection[Any], kind: str | None, limit: int, offset: int) -> list[Node]:
    """One page ordered by id, so pages are stable while nothing is inserted."""
    with conn.cursor(row_factory=dict_row) as cur:
        if kind is None:
            cur.execute(
                f"SELECT {_NODE_COLUMNS} FROM reality_nodes ORDER BY id LIMIT %s OFFSET %s",
                (limit, offset),
            )
        else:
            cur.execute(
                f"SELECT {_NODE_COLUMNS} FROM reality_nodes WHERE kind = %s ORDER BY id LIMIT %s OFFSET %s",
                (kind, limit, offset),
            )
        return [_node(row) for row in cur.fetchall()]


def count_nodes(conn: psycopg.Connection[Any], kind: str | None) -> int:
    """The total that goes with ``list_nodes`` for the same filter."""
    with conn.cursor() as cur:
        if kind is None:
            cur.execute("SELECT count(*) FROM reality_nodes")
        else:
            cur.execute("SELECT count(*) FROM reality_nodes WHERE kind = %s", (kind,))
        row = cur.fetchone()
    return int(row[0]) if row else 0


def get_node(conn: psycopg.Connection[Any], node_id: int) -> Node | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_NODE_COLUMNS} FROM reality_nodes WHERE id = %s", (node_id,))
        row = cur.fetchone()
    return None if row is None else _node(row)


def stats(conn: psycopg.Connection[Any]) -> Stats:
    with conn.cursor() as cur:
        cur.execute("SELECT kind, count(*) FROM reality_nodes GROUP BY kind ORDER BY kind")
        kinds = {str(kind): int(n) for kind, n in cur.fetchall()}
        cur.execute("SELECT count(*) FROM reality_edges")
        row = cur.fetchone()
    return Stats(nodes=sum(kinds.values()), edges=int(row[0]) if row else 0, kinds=kinds)

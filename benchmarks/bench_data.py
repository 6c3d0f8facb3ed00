"""The benchmark datasets: the reference app's own seed at the smallest scale, fast SQL copies of it above,
each dumped through pytest-dbsnap's own pg_dump path so the dump carries real metadata."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.core.proc import run_app_command
from pytest_dbsnap.dumps.generate import app_env, migrate, store_dump
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import Server

ROOT = Path(__file__).resolve().parent.parent  # the repository: its pyproject.toml configures the benchmarks

# Table data (rows, TOAST and indexes) per seeded node, its share of edges included; measured on refapp.seed.
# Only used to pick how many nodes to seed; every size shown in the results is measured.
BYTES_PER_NODE_GUESS = 640
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*$", re.IGNORECASE)
_TABLES = ("reality_nodes", "reality_edges")
Progress = Callable[[str], None]
COPIES_PER_STATEMENT = 8  # copies inserted per statement: progress shows, and no statement runs for minutes


@dataclass(frozen=True)
class Scale:
    """A dataset size to benchmark, as asked for on the command line ("10MB", "1GB"; decimal units)."""

    label: str
    target_bytes: int

    @property
    def env(self) -> str:
        """The dump environment of this scale in the benchmark's own dump store."""
        return f"bench-{self.label}"


def parse_scale(text: str) -> Scale:
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size: write e.g. 10MB, 200MB or 1GB")
    unit = match[2].upper()
    unit = unit if unit.endswith("B") or not unit else unit + "B"
    size = int(float(match[1]) * _UNITS[unit])
    if size < 100_000:
        raise ValueError(f"{text!r} is too small: the reference app's schema alone takes more (use 1MB or more)")
    return Scale(f"{match[1]}{unit}", size)


def pretty_bytes(size: float) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size:.0f} B"


@dataclass
class Dataset:
    """One built scale: what it holds, how it was made, and its dump in the benchmark's store."""

    scale: Scale
    how: str  # "refapp.seed --scale N" or "SQL copies of the seeded data"
    nodes: int
    edges: int
    table_bytes: int
    database_bytes: int
    build_seconds: float
    meta: DumpMeta
    dump_path: Path
    dump_seconds: float

    @property
    def rows(self) -> int:
        return self.nodes + self.edges

    def describe(self) -> str:
        return (
            f"{self.scale.label}: {self.nodes:,} nodes + {self.edges:,} edges, {pretty_bytes(self.table_bytes)} of "
            f"table data (rows + indexes), database {pretty_bytes(self.database_bytes)} on disk, dump "
            f"{pretty_bytes(self.meta.size_bytes)}; built by {self.how} in {self.build_seconds:.1f} s, "
            f"pg_dump -Fc in {self.dump_seconds:.1f} s"
        )


def measure(server: Server, database: str) -> tuple[int, int, int, int]:
    """(nodes, edges, table data bytes, database bytes on disk) of a built database."""
    with server.connect(database) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM reality_nodes), (SELECT count(*) FROM reality_edges), "
            "(SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public'), "
            "pg_database_size(current_database())"
        ).fetchone()
    assert row is not None
    nodes, edges, table_bytes, database_bytes = (int(str(value)) for value in row)
    return nodes, edges, table_bytes, database_bytes


def create_migrated(server: Server, settings: Settings, database: str) -> None:
    """An empty database at the app's schema head, through the app's own migrate command."""
    with server.connect() as conn:
        databases.drop(conn, database)
        databases.create_empty(conn, database)
    migrate(server, settings, database)


def seed_nodes(scale: Scale) -> int:
    return max(200, round(scale.target_bytes / BYTES_PER_NODE_GUESS))


def run_seed(server: Server, settings: Settings, database: str, nodes: int) -> float:
    """Seconds the reference app's own seed takes to fill a freshly migrated database (the timed part)."""
    began = time.monotonic()
    run_app_command(
        ("python", "-m", "refapp.seed", "--scale", str(nodes)),
        what="the reference app's seed",
        env=app_env(server, database),
        cwd=settings.project_root,
        log_path=settings.logs_dir / "seed.log",
    )
    return time.monotonic() - began


def synthesize(server: Server, source: str, database: str, copies: int, progress: Progress) -> None:
    """Fill `database` with `copies` copies of the seeded data in `source`, in SQL (minutes instead of hours).

    Every copy is the seed's tree with its ids shifted, so parents still form trees, edges still join nodes of
    one copy, and rows keep the seed's columns, kinds, names and jsonb attributes; each copy gets its own
    `stability` values so the GIN index is not a pile of identical entries. Foreign keys are not re-checked
    (the rows are valid by construction) and the secondary indexes are rebuilt once at the end, as a restore
    does, instead of row by row.
    """
    with server.connect() as conn:
        databases.drop(conn, database)
        databases.clone(conn, source, database, copy_on_write=server.copy_on_write)
    with server.connect(database) as conn:
        conn.execute("SET session_replication_role = replica")  # skip FK triggers: valid by construction
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.execute("SELECT setseed(0.2024)")  # the same dataset at every run
        row = conn.execute("SELECT (SELECT max(id) FROM reality_nodes), (SELECT max(id) FROM reality_edges)").fetchone()
        assert row is not None
        assert row[0] is not None
        node_step, edge_step = int(str(row[0])), int(str(row[1] or 0))
        indexes = conn.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = 'public' "
            "AND i.tablename = ANY(%s) AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
            (list(_TABLES),),
        ).fetchall()
        for name, _definition in indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(str(name))))
        for first in range(1, copies, COPIES_PER_STATEMENT):
            last = min(copies - 1, first + COPIES_PER_STATEMENT - 1)
            conn.execute(
                "INSERT INTO reality_nodes (id, parent_id, kind, name, attributes, created_at) "
                "OVERRIDING SYSTEM VALUE "
                "SELECT n.id + c * %(step)s, n.parent_id + c * %(step)s, n.kind, n.name, "
                "       n.attributes || jsonb_build_object('stability', round(random()::numeric, 4)), "
                "       n.created_at + make_interval(secs => c * %(step)s * 37) "
                "FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS c, reality_nodes AS n "
                "WHERE n.id <= %(step)s",
                {"step": node_step, "first": first, "last": last},
            )
            if edge_step:
                conn.execute(
                    "INSERT INTO reality_edges (id, source_id, target_id, relation) OVERRIDING SYSTEM VALUE "
                    "SELECT e.id + c * %(edge_step)s, e.source_id + c * %(step)s, e.target_id + c * %(step)s, "
                    "       e.relation "
                    "FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS c, reality_edges AS e "
                    "WHERE e.id <= %(edge_step)s",
                    {"step": node_step, "edge_step": edge_step, "first": first, "last": last},
                )
            progress(f"  copies {last + 1}/{copies}")
        progress("  rebuilding the secondary indexes")
        for _name, definition in indexes:
            conn.execute(str(definition).encode())
        for table in _TABLES:
            conn.execute(
                sql.SQL("SELECT setval(pg_get_serial_sequence({}, 'id'), (SELECT max(id) FROM {}))").format(
                    sql.Literal(table), sql.Identifier(table)
                )
            )
        conn.execute("RESET session_replication_role")
        conn.execute("VACUUM (FREEZE, ANALYZE)")  # a settled database, as a seeded one would be after a while


def dump_database(
    server: Server, settings: Settings, store: DumpStore, env: str, database: str, origin: str
) -> tuple[DumpMeta, float]:
    """The project's own dump step (pg_dump -Fc hashed while streaming, row counts, metadata, install)."""
    began = time.monotonic()
    meta = store_dump(
        server, settings, store, env, database, fingerprint=None, inputs={"benchmark": origin}, began=began
    )
    return meta, time.monotonic() - began


def seed_source(server: Server, settings: Settings, database: str, progress: Progress) -> float:
    """The reference app's seed at 10 MB, frozen and analysed, in `database`: the source of every larger scale.
    Returns its table data in bytes (one copy's worth for build_dump)."""
    nodes = seed_nodes(parse_scale("10MB"))
    progress(f"seeding {nodes} nodes through refapp.seed")
    create_migrated(server, settings, database)
    run_seed(server, settings, database, nodes)
    with server.connect(database) as conn:
        conn.execute("VACUUM (FREEZE, ANALYZE)")
    return float(measure(server, database)[2])


def build_dump(
    server: Server,
    settings: Settings,
    store: DumpStore,
    scale: Scale,
    source: str,
    build: str,
    per_copy: float,
    progress: Progress,
) -> tuple[DumpMeta, dict[str, object]]:
    """The scale built from the seeded `source` in SQL (in `build`, dropped afterwards) and dumped into the store.
    Returns the dump's metadata and the facts a report shows: scale, table data, database and dump bytes."""
    # The seed builds its indexes row by row; copies get rebuilt ones, about half the size per row.
    copies = max(2, round(scale.target_bytes / per_copy * 1.9))
    progress(f"{scale.label}: building {copies} copies of the seed in SQL")
    synthesize(server, source, build, copies, progress)
    _nodes, _edges, table_bytes, database_bytes = measure(server, build)
    meta, _seconds = dump_database(server, settings, store, scale.env, build, f"{copies} copies")
    with server.connect() as conn:
        databases.drop(conn, build)
    facts: dict[str, object] = {"scale": scale.label, "table_bytes": table_bytes, "database_bytes": database_bytes}
    return meta, facts | {"dump_bytes": meta.size_bytes}


def settle(conn: psycopg.Connection[Any]) -> None:
    """Untimed, before each timed step: let the replaced databases that a restore drops in the background go, and
    flush what earlier steps left dirty, so that no step pays for another."""
    deadline = time.monotonic() + 300
    while conn.execute("SELECT 1 FROM pg_database WHERE datname LIKE 'dbsnap\\_old\\_%'").fetchone():
        if time.monotonic() > deadline:
            raise RuntimeError("a replaced database was not dropped within 300 s")
        time.sleep(0.02)
    conn.execute("CHECKPOINT")
    os.sync()


def scratch_settings(scratch: Path) -> Settings:
    """The project's settings from pyproject.toml, with every folder it writes to inside `scratch`."""
    return load_settings(
        project_root=ROOT,
        pyproject=ROOT / "pyproject.toml",
        environ={
            "DBSNAP_LOGS_DIR": str(scratch / "logs"),
            "DBSNAP_DUMPS_DIR": str(scratch / "dumps"),
            "DBSNAP_CACHE_DIR": str(scratch / "cache"),
        },
    )


def scale_heading(label: str, facts: dict[str, object]) -> str:
    """The markdown heading of one scale's table: its sizes on disk, of the table data and of the dump."""
    return (
        f"## {label}: database {pretty_bytes(float(str(facts['database_bytes'])))} on disk, "
        f"table data {pretty_bytes(float(str(facts['table_bytes'])))}, "
        f"dump {pretty_bytes(float(str(facts['dump_bytes'])))}"
    )

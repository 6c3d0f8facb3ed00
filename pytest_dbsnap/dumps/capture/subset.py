"""Which rows a subset capture keeps, computed inside the capture's read-only transaction so every foreign key
holds: the roots' rows, the rows that reference them directly, everything those reference (transitively), and
the rows of tables that follow a subsetted table (their references must all be kept). A `whole` table (a lookup
table) is a root whose every row is kept, without the rows that reference it.

The source is read only, so no TEMP table: the closure is computed on this machine. Memory is bounded by the
kept rows of the subsetted tables, never by the size of the database or the width of rows: each kept row costs
one integer (its partition and ctid, which a REPEATABLE READ snapshot keeps stable) plus one tuple of key text
per key that a foreign key targets (about 100 bytes a row). Tables copied whole cost nothing, and a capture
without roots computes nothing. Rows are read with a server-side cursor in batches, and key lookups go to the
server as `(cols) IN (SELECT * FROM unnest(...))` in batches of BATCH values.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_dbsnap.dumps.capture.catalog import Catalog, ForeignKey, Table, escape_percent, quote_ident
from pytest_dbsnap.dumps.capture.policy import SubsetRoot

BATCH = 5000
FETCH = 10_000


@dataclass(frozen=True)
class Edge:
    """A foreign key between two top-level tables (partition trees count as their top table)."""

    child: str
    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]


@dataclass
class Kept:
    """The result: None for a table copied whole, else the row ids (oid << 48 | block << 16 | offset) to copy."""

    rows: dict[str, set[int] | None] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)  # table -> root | subset | follower | whole

    def ids_of(self, table: Table) -> list[str] | None:
        """The ctids (as text) of the kept rows of one leaf table, sorted, or None to copy it whole."""
        rows = self.rows.get(table.top)
        if rows is None:
            return None
        mine = sorted(r & ((1 << 48) - 1) for r in rows if r >> 48 == table.oid)
        return [f"({r >> 16},{r & 0xFFFF})" for r in mine]


def _row_id(oid: Any, ctid: str) -> int:
    block, offset = ctid.strip("()").split(",")
    return int(oid) << 48 | int(block) << 16 | int(offset)


def edges_of(catalog: Catalog, excluded: frozenset[str], cut: set[tuple[str, str]]) -> list[Edge]:
    """The foreign keys the subset must keep whole: not from or to excluded tables, not through a column masked
    with null (that reference is cut)."""
    edges = []
    for fk in catalog.foreign_keys:
        child, parent = catalog.tables[fk.table].top, catalog.tables[fk.parent].top
        if child in excluded or parent in excluded or any((fk.table, c) in cut for c in fk.columns):
            continue
        edges.append(Edge(child, fk.columns, parent, fk.parent_columns))
    return edges


def roles_of(tables: Iterable[str], roots: Sequence[SubsetRoot], edges: list[Edge]) -> dict[str, str]:
    """root and subset tables (the roots, their direct referencers, and everything upward of them), followers
    (tables that reference those), whole (the rest)."""
    names = set(tables)
    roles = {name: "whole" for name in names}
    root_tables = {r.table for r in roots}
    matched = {r.table for r in roots if not r.whole}  # a `whole` table's referencers are not pulled in
    reached = set(root_tables) | {e.child for e in edges if e.parent in matched}
    work = deque(reached)
    while work:
        table = work.popleft()
        for e in edges:
            if e.child == table and e.parent not in reached:
                reached.add(e.parent)
                work.append(e.parent)
    for name in reached & names:
        roles[name] = "root" if name in root_tables else "subset"
    changed = True
    while changed:
        changed = False
        for e in edges:
            if roles.get(e.child) == "whole" and roles.get(e.parent) in ("root", "subset", "follower"):
                roles[e.child] = "follower"
                changed = True
    return roles


class Closure:
    """The kept rows of one source, in one transaction (`conn`, read-only, REPEATABLE READ)."""

    def __init__(
        self,
        conn: Any,
        catalog: Catalog,
        roots: Sequence[SubsetRoot],
        edges: list[Edge],
        progress: Callable[[str], None],
    ) -> None:
        self.conn, self.catalog, self.roots, self.edges, self.progress = conn, catalog, roots, edges, progress
        tops = [t.name for t in catalog.tables.values() if not t.is_partition]
        self.roles = roles_of(tops, roots, edges)
        self.kept: dict[str, set[int]] = {t: set() for t, role in self.roles.items() if role != "whole"}
        # Key values of kept rows (and values already asked for), per (table, referenced columns).
        self.wanted: dict[tuple[str, tuple[str, ...]], set[tuple[str | None, ...]]] = {}
        for e in edges:
            if e.parent in self.kept:
                self.wanted.setdefault((e.parent, e.parent_columns), set())
        self.pending: dict[tuple[str, tuple[str, ...]], list[tuple[str | None, ...]]] = {k: [] for k in self.wanted}

    def _refkeys(self, table: str) -> list[tuple[str, ...]]:
        return [cols for (t, cols) in self.wanted if t == table]

    def _select(self, table: str, out: list[Edge], where: str) -> str:
        t = self.catalog.tables[table]
        source = t.quoted if t.partitioned else f"ONLY {t.quoted}"
        cols = [c for key in self._refkeys(table) for c in key] + [c for e in out for c in e.columns]
        values = "".join(f", {quote_ident(c)}::text" for c in cols)
        # `where` arrives escaped: a root's condition by compute(), a key lookup by _in().
        return escape_percent(f"SELECT tableoid::int8, ctid::text{values} FROM {source}") + f" WHERE {where}"

    def _rows(self, query: str, params: Sequence[Any] = ()) -> Iterable[tuple[Any, ...]]:
        with self.conn.cursor(name=f"dbsnap_subset_{id(query) & 0xFFFF:x}") as cursor:
            cursor.itersize = FETCH
            cursor.execute(query, params)
            yield from cursor

    def visit(self, table: str, where: str, params: Sequence[Any] = (), *, follow: bool = False) -> int:
        """Keep the rows of `table` matching `where` and ask for what they reference. `follow`: keep a row only
        when everything it references in subsetted tables is kept already (a follower's rows)."""
        refkeys = self._refkeys(table)
        out = [e for e in self.edges if e.child == table and e.parent in self.kept]
        kept, added = self.kept[table], 0
        for row in self._rows(self._select(table, out, where), params):
            row_id = _row_id(row[0], row[1])
            if row_id in kept:
                continue
            values = list(row[2:])
            keys = []
            for cols in refkeys:
                keys.append((cols, tuple(values[: len(cols)])))
                values = values[len(cols) :]
            refs = []
            for e in out:
                refs.append((e, tuple(values[: len(e.columns)])))
                values = values[len(e.columns) :]
            if follow and any(
                None not in ref and ref not in self.wanted[(e.parent, e.parent_columns)] for e, ref in refs
            ):
                continue
            kept.add(row_id)
            added += 1
            for cols, key in keys:
                self.wanted[(table, cols)].add(key)
            for e, ref in refs:
                if None in ref or follow:
                    continue
                asked = self.wanted[(e.parent, e.parent_columns)]
                if ref not in asked:
                    asked.add(ref)
                    self.pending[(e.parent, e.parent_columns)].append(ref)
        return added

    def _in(self, table: str, cols: tuple[str, ...], values: list[tuple[str | None, ...]]) -> tuple[str, list[Any]]:
        t = self.catalog.tables[table]
        types = [next(c.type for c in t.columns if c.name == name) for name in cols]
        arrays = ", ".join(f"%s::text[]::{kind}[]" for kind in types)
        names = escape_percent(", ".join(quote_ident(c) for c in cols))
        return f"({names}) IN (SELECT * FROM unnest({arrays}))", [[v[i] for v in values] for i in range(len(cols))]

    def close(self) -> None:
        """Ask for every pending key until nothing new is referenced (cycles end: a key is asked for once)."""
        while any(self.pending.values()):
            for (table, cols), values in self.pending.items():
                while values:
                    batch = values[-BATCH:]
                    del values[-BATCH:]
                    where, params = self._in(table, cols, batch)
                    self.visit(table, where, params)

    def compute(self) -> Kept:
        for root in self.roots:
            self.progress(
                f"subset: every row of {root.table} (whole)"
                if root.whole
                else f"subset: rows of {root.table} where {root.where}"
            )
            self.visit(root.table, f"({escape_percent(root.where)})")
        for root in (r for r in self.roots if not r.whole):
            # Rows that reference a kept root row directly (a user's orders): the keys of the rows the roots' where
            # matched, not those of rows they reference and that are only asked for so far (pending).
            for e in self.edges:
                if e.parent == root.table and self.roles.get(e.child) != "whole":
                    asked = set(self.pending[(e.parent, e.parent_columns)])
                    keys = [k for k in self.wanted[(e.parent, e.parent_columns)] if k not in asked]
                    for start in range(0, len(keys), BATCH):
                        where, params = self._in(e.child, e.columns, keys[start : start + BATCH])
                        self.visit(e.child, where, params)
        self.progress("subset: closing over the foreign keys")
        self.close()
        followers = [t for t, role in self.roles.items() if role == "follower"]
        changed = True
        while changed:  # a follower that references itself or another follower needs a pass per level
            changed = False
            for table in followers:
                self.progress(f"subset: rows of {table} whose references are kept")
                changed |= self.visit(table, "true", follow=True) > 0
        result = Kept(roles=dict(self.roles))
        for table, role in self.roles.items():
            result.rows[table] = None if role == "whole" else self.kept[table]
        return result


def compute_kept(
    conn: Any,
    catalog: Catalog,
    roots: Sequence[SubsetRoot],
    excluded: frozenset[str],
    cut: set[tuple[str, str]],
    progress: Callable[[str], None],
) -> Kept:
    """The rows to copy; every table whole when there are no roots."""
    if not roots:
        return Kept(rows={t.name: None for t in catalog.tables.values() if not t.is_partition})
    return Closure(conn, catalog, roots, edges_of(catalog, excluded, cut), progress).compute()


__all__ = ["BATCH", "Closure", "Edge", "ForeignKey", "Kept", "compute_kept", "edges_of", "roles_of"]

"""The source's tables, columns and keys, read from pg_catalog: what the policy is checked against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Schemas whose tables are the server's, never the application's.
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")
# The same, as a condition on pg_namespace `n` in SQL sent with parameters (pg_toast and pg_temp schemas too).
NOT_SYSTEM = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(), e.g. "character varying(40)"
    category: str  # pg_type.typcategory: S string, U user (json is U), N numeric...
    base_type: str  # the type's own name: text, varchar, jsonb, int4...
    not_null: bool
    max_length: int | None  # varchar(n) / char(n)
    generated: bool  # computed by the server from other columns: recomputed from masked values on restore
    element_category: str | None = None  # an array's elements' typcategory (text[]: S); None for other types


@dataclass(frozen=True)
class ForeignKey:
    name: str
    table: str  # schema.table of the referencing side
    columns: tuple[str, ...]
    parent: str  # schema.table referenced
    parent_columns: tuple[str, ...]


@dataclass
class Table:
    """One table; `parents` is its chain of partitioned ancestors, nearest first."""

    oid: int
    name: str  # schema.table, unquoted
    schema: str
    relname: str
    partitioned: bool
    parents: tuple[str, ...]
    columns: list[Column] = field(default_factory=list)
    primary_key: tuple[str, ...] = ()
    unique_keys: list[tuple[str, ...]] = field(default_factory=list)
    readable: bool = True  # the capturing role has SELECT on it

    @property
    def is_partition(self) -> bool:
        return bool(self.parents)

    @property
    def quoted(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.relname)}"

    @property
    def top(self) -> str:
        """The partitioned table at the top of its tree (itself when it is not a partition)."""
        return self.parents[-1] if self.parents else self.name

    def copied_columns(self) -> list[str]:
        """What COPY moves: every column but the generated ones, which the server recomputes."""
        return [c.name for c in self.columns if not c.generated]


@dataclass
class Catalog:
    tables: dict[str, Table]
    foreign_keys: list[ForeignKey]
    materialized_views: list[str]

    def key_columns(self, table: str) -> set[str]:
        """Primary and foreign key columns of a table (kept unless masked), its partition ancestors' included. A
        unique column that another table's foreign key references is not one: an email referenced elsewhere is
        still personal data, so it needs a rule like any other column."""
        t = self.tables[table]
        keys = set(t.primary_key)
        for parent in t.parents:  # a partition's copy of its top table's key is not read (conparentid)
            keys.update(self.tables[parent].primary_key)
        for fk in self.foreign_keys:
            if fk.table == table or fk.table in t.parents:
                keys.update(fk.columns)
        return keys

    def unique_columns(self, table: str) -> set[str]:
        """Columns that alone form a primary or unique key, its partition ancestors' included: a masker there
        must give distinct outputs."""
        found: set[str] = set()
        for t in [self.tables[table], *(self.tables[p] for p in self.tables[table].parents)]:
            found.update(k[0] for k in [t.primary_key, *t.unique_keys] if len(k) == 1)
        return found


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def escape_percent(text: str) -> str:
    """SQL that will be sent with parameters: a literal % (in a name, in a where clause) must be %%."""
    return text.replace("%", "%%")


def read_catalog(conn: Any) -> Catalog:
    """Every ordinary and partitioned table outside the system schemas, with columns, keys and foreign keys."""
    tables: dict[str, Table] = {}
    by_oid: dict[int, str] = {}
    rows = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind = 'p', has_table_privilege(c.oid, 'SELECT'), "
        "  (SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = c.oid AND c.relispartition LIMIT 1) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind IN ('r', 'p') AND {NOT_SYSTEM} ORDER BY 2, 3"
    ).fetchall()
    parent_oid: dict[int, int | None] = {}
    for oid, schema, relname, partitioned, readable, parent in rows:
        name = f"{schema}.{relname}"
        tables[name] = Table(int(oid), name, schema, relname, bool(partitioned), (), readable=bool(readable))
        by_oid[int(oid)] = name
        parent_oid[int(oid)] = int(parent) if parent is not None else None
    for oid, name in by_oid.items():
        chain: list[str] = []
        up = parent_oid.get(oid)
        while up is not None and up in by_oid:
            chain.append(by_oid[up])
            up = parent_oid.get(up)
        tables[name].parents = tuple(chain)
    for oid, attname, type_text, category, typname, not_null, typmod, generated, element in conn.execute(
        "SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), t.typcategory, t.typname, "
        "  a.attnotnull, a.atttypmod, a.attgenerated <> '', e.typcategory "
        "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A' "
        "WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attrelid = ANY(%s) ORDER BY a.attrelid, a.attnum",
        [list(by_oid)],
    ).fetchall():
        limit = int(typmod) - 4 if typname in ("varchar", "bpchar") and int(typmod) > 4 else None
        tables[by_oid[int(oid)]].columns.append(
            Column(
                str(attname),
                str(type_text),
                str(category),
                str(typname),
                bool(not_null),
                limit,
                bool(generated),
                None if element is None else str(element),
            )
        )
    foreign_keys: list[ForeignKey] = []
    for conname, contype, conrelid, confrelid, cols, refcols in conn.execute(
        "SELECT co.conname, co.contype, co.conrelid, co.confrelid, "
        "  ARRAY(SELECT a.attname::text FROM unnest(co.conkey) WITH ORDINALITY k(n, i) "
        "        JOIN pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = k.n ORDER BY k.i), "
        "  ARRAY(SELECT a.attname::text FROM unnest(co.confkey) WITH ORDINALITY k(n, i) "
        "        JOIN pg_attribute a ON a.attrelid = co.confrelid AND a.attnum = k.n ORDER BY k.i) "
        "FROM pg_constraint co WHERE co.contype IN ('p', 'u', 'f') AND co.conrelid = ANY(%s) "
        "AND co.conparentid = 0 ORDER BY co.conname",
        [list(by_oid)],
    ).fetchall():
        table = tables[by_oid[int(conrelid)]]
        if contype == "p":
            table.primary_key = tuple(cols)
        elif contype == "u":
            table.unique_keys.append(tuple(cols))
        elif int(confrelid) in by_oid:
            foreign_keys.append(
                ForeignKey(str(conname), table.name, tuple(cols), by_oid[int(confrelid)], tuple(refcols))
            )
    views = [
        f"{s}.{r}"
        for s, r in conn.execute(
            "SELECT schemaname, matviewname FROM pg_matviews "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
    ]
    return Catalog(tables, foreign_keys, views)

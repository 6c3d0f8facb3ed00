"""[tool.dbsnap.capture], read from the raw TOML table, and the fail-closed check of it against the source's
catalog: every column masked, kept, or in an excluded table, and no rule that a constraint would refuse."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pytest_dbsnap.dumps.capture.catalog import Catalog, Column, Table
from pytest_dbsnap.dumps.capture.maskers import JSON_TYPES, Masker, build_masker, check_spec, needs_key
from pytest_dbsnap.errors import ConfigError

DEFAULT_KEY_ENV = "DBSNAP_MASK_KEY"
WHERE = "[tool.dbsnap.capture]"
_KEYS = {"keep", "exclude", "key_env", "mask", "subset", "whole"}


@dataclass(frozen=True)
class SubsetRoot:
    table: str  # schema.table
    where: str  # SQL, run on the source inside the capture's read-only transaction
    whole: bool = False  # a `whole` table: every row kept, rows that reference them are not pulled in


@dataclass(frozen=True)
class CapturePolicy:
    keep: tuple[str, ...] = ()  # schema.table or schema.table.column
    exclude: tuple[str, ...] = ()  # schema.table
    key_env: str = DEFAULT_KEY_ENV
    mask: tuple[tuple[str, Any], ...] = ()  # (schema.table.column, rule as written)
    subset: tuple[SubsetRoot, ...] = ()
    whole: tuple[str, ...] = ()  # schema.table: lookup tables a subset copies whole (with what they reference)
    sha256: str = ""  # of the table as written, canonical JSON: recorded in the dump's metadata

    @property
    def needs_key(self) -> bool:
        return any(needs_key(spec) for _, spec in self.mask)

    def rules(self) -> dict[str, Any]:
        return dict(self.mask)

    @property
    def subset_roots(self) -> tuple[SubsetRoot, ...]:
        """The roots the closure starts from: the subset's, then each `whole` table as a root of every row whose
        referencers are not pulled in. No subset roots: none (the whole database is copied anyway)."""
        if not self.subset:
            return ()
        return (*self.subset, *(SubsetRoot(name, "true", whole=True) for name in self.whole))


def _names(raw: Any, key: str, parts: tuple[int, ...]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ConfigError(f'{key} in {WHERE} must be a list of names such as "public.users".')
    for item in raw:
        if item.count(".") + 1 not in parts:
            shapes = " or ".join({2: "schema.table", 3: "schema.table.column"}[p] for p in parts)
            raise ConfigError(f"{key} in {WHERE} names {item!r}; write {shapes} (the schema is required).")
    return tuple(raw)


def parse_policy(raw: Any) -> CapturePolicy:
    """The policy from the raw [tool.dbsnap.capture] table (None when the project has none: an empty policy,
    which refuses any database that has a column)."""
    if raw is None:
        return CapturePolicy(sha256=hashlib.sha256(b"{}").hexdigest())
    if not isinstance(raw, dict):
        raise ConfigError(f"{WHERE} must be a table.")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{WHERE} has unknown key(s) {', '.join(unknown)}; accepted keys: {', '.join(sorted(_KEYS))}."
        )
    key_env = raw.get("key_env", DEFAULT_KEY_ENV)
    if not isinstance(key_env, str) or not key_env.isidentifier():
        raise ConfigError(f'key_env in {WHERE} must name an environment variable, such as "{DEFAULT_KEY_ENV}".')
    mask_table = raw.get("mask", {})
    if not isinstance(mask_table, dict):
        raise ConfigError('[tool.dbsnap.capture.mask] must be a table of "schema.table.column" = masker.')
    problems = []
    for column, spec in mask_table.items():
        if column.count(".") != 2:
            problems.append(f"{column!r} is not schema.table.column")
        elif (wrong := check_spec(spec)) is not None:
            problems.append(f"{column}: {wrong}")
    if problems:
        raise ConfigError(f"[tool.dbsnap.capture.mask] has {len(problems)} bad rule(s): {'; '.join(problems)}.")
    roots = raw.get("subset", [])
    if not isinstance(roots, list) or not all(
        isinstance(r, dict) and set(r) == {"table", "where"} and all(isinstance(v, str) and v for v in r.values())
        for r in roots
    ):
        raise ConfigError(
            'Each [[tool.dbsnap.capture.subset]] needs exactly table = "schema.table" and where = "SQL condition".'
        )
    for root in roots:
        _names([root["table"]], "subset table", (2,))
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return CapturePolicy(
        keep=_names(raw.get("keep"), "keep", (2, 3)),
        exclude=_names(raw.get("exclude"), "exclude", (2,)),
        key_env=key_env,
        mask=tuple(sorted(mask_table.items())),
        subset=tuple(SubsetRoot(r["table"], r["where"]) for r in roots),
        whole=_names(raw.get("whole"), "whole", (2,)),
        sha256=hashlib.sha256(canonical.encode()).hexdigest(),
    )


@dataclass(frozen=True)
class Plan:
    """What the capture does to each table: the masker of each masked column (partitions included)."""

    maskers: dict[str, dict[str, Masker]]  # table -> column -> masker
    excluded: frozenset[str]
    rules: dict[str, dict[str, Any]]  # table -> column -> the rule as written (a masking worker builds its own)

    def masked_columns(self) -> list[str]:
        return sorted(f"{t}.{c}" for t, cols in self.maskers.items() for c in cols)


def _lineage(table: Table) -> tuple[str, ...]:
    return (table.name, *table.parents)


def _rule_for(rules: dict[str, Any], table: Table, column: str) -> Any:
    """The column's rule, its own or its partitioned ancestors' (a rule on a partitioned table covers them)."""
    return next((rules[f"{t}.{column}"] for t in _lineage(table) if f"{t}.{column}" in rules), None)


def _is_kept(kept: set[str] | tuple[str, ...], table: Table, column: str) -> bool:
    return any(t in kept or f"{t}.{column}" in kept for t in _lineage(table))


def has_rule(policy: CapturePolicy, table: Table, column: Column) -> bool:
    """Masked or kept (itself or its table), generated, or in an excluded table: covered whatever the keys."""
    if set(_lineage(table)) & set(policy.exclude) or column.generated:
        return True
    return _rule_for(policy.rules(), table, column.name) is not None or _is_kept(policy.keep, table, column.name)


def plan_capture(policy: CapturePolicy, catalog: Catalog, key: bytes | None) -> Plan:
    """Check the policy against the catalog before any row is read; raise one ConfigError listing every
    uncovered column, then one listing every other conflict. `key` None checks without building maskers'
    keyed state (`--check`)."""
    rules = policy.rules()
    tables = catalog.tables
    problems: list[str] = []
    for name in [*policy.exclude, *(r.table for r in policy.subset), *policy.whole]:
        if name not in tables:
            problems.append(f"{name} names no table of the source")
    for name in policy.keep:
        owner, _, field = name.rpartition(".") if name.count(".") == 2 else (name, "", "")
        if owner not in tables or (field and field not in {c.name for c in tables[owner].columns}):
            problems.append(f"keep names {name}, which the source does not have")
    for name in rules:
        owner, _, field = name.rpartition(".")
        if owner not in tables or field not in {c.name for c in tables[owner].columns}:
            problems.append(f"mask names {name}, which the source does not have")
    excluded = frozenset(t.name for t in tables.values() if set(_lineage(t)) & set(policy.exclude))
    for root in policy.subset:
        if root.table in tables and tables[root.table].is_partition:
            problems.append(f"the subset root {root.table} is a partition: name {tables[root.table].top} instead")
        elif root.table in excluded:
            problems.append(f"the subset root {root.table} is excluded")
    for name in policy.whole:
        if name in tables and tables[name].is_partition:
            problems.append(f"whole names {name}, a partition: name {tables[name].top} instead")
        elif name in excluded:
            problems.append(f"whole names {name}, which is excluded")
        elif name in {r.table for r in policy.subset}:
            problems.append(f"whole names {name}, which is a subset root: drop one of the two")
    unreadable = sorted(t.name for t in tables.values() if not t.readable)
    if unreadable:
        # pg_dump locks every table, excluded ones too, and the rows are read partition by partition.
        raise ConfigError(
            f"The capturing role may not read {len(unreadable)} table(s) of the source: {', '.join(unreadable)}. "
            f"Grant it SELECT on every table, excluded ones too (pg_dump locks each table whose schema it copies, "
            f"which takes SELECT; GRANT SELECT ON ALL TABLES IN SCHEMA ... covers partitions); nothing was read "
            f"from the tables and nothing was written."
        )
    kept = set(policy.keep)
    probe_key = key if key is not None else b"check"
    maskers: dict[str, dict[str, Masker]] = {}
    specs: dict[tuple[str, str], Any] = {}
    uncovered: list[str] = []
    for table in tables.values():
        if table.name in excluded:
            continue
        keys = catalog.key_columns(table.name)
        unique = catalog.unique_columns(table.name)
        for column in table.columns:
            spec = _rule_for(rules, table, column.name)
            is_kept = _is_kept(kept, table, column.name)
            where = f"{table.name}.{column.name}"
            if spec is None:
                if not (is_kept or column.name in keys or column.generated):
                    uncovered.append(f"{where} ({column.type})")
                continue
            if column.generated:
                problems.append(f"{where} is a generated column: the server computes it, so it cannot be masked")
                continue
            if is_kept:
                problems.append(f"{where} is both kept and masked")
            masker = build_masker(spec, probe_key)
            if masker.categories is not None and column.element_category in masker.categories:
                spec = {"array": spec}  # emails in a text[]: masked element by element
                masker = build_masker(spec, probe_key)
            specs[(table.name, column.name)] = spec
            maskers.setdefault(table.name, {})[column.name] = masker
            if masker.categories is not None and column.category not in masker.categories:
                problems.append(f"{where} is {column.type}; {masker.spec} writes text, so mask it otherwise or keep it")
            if masker.spec.startswith("json=") and column.base_type not in JSON_TYPES:
                problems.append(f"{where} is {column.type}; {{json = ...}} needs a json or jsonb column")
            if masker.makes_null and column.not_null:
                problems.append(f"{where} is NOT NULL, so the null masker would break it")
            if (
                masker.max_length is not None
                and column.max_length is not None
                and masker.max_length > column.max_length
            ):
                problems.append(
                    f"{where} holds at most {column.max_length} characters and {masker.spec} writes up to "
                    f"{masker.max_length}"
                )
            if column.name in unique and not masker.unique:
                problems.append(
                    f"{where} is unique and {masker.spec} may give two rows the same value (use email, hash or null)"
                )
    for fk in catalog.foreign_keys:
        if fk.table in excluded:
            continue
        for child_column, parent_column in zip(fk.columns, fk.parent_columns, strict=True):
            child = specs.get((fk.table, child_column))
            if child == "null":
                continue  # the reference is cut: nothing to keep whole
            if fk.parent in excluded:
                problems.append(
                    f"{fk.table}.{child_column} references the excluded table {fk.parent}: exclude {fk.table} too, or "
                    f'mask the column with "null"'
                )
                continue
            parent = specs.get((fk.parent, parent_column))
            if child != parent:
                problems.append(
                    f"{fk.table}.{child_column} references {fk.parent}.{parent_column}, so both need the same rule "
                    f"(now {_shown(child)} and {_shown(parent)}), or the masked values would not join"
                )
    if uncovered:
        raise ConfigError(
            f"The capture policy {WHERE} does not cover {len(uncovered)} column(s) of the source database: "
            f"{', '.join(uncovered)}. Every column must be masked ([tool.dbsnap.capture.mask] "
            f'"schema.table.column" = "email"), kept (keep = ["schema.table.column"] or the whole table) or in an '
            f"excluded table; nothing was read from the tables and nothing was written. `dbsnap capture --check "
            f"--draft` prints rules for these columns to start from."
        )
    if problems:
        raise ConfigError(
            f"The capture policy {WHERE} cannot be applied to the source database: {'; '.join(problems)}. Fix "
            f"the rules; nothing was read from the tables and nothing was written."
        )
    rules_by_table: dict[str, dict[str, Any]] = {}
    for (table_name, column_name), spec in specs.items():
        rules_by_table.setdefault(table_name, {})[column_name] = spec
    return Plan(maskers, excluded, rules_by_table)


def _shown(spec: Any) -> str:
    return "kept" if spec is None else json.dumps(spec)

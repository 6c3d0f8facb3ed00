"""`dbsnap capture --check --draft`: a [tool.dbsnap.capture] block to start from, for the columns the policy
does not cover yet. Columns whose names look like personal data get a masker that fits their type and
constraints; tables that log people's sessions or actions are excluded when nothing references them; every
other column is kept. Only a draft: it is printed for a person to review and paste, never applied, and a
personal-looking column that no masker fits stays commented out, so the capture still refuses it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pytest_dbsnap.dumps.capture.catalog import Catalog, Column, Table
from pytest_dbsnap.dumps.capture.maskers import build_masker
from pytest_dbsnap.dumps.capture.policy import CapturePolicy, has_rule

# (pattern on the column's name, masker): the first that matches wins. Names are lower-cased.
_BY_NAME: tuple[tuple[str, str], ...] = (
    (r"(^|_)e?mail(_address)?$|email", "email"),
    (r"^(first_?name|given_?name|forename)$", "first_name"),
    (r"^(last_?name|surname|family_?name)$", "last_name"),
    (r"^(full_?name|display_?name|contact_?name|author_?name|person_?name|real_?name)$", "full_name"),
    (r"(^|_)(phone|telephone|mobile|fax|cell)(_?(number|no))?$", "phone"),
    (r"^(street|address|address_?line_?\d?|address\d|street_?address|addr)$", "street"),
    (r"^(zip|zip_?code|postal_?code|post_?code)$", "postal_code"),
    (r"^(user_?name|login)$", "hash"),
    (r"(^|_)(password|passwd|password_?hash|secret|api_?key|token|access_?token|refresh_?token)$", "hash"),
    (r"^(bio|biography|about|about_?me)$", "text"),
    (r"(^|_)(comments?|message|notes?|remarks?|body)$", "text"),
)
# Personal by name, but no masker writes the type (dates of birth, IP addresses, photos): left for a person to
# decide.
_UNMASKABLE = (
    r"(^|_)(birth_?date|date_?of_?birth|dob|birthday|born(_on|_at)?|ip|ip_?address|remote_?addr|last_?login_?ip"
    r"|avatar|photo|picture|portrait|selfie)$"
)
_LOG_TABLE = r"(sessions?|audit|audit_?log|admin_?log|log_?entry|access_?log)$"


@dataclass
class Draft:
    exclude: list[tuple[str, str]]  # (schema.table, why)
    keep: list[tuple[str, str]]  # (schema.table.column, its type)
    mask: list[tuple[str, str, str]]  # (schema.table.column, masker, its type)
    undecided: list[tuple[str, str]]  # (schema.table.column, why no masker)

    def __bool__(self) -> bool:
        return bool(self.exclude or self.keep or self.mask or self.undecided)


def _fits(masker_name: str, column: Column, unique: bool) -> bool:
    """Whether the masker passes the checks the capture makes before reading (type, length, uniqueness)."""
    masker = build_masker(masker_name, b"draft")
    category = column.element_category or column.category  # an array's elements are masked one by one
    if masker.categories is not None and category not in masker.categories:
        return False
    if masker.max_length is not None and column.max_length is not None and masker.max_length > column.max_length:
        return False
    return masker.unique or not unique


def suggest(name: str, column: Column, unique: bool) -> str | None:
    """The masker a column's name and type suggest, or None (keep it)."""
    lowered = name.lower()
    for pattern, masker in _BY_NAME:
        if re.search(pattern, lowered):
            return masker if _fits(masker, column, unique) else "?"
    return "?" if re.search(_UNMASKABLE, lowered) else None


def _excludable(table: Table, catalog: Catalog) -> bool:
    referenced = {fk.parent for fk in catalog.foreign_keys}
    return bool(re.search(_LOG_TABLE, table.relname.lower())) and table.name not in referenced


def draft_policy(policy: CapturePolicy, catalog: Catalog) -> Draft:
    """Rules for every column `policy` leaves uncovered, and masks for primary and foreign key columns (kept
    unless masked) named like personal data, an email as a key (partitions follow their top table)."""
    draft = Draft([], [], [], [])
    for table in catalog.tables.values():
        if table.is_partition:
            continue
        keys = catalog.key_columns(table.name)
        open_columns = [c for c in table.columns if not has_rule(policy, table, c)]
        if _excludable(table, catalog) and any(c.name not in keys for c in open_columns):
            draft.exclude.append((table.name, "it looks like a log of sessions or of people's actions"))
            continue
        unique = catalog.unique_columns(table.name)
        # A bare `name` is a person's in a table that also holds an email (users, contacts), else a thing's.
        personal = any(re.search(_BY_NAME[0][0], c.name.lower()) for c in table.columns)
        for column in open_columns:
            where = f"{table.name}.{column.name}"
            named = "full_name" if personal and column.name.lower() == "name" else column.name
            masker = suggest(named, column, column.name in unique)
            if column.name in keys:
                # Kept as a key unless masked; a natural key named like personal data (an email) is masked.
                if masker not in (None, "?"):
                    draft.mask.append((where, masker, f"{column.type}, a key"))
                continue
            if masker == "?":
                draft.undecided.append((where, f"{column.type}: personal by its name, and no masker fits it"))
            elif masker is not None:
                draft.mask.append((where, masker, column.type))
            elif column.base_type in ("json", "jsonb"):
                draft.keep.append(
                    (where, f'{column.type}: review its keys, {{ json = {{ email = "email" }} }} masks by key')
                )
            else:
                draft.keep.append((where, column.type))
    _mask_references_alike(draft, policy, catalog)
    return draft


def _mask_references_alike(draft: Draft, policy: CapturePolicy, catalog: Catalog) -> None:
    """A key column that references a masked column needs the same masker, or the two would not join."""
    rules = {**policy.rules(), **{name: masker for name, masker, _kind in draft.mask}}
    for fk in catalog.foreign_keys:
        for child, parent in zip(fk.columns, fk.parent_columns, strict=True):
            rule, where = rules.get(f"{fk.parent}.{parent}"), f"{fk.table}.{child}"
            if rule is None or where in rules:
                continue
            kind = next(c.type for c in catalog.tables[fk.table].columns if c.name == child)
            if isinstance(rule, str):
                draft.mask.append((where, rule, f"{kind}: references {fk.parent}.{parent}, masked alike"))
                rules[where] = rule
            else:
                draft.undecided.append((where, f"{kind}: references {fk.parent}.{parent}; give it the same rule"))


def render(draft: Draft, described: str) -> str:
    """The draft as TOML with a comment on every line, for a person to review."""
    total = len(draft.keep) + len(draft.mask) + len(draft.undecided)
    lines = [
        f"# A draft for [tool.dbsnap.capture]: rules for {total} column(s) of {described} (those the policy does",
        "# not cover yet, and key columns named like personal data, which are kept unless masked).",
        "# Merge it into pyproject.toml (into the keep, exclude and mask you have), then review every line: a kept",
        "# column is copied as it is. Columns named like personal data are masked; the rest are kept.",
        "[tool.dbsnap.capture]",
    ]
    if draft.exclude:
        lines.append("exclude = [")
        lines += [f"    {json.dumps(name)},  # {why}" for name, why in draft.exclude]
        lines.append("]")
    if draft.keep:
        lines.append("keep = [")
        lines += [f"    {json.dumps(name)},  # {kind}" for name, kind in draft.keep]
        lines.append("]")
    if draft.mask or draft.undecided:
        lines += ["", "[tool.dbsnap.capture.mask]"]
        lines += [f"{json.dumps(name)} = {json.dumps(masker)}  # {kind}" for name, masker, kind in draft.mask]
        lines += [
            f'# {json.dumps(name)} = ?  # {why}: keep it, mask it with "null", or exclude its table'
            for name, why in draft.undecided
        ]
    return "\n".join(lines) + "\n"


__all__ = ["Draft", "draft_policy", "render", "suggest"]

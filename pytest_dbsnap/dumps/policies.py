"""Row-level security policies that a server cannot create because they name roles it does not have: a dump of a
real environment (Supabase's `authenticated`, an app's reader role) carries them, and pg_restore stops on the
first one ("role ... does not exist") after loading every row. A restore leaves those policies out, and says so;
the tables keep their row-level security setting, which their owner and superusers (as sessions connect) bypass.

The archive's table of contents does not name a policy's roles, so the post-data section is read as SQL (only
the table of contents is read, no data): each `CREATE POLICY` follows the `-- TOC entry N` comment of its entry."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from pytest_dbsnap.core.proc import run
from pytest_dbsnap.postgres.base import Server

_IDENT = r'(?:"(?:[^"]|"")*"|[^\s".,;()]+)'
_POLICY = re.compile(
    rf"^CREATE POLICY ({_IDENT}) ON ({_IDENT}\.{_IDENT})(?: AS \w+)?(?: FOR \w+)? TO ({_IDENT}(?:, {_IDENT})*)"
)
_ROLE = re.compile(_IDENT)
_ENTRY = re.compile(r"^-- TOC entry (\d+) ")
_LISTED_POLICY = re.compile(r"^(\d+); \d+ \d+ POLICY ")


@dataclass(frozen=True)
class Policy:
    """A policy of the archive, as pg_dump wrote it: its entry, schema.table.policy, and the roles it names."""

    entry: int
    name: str
    roles: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.name} (TO {', '.join(self.roles)})"


def _unquoted(identifier: str) -> str:
    return identifier[1:-1].replace('""', '"') if identifier.startswith('"') else identifier


def policies_without_roles(server: Server, archive: Path, roles: set[str], listing: str) -> list[Policy]:
    """The archive's policies that name a role not in `roles` (PUBLIC is everyone's). `listing` is the
    archive's `pg_restore --list`: without a POLICY entry there, nothing more is read."""
    if not any(_LISTED_POLICY.match(line) for line in listing.splitlines()):
        return []
    script = run(
        [server.tools.path("pg_restore"), "--schema-only", "--section=post-data", "--verbose", "-f", "-",
         str(archive)],
        what=f"pg_restore --schema-only of {archive.name}",
    ).stdout  # fmt: skip
    found: list[Policy] = []
    entry = None
    for line in script.splitlines():
        if (began := _ENTRY.match(line)) is not None:
            entry = int(began.group(1))
        elif entry is not None and (policy := _POLICY.match(line)) is not None:
            named = tuple(_ROLE.findall(policy.group(3)))
            if any(role != "PUBLIC" and _unquoted(role) not in roles for role in named):
                found.append(Policy(entry, f"{policy.group(2)}.{policy.group(1)}", named))
    return found


def roles_of(conn: psycopg.Connection[Any]) -> set[str]:
    """The role names of the server `conn` is connected to."""
    return {str(name) for (name,) in conn.execute("SELECT rolname FROM pg_roles").fetchall()}


def listing_of(server: Server, archive: Path) -> str:
    """`pg_restore --list` of the archive: its table of contents, one entry a line."""
    return run(
        [server.tools.path("pg_restore"), "--list", str(archive)], what=f"pg_restore --list {archive.name}"
    ).stdout


def restore_list(listing: str, leave_out: list[Policy], folder: Path) -> Path:
    """A `pg_restore -L` file of every entry of `listing` but the policies in `leave_out`."""
    entries = {p.entry for p in leave_out}
    kept = [
        line
        for line in listing.splitlines()
        if (listed := _LISTED_POLICY.match(line)) is None or int(listed.group(1)) not in entries
    ]
    path = folder / "restore.list"
    path.write_text("\n".join(kept) + "\n")
    return path

"""The source's schema, rebuilt on the local cluster around the captured rows: `pg_dump --schema-only` of the
exported snapshot, restored a section at a time (tables before the rows, indexes and constraints after them, so
the constraints validate the rows). Owners and grants are left out, as in every restore; so are row-level
security policies for roles the local cluster does not have (Supabase's `authenticated`, an app's reader), which
would otherwise stop the restore here and in every session that restores the dump."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_dbsnap.core.proc import run
from pytest_dbsnap.postgres.base import Server

# A line of `pg_restore -l`: "<dump id>; <catalog table oid> <object oid> <type> ..."
_TOC_POLICY = re.compile(r"^\d+; \d+ (\d+) POLICY ")


@dataclass(frozen=True)
class ForeignPolicy:
    """A row-level security policy of the source that names roles the local cluster lacks."""

    oid: int
    name: str  # schema.table.policy
    roles: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.name} (TO {', '.join(self.roles)})"


def schema_archive(server: Server, database: str, described: str, snapshot: str, folder: Path) -> Path:
    """pg_dump --schema-only of the exported snapshot: the same tables the rows come from."""
    conninfo, env = server.tool_args(database)
    path = folder / "schema.dump"
    run(
        [server.tools.path("pg_dump"), "--schema-only", "-Fc", f"--snapshot={snapshot}", "-f", str(path),
         "-d", conninfo],
        what=f"pg_dump --schema-only of {described}",
        env=env,
    )  # fmt: skip
    return path


def foreign_policies(source: Any, local: Any) -> list[ForeignPolicy]:
    """The source's policies (`source`, a connection in the capture's snapshot) that name a role `local` (a
    connection to the local cluster) does not have; PUBLIC is every cluster's."""
    present = {str(name) for (name,) in local.execute("SELECT rolname FROM pg_roles").fetchall()}
    rows = source.execute(
        "SELECT p.oid, format('%I.%I.%I', n.nspname, c.relname, p.polname), "
        "  ARRAY(SELECT r.rolname::text FROM pg_roles r WHERE r.oid = ANY(p.polroles) ORDER BY 1) "
        "FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "ORDER BY 2"
    ).fetchall()
    return [
        ForeignPolicy(int(oid), str(name), tuple(roles))
        for oid, name, roles in rows
        if any(role not in present for role in roles)
    ]


def restore_section(
    local: Server, archive: Path, database: str, section: str, *, leave_out: list[ForeignPolicy] | None = None
) -> None:
    """pg_restore of one section of the schema archive, without the policies in `leave_out`."""
    conninfo, env = local.tool_args(database)
    command: list[str | Path] = [
        local.tools.path("pg_restore"), "--no-owner", "--no-acl", "--exit-on-error", f"--section={section}",
        "-d", conninfo,
    ]  # fmt: skip
    if leave_out:
        oids = {str(p.oid) for p in leave_out}
        listing = run([local.tools.path("pg_restore"), "-l", str(archive)], what="pg_restore -l", env=env).stdout
        kept = [
            line
            for line in listing.splitlines()
            if not ((found := _TOC_POLICY.match(line)) is not None and found.group(1) in oids)
        ]
        chosen = archive.with_suffix(".list")
        chosen.write_text("\n".join(kept) + "\n")
        command += ["-L", str(chosen)]
    run([*command, str(archive)], what=f"pg_restore --section={section} of the captured schema", env=env)

"""The source's schema, rebuilt on the local cluster around the captured rows: `pg_dump --schema-only` of the
exported snapshot, restored a section at a time (tables before the rows, indexes and constraints after them, so
the constraints validate the rows). Owners and grants are left out, as in every restore; so are row-level
security policies for roles the local cluster does not have (`dumps/policies.py`), which would otherwise stop the
restore here and in every session that restores the dump."""

from __future__ import annotations

from pathlib import Path

from pytest_dbsnap.core.proc import run
from pytest_dbsnap.postgres.base import Server


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


def restore_section(local: Server, archive: Path, database: str, section: str, *, only: Path | None = None) -> None:
    """pg_restore of one section of the schema archive; `only`: a `pg_restore -L` file of the entries to take."""
    conninfo, env = local.tool_args(database)
    run(
        [local.tools.path("pg_restore"), "--no-owner", "--no-acl", "--exit-on-error", f"--section={section}",
         *(["-L", str(only)] if only is not None else []), "-d", conninfo, str(archive)],
        what=f"pg_restore --section={section} of the captured schema",
        env=env,
    )  # fmt: skip

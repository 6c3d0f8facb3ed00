"""Restore a dump into a database without ever losing the old one, fast when the server has seen the dump.

Paths, fastest first:
  spare swap      a ready copy of the dump's template is renamed into place (milliseconds at any size)
  template clone  CREATE DATABASE ... TEMPLATE the dump's template, then swap
  pg_restore      verify sha256 -> pg_restore into a staging database -> check row counts -> keep it as the
                  dump's template -> clone -> swap
In every path the target keeps its old content until one transaction renames the new database into place.
Before any of it, `check_replaceable` refuses a target that holds data pytest-dbsnap did not make.
The next spare is made by `prepare_spare`, off the critical path (a background thread, or the next call).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pytest_dbsnap.dumps import databases
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.errors import (
    ConfigError,
    DumpCorrupt,
    DumpError,
    RestoreError,
    ServerError,
    ToolError,
    UnmanagedDatabase,
)
from pytest_dbsnap.postgres.base import Server
from pytest_dbsnap.proc import run
from pytest_dbsnap.progress import meter

Progress = Callable[[str], None]
SYSTEM_DATABASES = {"postgres", "template0", "template1"}


def _quiet(_message: str) -> None:
    """Progress sink that shows nothing (CI, tests)."""


@dataclass(frozen=True)
class RestoreResult:
    meta: DumpMeta
    database: str
    method: str  # "spare swap" | "template clone" | "pg_restore"
    seconds: float
    verified: bool
    copy_on_write: bool = False  # the server's clones share the template's blocks (PostgreSQL 18+, XFS/btrfs/APFS)

    @property
    def label(self) -> str:
        """The method as shown: "template clone (copy-on-write)" when the clone shared blocks."""
        return with_copy_on_write(self.method, self.copy_on_write)


def with_copy_on_write(method: str, copy_on_write: bool) -> str:
    return f"{method} (copy-on-write)" if copy_on_write and method == "template clone" else method


def template_name(meta: DumpMeta) -> str:
    return f"{databases.TEMPLATE_PREFIX}{meta.template_key}"


def spare_name(meta: DumpMeta) -> str:
    return f"{databases.SPARE_PREFIX}{meta.template_key}"


def check_target(target: str) -> None:
    if target in SYSTEM_DATABASES or target.startswith("dbsnap_"):
        raise ConfigError(
            f"Refusing to restore into {target!r}: it is a system or pytest-dbsnap database. "
            f"Choose the app's own database name (setting database, --dbsnap-database)."
        )


def user_relations(server: Server, database: str) -> int:
    """How many tables, views, sequences... the database holds outside the system schemas."""
    with server.connect(database) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%' "
            "AND n.nspname NOT LIKE 'pg\\_temp\\_%%'"
        ).fetchone()
    return int(str(row[0])) if row else 0


def check_replaceable(server: Server, target: str, *, replace: bool = False) -> None:
    """Replace only what is ours: a database this tool made (marked), a missing one or an empty one.

    The tool's own throwaway cluster holds nothing it did not make, so only other servers are checked.
    `replace` is the user's explicit consent (setting replace_database) to lose the target's data.
    """
    if replace or server.is_throwaway:
        return
    with server.connect() as conn:
        if not databases.exists(conn, target) or databases.is_marked(conn, target):
            return
    try:
        count: int | None = user_relations(server, target)
    except ServerError:
        count = None  # closed to connections, or not ours to read: just as unknown
    if count == 0:
        return
    holds = f"holds {count} table(s) or other relations" if count else "could not be looked into"
    raise UnmanagedDatabase(
        f"Refusing to replace the database {target!r} on {server.describe()}: it {holds}, and pytest-dbsnap "
        f"did not make it (the databases it makes carry the comment {databases.MARK!r}), so restoring the dump "
        f"there would lose its data. Nothing was changed. Use another database name (setting database, "
        f"--dbsnap-database, or `dbsnap restore --database NAME`), or, only if its data may be lost, allow "
        f"replacing it: replace_database = true in [tool.dbsnap], DBSNAP_REPLACE_DATABASE=1, "
        f"--dbsnap-replace-database, or `dbsnap restore --replace`.",
        database=target,
    )


def verify_file(meta: DumpMeta, path: Path) -> None:
    """Size first (a truncated copy fails at once), then the sha256 of every byte."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise DumpCorrupt(f"The dump file {path} is missing; regenerate it (dbsnap generate).") from exc
    if size != meta.size_bytes:
        raise DumpCorrupt(
            f"The dump {path} has {size} bytes but its metadata records {meta.size_bytes}: the file is truncated "
            f"or was replaced. Nothing was restored. Copy the dump again or regenerate it (dbsnap generate)."
        )
    digest = hashlib.sha256()
    count, done = meter(), 0  # the live line's bar, when a step is in progress
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            done += len(chunk)
            count(done, size)
    if digest.hexdigest() != meta.sha256:
        raise DumpCorrupt(
            f"The dump {path} does not match its recorded sha256 (expected {meta.sha256[:16]}..., got "
            f"{digest.hexdigest()[:16]}...): the file is corrupt. Nothing was restored. Copy the dump again or "
            f"regenerate it (dbsnap generate)."
        )


def check_versions(server: Server, meta: DumpMeta) -> None:
    """pg_restore cannot read archives of a newer pg_dump: say which versions, and what to install."""
    if meta.pg_dump_major > server.tools.major:
        raise DumpError(
            f"The dump {meta.name} was written by pg_dump {meta.pg_dump_version}, but the local pg_restore is "
            f"{server.tools.version} ({server.tools.bindir}) and cannot read it. Install the PostgreSQL "
            f"{meta.pg_dump_major} client programs and point pg_bindir at them, or regenerate the dump with "
            f"PostgreSQL {server.tools.major}."
        )


def _name(value: object) -> str:
    """A name as text: a server whose encoding is SQL_ASCII returns text as bytes, since psycopg cannot know
    which encoding they are in; the names we meet are UTF-8 or ASCII."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def count_rows(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, int]:
    """Exact row counts of every user table, keyed schema.table.

    The server quotes each name (format %I), and the query is sent as bytes, so a name whose bytes are not
    in the client encoding (SQL_ASCII servers) is counted too.
    """
    tables = conn.execute(
        "SELECT n.nspname, c.relname, format('%I.%I', n.nspname, c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg\\_toast%%' AND NOT c.relispartition ORDER BY 1, 2"
    ).fetchall()
    counts: dict[str, int] = {}
    for schema, table, quoted in tables:
        target = (
            bytes(quoted)
            if isinstance(quoted, bytes | bytearray | memoryview)
            else str(quoted).encode(conn.info.encoding)
        )
        row = conn.execute(b"SELECT count(*) FROM " + target).fetchone()
        counts[f"{_name(schema)}.{_name(table)}"] = int(str(row[0])) if row else 0
    return counts


def pg_restore_into(server: Server, dump_path: Path, database: str, jobs: int) -> None:
    """pg_restore with the flags every restore uses (also the benchmarks' baseline), into an existing database."""
    conninfo, env = server.tool_args(database)
    run(
        [
            server.tools.path("pg_restore"),
            "--no-owner",
            "--no-acl",
            "--exit-on-error",
            "-j",
            str(jobs),
            "-d",
            conninfo,
            str(dump_path),
        ],
        what=f"pg_restore of {dump_path.name}",
        env=env,
    )


def restore_dump(
    server: Server,
    meta: DumpMeta,
    dump_path: Path,
    target: str,
    *,
    verify: bool = True,
    jobs: int = 1,
    progress: Progress = _quiet,
    replace: bool = False,
) -> RestoreResult:
    """Put the dump's data in `target`; on any failure `target` is exactly as it was.

    A target that exists, is not empty and was not made by pytest-dbsnap is refused unless `replace`.
    """
    check_target(target)
    check_replaceable(server, target, replace=replace)
    began = time.monotonic()
    cow = server.copy_on_write
    with server.connect() as conn:
        databases.drop_leftovers(conn)
        spare, template = spare_name(meta), template_name(meta)
        if databases.exists(conn, spare):
            try:
                _drop_in_background(server, databases.swap_in(conn, spare, target, drop_old=False))
                return RestoreResult(meta, target, "spare swap", time.monotonic() - began, False, cow)
            except (psycopg.errors.UndefinedObject, psycopg.errors.InvalidCatalogName):
                pass  # another restore took the spare first: clone the template instead
        # Restorers of one dump on one server (xdist workers, CI jobs) take turns here, so that only the first
        # runs pg_restore and the others find its template.
        with databases.advisory_lock(conn, template):
            had_template = databases.exists(conn, template)
            if not had_template:
                _restore_template(server, conn, meta, dump_path, target, verify=verify, jobs=jobs, progress=progress)
        progress(f"cloning the template of {meta.name}")
        staging = databases.temporary_name(databases.STAGE_PREFIX)
        databases.clone(conn, template, staging, copy_on_write=cow)
        _drop_in_background(server, _swap_or_drop(conn, staging, target))
        if had_template:
            return RestoreResult(meta, target, "template clone", time.monotonic() - began, False, cow)
        return RestoreResult(meta, target, "pg_restore", time.monotonic() - began, verify, cow)


def _restore_template(
    server: Server,
    conn: psycopg.Connection[tuple[object, ...]],
    meta: DumpMeta,
    dump_path: Path,
    target: str,
    *,
    verify: bool,
    jobs: int,
    progress: Progress,
) -> None:
    """Cold path: verify the file, pg_restore it into staging, check row counts, keep it as the template."""
    check_versions(server, meta)
    if verify:
        progress(f"verifying the sha256 of {dump_path.name} ({meta.size_bytes / 1e6:.1f} MB)")
        verify_file(meta, dump_path)
    elif not dump_path.is_file():
        raise DumpCorrupt(f"The dump file {dump_path} is missing; regenerate it (dbsnap generate).")
    staging = databases.temporary_name(databases.STAGE_PREFIX)
    progress(f"pg_restore of {meta.name} with {jobs} job(s)")
    databases.create_empty(conn, staging)
    try:
        try:
            pg_restore_into(server, dump_path, staging, jobs)
        except ToolError as exc:
            raise RestoreError(
                f"Restoring {meta.name} into {server.describe()} failed; the database "
                f"{target!r} was not touched.\n{exc}"
            ) from exc
        if meta.row_counts:
            with server.connect(staging) as staged:
                counts = count_rows(staged)
            wrong = {t: (n, counts.get(t)) for t, n in meta.row_counts.items() if counts.get(t) != n}
            if wrong:
                shown = ", ".join(f"{t}: {got} rows, expected {want}" for t, (want, got) in sorted(wrong.items()))
                raise RestoreError(
                    f"The restored data of {meta.name} does not match its metadata ({shown}); "
                    f"the database {target!r} was not touched. Regenerate the dump."
                )
        databases.mark_template_by_rename(conn, staging, template_name(meta))
    except BaseException:
        databases.drop(conn, staging)
        raise


def _swap_or_drop(conn: psycopg.Connection[tuple[object, ...]], staging: str, target: str) -> str | None:
    """Swap `staging` in as `target`; returns the name the old target was set aside under, still to drop."""
    try:
        return databases.swap_in(conn, staging, target, drop_old=False)
    except BaseException:
        databases.drop(conn, staging)
        raise


def _drop_in_background(server: Server, old: str | None) -> None:
    """Drop the replaced target off the critical path: it is only garbage now, and DROP DATABASE unlinks every
    file, which takes longer the bigger it is (0.25 s at 1 GB, more than the swap itself). If this process ends
    first (killed), the next restore drops it as the leftover of a dead process."""
    if old is None:
        return

    def drop_old() -> None:
        with contextlib.suppress(Exception), server.connect() as conn:
            databases.drop(conn, old)

    # Not a daemon: a short-lived caller (the dbsnap CLI) finishes the drop after printing its result, instead
    # of leaving a database-sized leftover for the next restore to drop on its critical path.
    threading.Thread(target=drop_old, name="dbsnap-drop-old", daemon=False).start()


def prepare_spare(server: Server, meta: DumpMeta) -> bool:
    """Make the ready copy that turns the next restore of this dump into a rename. False if there is no
    template (nothing restored yet) or a spare already exists."""
    with server.connect() as conn:
        template, spare = template_name(meta), spare_name(meta)
        if not databases.exists(conn, template) or databases.exists(conn, spare):
            return False
        staging = databases.temporary_name(databases.STAGE_PREFIX)
        databases.clone(conn, template, staging, copy_on_write=server.copy_on_write)
        try:
            databases.rename_closed(conn, staging, spare)
        except BaseException:
            databases.drop(conn, staging)
            raise
        return True


def drop_orphan_templates(server: Server, keep_sha256: set[str]) -> list[str]:
    """Templates and spares of dumps that no longer exist in the store."""
    keys = {sha[:20] for sha in keep_sha256}
    dropped = []
    with server.connect() as conn:
        for name in databases.template_names(conn):
            key = name.removeprefix(databases.TEMPLATE_PREFIX).removeprefix(databases.SPARE_PREFIX)
            if key not in keys:
                databases.drop_template(conn, name)
                dropped.append(name)
    return dropped

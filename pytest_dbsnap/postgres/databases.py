"""Database-level moves on a server: create, clone from a template, swap atomically, drop leftovers.

Names we create carry a prefix (and, for temporary ones, the creating pid) so that leftovers of a killed
process can be told apart from a user's databases and dropped at the next run. Every database created here also
gets the comment MARK, so that a restore can tell a database this tool made (and may replace) from one it did
not: a comment is kept by a rename, so the mark set at creation follows a staging database into place; a clone
does not copy it, so `clone` sets it on the copy.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator

import psycopg
from psycopg import sql

from pytest_dbsnap.core.reaper import Instruction, run_command
from pytest_dbsnap.core.redact import redact
from pytest_dbsnap.errors import RestoreError

STAGE_PREFIX = "dbsnap_stage_"
OLD_PREFIX = "dbsnap_old_"
TEMPLATE_PREFIX = "dbsnap_tpl_"
SPARE_PREFIX = "dbsnap_spare_"
FRESH_PREFIX = "dbsnap_test_"  # per-test clones made by the fresh_db fixture
POOL_PREFIX = "dbsnap_pool_"  # fresh_db clones made ahead of time (postgres/pool.py), renamed when handed out
MARK = "pytest-dbsnap"  # COMMENT ON DATABASE of every database this tool creates
_TEMPORARY = re.compile(rf"^(?:{STAGE_PREFIX}|{OLD_PREFIX}|{FRESH_PREFIX}|{POOL_PREFIX})(?P<pid>\d+)_[0-9a-f]+$")
_BUSY_WAIT = 15.0  # seconds to wait for other sessions to leave a database we must rename or clone

Connection = psycopg.Connection[tuple[object, ...]]


def temporary_name(prefix: str) -> str:
    return f"{prefix}{os.getpid()}_{secrets.token_hex(4)}"


def exists(conn: Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def drop(conn: Connection, name: str, *, force: bool = True) -> None:
    """Drop a database; with force, first end the sessions connected to it (servers before 13 lack FORCE)."""
    statement = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
    if force and conn.info.server_version >= 130000:
        statement = sql.SQL("{} WITH (FORCE)").format(statement)
    conn.execute(statement)


def mark(conn: Connection, name: str) -> None:
    """Record that pytest-dbsnap made this database, so a later restore may replace it."""
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(MARK)))


def is_marked(conn: Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)
    ).fetchone()
    return row is not None and row[0] == MARK


def create_empty(conn: Connection, name: str) -> None:
    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    mark(conn, name)


def create(conn: Connection, name: str) -> None:
    """An empty database from the server's default template (template1, with what the admin put there)."""
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    mark(conn, name)


def clone(conn: Connection, template: str, name: str, *, copy_on_write: bool = False) -> None:
    """CREATE DATABASE ... TEMPLATE, copying files rather than WAL-logging them where the server can (15+).

    With copy_on_write (the server is 18+ and its folder's filesystem shares blocks: `Server.copy_on_write`) the
    files are cloned (`file_copy_method = clone`): milliseconds at any size, the blocks copied only when written.
    """
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
    if conn.info.server_version >= 150000:
        statement = sql.SQL("{} STRATEGY FILE_COPY").format(statement)
    use_clone = copy_on_write and conn.info.server_version >= 180000
    if use_clone:
        conn.execute("SET file_copy_method = clone")  # this session only; reset below
    try:
        deadline = time.monotonic() + _BUSY_WAIT
        while True:
            try:
                conn.execute(statement)
                break
            except psycopg.errors.ObjectInUse:
                # Another session is cloning the same template right now (a spare being made): wait our turn.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        if use_clone:
            with contextlib.suppress(psycopg.Error):  # a broken connection: the original error matters
                conn.execute("RESET file_copy_method")
    mark(conn, name)  # a clone does not copy its template's comment


def mark_template(conn: Connection, name: str) -> None:
    """A template must have no sessions to be cloned, so nobody may connect to it."""
    conn.execute(
        sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(sql.Identifier(name))
    )


def _end_sessions(conn: Connection, name: str) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,)
    )
    deadline = time.monotonic() + _BUSY_WAIT
    while conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,)
    ).fetchone() != (0,):
        if time.monotonic() > deadline:
            raise RestoreError(
                f"Sessions connected to database {name!r} did not end within {_BUSY_WAIT:.0f} s; "
                f"stop what holds them (an app, psql) and run again."
            )
        time.sleep(0.02)


def swap_in(conn: Connection, new: str, target: str, *, drop_old: bool = True) -> str | None:
    """Make `new` the database called `target` in one transaction; the old target is dropped afterwards.

    Until the renames commit, `target` is untouched; if they fail, it is opened again for connections.
    With drop_old=False the old target is left set aside and its name returned, for the caller to drop off
    the critical path (dropping unlinks every file, so it takes longer the bigger the database).
    """
    rename = "ALTER DATABASE {} RENAME TO {}"
    if not exists(conn, target):
        conn.execute(sql.SQL(rename).format(sql.Identifier(new), sql.Identifier(target)))
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(target)))
        return None
    old = temporary_name(OLD_PREFIX)
    target_id = sql.Identifier(target)
    conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(target_id))
    try:
        _end_sessions(conn, target)
        with conn.transaction():
            conn.execute(sql.SQL(rename).format(target_id, sql.Identifier(old)))
            conn.execute(sql.SQL(rename).format(sql.Identifier(new), target_id))
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(target_id))
    except BaseException:
        if exists(conn, target):
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(target_id))
        raise
    if not drop_old:
        return old
    drop(conn, old)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def drop_leftovers(conn: Connection) -> list[str]:
    """Drop staging and set-aside databases left by processes that died mid-restore."""
    dropped = []
    rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'dbsnap\\_%'").fetchall()
    for (name,) in rows:
        match = _TEMPORARY.match(str(name))
        if not match or _pid_alive(int(match["pid"])):
            continue
        try:
            drop(conn, str(name), force=False)  # never end somebody's live restore: skip a database in use
        except psycopg.errors.ObjectInUse:
            continue
        dropped.append(str(name))
    return dropped


def temporary_names_of(conn: Connection, pid: int) -> list[str]:
    """The temporary databases (staging, set aside, per-test) one process made: its reaper drops them."""
    rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'dbsnap\\_%'").fetchall()
    names = [str(name) for (name,) in rows]
    return sorted(n for n in names if (match := _TEMPORARY.match(n)) is not None and int(match["pid"]) == pid)


@contextlib.contextmanager
def advisory_lock(conn: Connection, name: str) -> Iterator[None]:
    """Serialise work on one template across processes and machines (xdist workers, CI jobs) on this server."""
    conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (name,))
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (name,))


def template_names(conn: Connection) -> list[str]:
    rows = conn.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE %s OR datname LIKE %s",
        (TEMPLATE_PREFIX.replace("_", "\\_") + "%", SPARE_PREFIX.replace("_", "\\_") + "%"),
    )
    return sorted(str(row[0]) for row in rows.fetchall())


def drop_template(conn: Connection, name: str) -> None:
    conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name)))
    drop(conn, name)


def mark_template_by_rename(conn: Connection, staging: str, template: str) -> None:
    """Turn a verified staging database into a dump's template (a template may already exist from a race)."""
    if exists(conn, template):
        drop(conn, staging)
        return
    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(staging), sql.Identifier(template)))
    mark_template(conn, template)


def rename_closed(conn: Connection, name: str, new_name: str) -> None:
    """Rename a copy and close it to connections, so it stays identical to its template until used."""
    with conn.transaction():
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(name), sql.Identifier(new_name)))
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(new_name)))


def open_to_connections(conn: Connection, name: str, new_name: str) -> None:
    """Hand out a closed copy: rename it and let connections in, in one transaction (undone if either fails)."""
    with conn.transaction():
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(name), sql.Identifier(new_name)))
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(new_name)))


def close_to_connections(conn: Connection, name: str) -> None:
    conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))


def size_of(conn: Connection, name: str) -> int:
    """Bytes on disk of one database (0 when it does not exist)."""
    row = conn.execute("SELECT pg_database_size(oid) FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return int(str(row[0])) if row is not None else 0


def our_sizes(conn: Connection) -> dict[str, int]:
    """Bytes on disk of each database this tool made (marked, or named dbsnap_...): what a disk budget counts.
    A replaced database set aside to be dropped (OLD_PREFIX) is not counted: it is on its way out."""
    rows = conn.execute(
        "SELECT datname, pg_database_size(oid) FROM pg_database "
        "WHERE (shobj_description(oid, 'pg_database') = %s OR datname LIKE 'dbsnap\\_%%') "
        "AND datname NOT LIKE %s",
        (MARK, OLD_PREFIX.replace("_", "\\_") + "%"),
    ).fetchall()
    return {str(name): int(str(size)) for name, size in rows}


def room_for_copy(conn: Connection, template: str, limit_bytes: int) -> bool:
    """Whether one more full copy of `template` keeps this tool's databases within `limit_bytes`."""
    return sum(our_sizes(conn).values()) + size_of(conn, template) <= limit_bytes


def drop_temporary_instruction(conninfo: str, owner: int) -> Instruction:
    """What a reaper runs should `owner` die: this module as a program, the conninfo (with its password) on
    stdin rather than in the command line that `ps` shows."""
    argv = [sys.executable, "-m", "pytest_dbsnap.postgres.databases", str(owner)]
    return run_command(argv, stdin=conninfo, timeout=30)


def _drop_temporary_main(argv: list[str]) -> int:
    """`python -m pytest_dbsnap.postgres.databases OWNER_PID` with the conninfo on stdin."""
    owner = int(argv[0])
    conninfo = sys.stdin.read().strip()
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            for name in temporary_names_of(conn, owner):
                drop(conn, name)
                print(f"dropped the temporary database {name}")
    except psycopg.Error as exc:  # the server may be gone too; the next run drops what is left
        print(f"could not drop temporary databases: {redact(str(exc)).strip()[:200]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_drop_temporary_main(sys.argv[1:]))

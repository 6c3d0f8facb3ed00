"""Private databases made ahead of time, the way IntegreSQL runs its pool: a background thread (its own
connection) clones the template while the tests run, and a test's private database is then one rename.

Each pooled copy is made by CREATE DATABASE ... TEMPLATE and closed to connections at once, so nobody has been
in it before it is handed out: it is exactly its template. Its name carries this process's pid (POOL_PREFIX),
so a process that dies leaves copies its reaper, or the next restore, drops (`databases.temporary_names_of`,
`databases.drop_leftovers`). The pool never runs more than `ahead` copies ahead, and with a disk limit it makes
one only while one more full copy fits (clones that share blocks on a copy-on-write filesystem cost nothing).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import psycopg

from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import Server

log = logging.getLogger(__name__)

Connection = psycopg.Connection[tuple[object, ...]]


class ClonePool:
    """Copies of one template made ahead in a background thread; `take` hands one out, `give_back` drops it."""

    def __init__(
        self,
        server: Server,
        template: str,
        *,
        ahead: int,
        limit_bytes: Callable[[Connection], int | None] | None = None,
    ) -> None:
        self.server = server
        self.template = template
        self.ahead = ahead
        # The disk limit for this tool's databases on the server, asked before each copy (None: no limit).
        self.limit_bytes = limit_bytes
        self.handed_out_ready = 0  # hand-outs that were a rename (the copy was ready), for the tests and reports
        self.made_on_demand = 0  # hand-outs that had to clone while the test waited
        self.held_back = False  # a copy did not fit the disk limit at least once
        self._ready: list[str] = []
        self._busy = False  # the filler is making a copy now
        self._waiting_for_room = False  # the filler waits for a copy to be given back (disk limit)
        self._stopped = False  # the filler ended (closed, or a copy failed): take() clones on demand
        self._closed = False
        self._changed = threading.Condition()
        self._conn: Connection | None = None  # the test thread's connection; the filler has its own
        self._conn_lock = threading.Lock()
        self._filler_conn: Connection | None = None  # for close() to cancel a copy nobody will take
        self._thread: threading.Thread | None = None

    # --- the test thread ----------------------------------------------------------------------------------

    def start(self) -> ClonePool:
        if self.ahead > 0:
            self._thread = threading.Thread(target=self._fill, name="dbsnap-pool", daemon=True)
            self._thread.start()
        else:
            self._stopped = True
        return self

    def _connection(self) -> Connection:
        """The test thread's connection, opened by the filler ahead of the first hand-out (a connection with
        its password exchange costs more than the rename)."""
        with self._conn_lock:
            if self._conn is None or self._conn.closed:
                self._conn = self.server.connect()
            return self._conn

    def take(self) -> str:
        """A private copy of the template, open to connections, named like any fresh_db clone."""
        with self._changed:
            while not self._ready and self._busy and not self._stopped:
                self._changed.wait()  # the copy under way is sooner than a new one beside it
            pooled = self._ready.pop(0) if self._ready else None
            self._changed.notify_all()  # room in the pool: the filler makes the next one
        name = databases.temporary_name(databases.FRESH_PREFIX)
        conn = self._connection()
        if pooled is not None:
            try:
                databases.open_to_connections(conn, pooled, name)
            except psycopg.Error as exc:  # e.g. dropped behind our back: not worth failing the test for
                log.warning("the fresh_db pool's copy %s could not be handed out (%s); cloning instead", pooled, exc)
                with contextlib.suppress(psycopg.Error):
                    databases.drop(conn, pooled)
            else:
                self.handed_out_ready += 1
                return name
        databases.clone(conn, self.template, name, copy_on_write=self.server.copy_on_write)
        self.made_on_demand += 1
        return name

    def give_back(self, name: str) -> None:
        """Drop a handed-out copy (the test is over); the room it took may let the filler make the next one."""
        databases.drop(self._connection(), name)
        with self._changed:
            self._waiting_for_room = False  # the filler looks again before anyone is told it waits
            self._changed.notify_all()

    def close(self, *, keep_as: str | None = None) -> bool:
        """Stop the filler and drop the copies it made; the connections are closed. `keep_as`: one ready copy
        is renamed to that name instead (a spare: an identical closed copy of the template); True if one was.
        Without `keep_as`, a copy under way is cancelled rather than finished and dropped."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            filler = self._filler_conn if self._busy and keep_as is None else None
        if filler is not None:
            with contextlib.suppress(psycopg.Error):
                filler.cancel()  # the filler sees QueryCanceled and ends
        if self._thread is not None:
            self._thread.join()
        with self._changed:
            left, self._ready = self._ready, []
        kept = False
        try:
            if left:
                conn = self._connection()
                if keep_as is not None and not databases.exists(conn, keep_as):
                    databases.rename_closed(conn, left.pop(0), keep_as)
                    kept = True
                for name in left:
                    databases.drop(conn, name)
        except psycopg.Error as exc:  # the server is gone or failing: its leftovers are dropped by the next restore
            log.warning("could not drop the fresh_db pool's copies %s: %s", ", ".join(left), exc)
        finally:
            if self._conn is not None:
                self._conn.close()
        return kept

    @property
    def ready(self) -> int:
        with self._changed:
            return len(self._ready)

    def wait_until_full(self, timeout: float | None = None) -> bool:
        """Until `ahead` copies are ready or the filler is held back or stopped (for tests and benchmarks)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: len(self._ready) >= self.ahead or self._stopped or self._closed or self._waiting_for_room,
                timeout,
            )

    # --- the filler thread --------------------------------------------------------------------------------

    def _fill(self) -> None:
        try:
            self._connection()  # ready for the first hand-out
            with self.server.connect() as conn:
                self._filler_conn = conn
                while self._make_next(conn):
                    pass
        except psycopg.errors.QueryCanceled:
            if not self._closed:
                log.warning("the fresh_db pool's clone was cancelled; no more clones are made ahead")
        except Exception as exc:  # a pool that cannot fill only costs the hand-outs their speed
            log.warning("the fresh_db pool stopped making clones ahead: %s", exc)
        finally:
            with self._changed:
                self._busy = False
                self._stopped = True
                self._changed.notify_all()

    def _make_next(self, conn: Connection) -> bool:
        """Make one copy when there is room; False when the pool is closed."""
        with self._changed:
            while not self._closed and len(self._ready) >= self.ahead:
                self._changed.wait()
            if self._closed:
                return False
            self._busy = True
        if not self._fits(conn):
            with self._changed:
                self.held_back, self._busy, self._waiting_for_room = True, False, True
                self._changed.notify_all()
                self._changed.wait()  # until a copy is given back (room) or the pool closes
                self._waiting_for_room = False
            return not self._closed
        name = databases.temporary_name(databases.POOL_PREFIX)
        try:
            # clone() is CREATE DATABASE then a COMMENT: close()'s cancel may end either, or what follows.
            databases.clone(conn, self.template, name, copy_on_write=self.server.copy_on_write)
            databases.close_to_connections(conn, name)
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                _drop_own(conn, name)
            raise
        with self._changed:
            self._busy = False
            if self._closed:
                closed = True
            else:
                closed = False
                self._ready.append(name)
            self._changed.notify_all()
        if closed:
            _drop_own(conn, name)
            return False
        return True

    def _fits(self, conn: Connection) -> bool:
        if self.limit_bytes is None or self.server.copy_on_write:
            return True
        limit = self.limit_bytes(conn)
        return limit is None or databases.room_for_copy(conn, self.template, limit)


def _drop_own(conn: Connection, name: str) -> None:
    """Drop a copy the filler made (IF EXISTS). close() cancels the filler's statement from another thread without
    a lock held, so its cancel can land on this DROP instead of the clone it was meant for: once cancelled, the
    DROP is sent again (a cancel ends one statement)."""
    try:
        databases.drop(conn, name)
    except psycopg.errors.QueryCanceled:
        databases.drop(conn, name)

"""The fresh_db pool on a real server: copies made ahead in a thread equal the template (rows and md5), a
hand-out is a rename, the pool refills and never runs more than N ahead, a disk limit holds it back, and
closing it leaves nothing."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.postgres.pool import ClonePool, _drop_own

CHECKSUM = "SELECT count(*), md5(string_agg(id || ':' || payload, ',' ORDER BY id)) FROM items"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cache = tmp_path_factory.getbasetemp() / "pg-cache"  # shared with the other server tests
    cache.mkdir(exist_ok=True)
    with LocalCluster(find_pg_tools(None), cache_dir=cache).start() as started:
        assert isinstance(started, LocalCluster)
        yield started


@pytest.fixture(scope="module")
def template(cluster: LocalCluster) -> tuple[str, tuple[object, ...]]:
    """A template of 20 000 rows (a few MB) and the checksum of its rows, read before it was closed."""
    name = f"{databases.TEMPLATE_PREFIX}pooltest"
    with cluster.connect() as conn:
        databases.create(conn, name)
    with cluster.connect(name) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, payload text NOT NULL)")
        conn.execute("INSERT INTO items SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20000) g")
        row = conn.execute(CHECKSUM).fetchone()
    assert row is not None
    with cluster.connect() as conn:
        databases.mark_template(conn, name)
    return name, tuple(row)


def ours(cluster: LocalCluster, prefix: str) -> list[str]:
    with cluster.connect() as conn:
        return [n for n in databases.temporary_names_of(conn, os.getpid()) if n.startswith(prefix)]


def checksum(cluster: LocalCluster, name: str) -> tuple[object, ...]:
    with cluster.connect(name) as conn:
        row = conn.execute(CHECKSUM).fetchone()
    assert row is not None
    return tuple(row)


def test_a_hand_out_is_a_ready_copy_equal_to_the_template_and_the_pool_refills_to_n(
    cluster: LocalCluster, template: tuple[str, tuple[object, ...]]
) -> None:
    name, rows = template
    pool = ClonePool(cluster, name, ahead=2).start()
    try:
        assert pool.wait_until_full(timeout=120)
        pooled = ours(cluster, databases.POOL_PREFIX)
        assert len(pooled) == 2
        with cluster.connect() as conn:
            allowed = conn.execute(
                "SELECT datname, datallowconn FROM pg_database WHERE datname = ANY(%s)", (pooled,)
            ).fetchall()
        assert sorted(allowed) == sorted((n, False) for n in pooled), "nobody may enter a copy before its hand-out"

        handed = pool.take()

        assert handed.startswith(databases.FRESH_PREFIX)
        assert (pool.handed_out_ready, pool.made_on_demand) == (1, 0)
        assert checksum(cluster, handed) == rows
        # The pool refills behind the test, and never holds more than two ahead.
        assert pool.wait_until_full(timeout=120)
        assert len(ours(cluster, databases.POOL_PREFIX)) == 2
        assert ours(cluster, databases.FRESH_PREFIX) == [handed]
        # A written copy is the test's alone: the next hand-out is the template again.
        with cluster.connect(handed) as conn:
            conn.execute("DELETE FROM items WHERE id <= 100")
        pool.give_back(handed)
        second = pool.take()
        assert checksum(cluster, second) == rows
        assert pool.handed_out_ready == 2
        pool.give_back(second)
        assert ours(cluster, databases.FRESH_PREFIX) == []
    finally:
        pool.close()
    assert ours(cluster, databases.POOL_PREFIX) == []
    assert ours(cluster, databases.FRESH_PREFIX) == []


def test_a_pool_of_zero_clones_on_demand_and_makes_nothing_ahead(
    cluster: LocalCluster, template: tuple[str, tuple[object, ...]]
) -> None:
    name, rows = template
    pool = ClonePool(cluster, name, ahead=0).start()
    try:
        handed = pool.take()
        assert (pool.handed_out_ready, pool.made_on_demand) == (0, 1)
        assert checksum(cluster, handed) == rows
        assert ours(cluster, databases.POOL_PREFIX) == []
        pool.give_back(handed)
    finally:
        pool.close()
    assert ours(cluster, databases.FRESH_PREFIX) == []


def test_the_disk_limit_holds_the_pool_back_until_a_copy_is_given_back(
    cluster: LocalCluster, template: tuple[str, tuple[object, ...]]
) -> None:
    name, rows = template
    with cluster.connect() as conn:
        others = sum(databases.our_sizes(conn).values())
        size = databases.size_of(conn, name)
    # Room for exactly one copy beside what this tool has on the server now.
    pool = ClonePool(cluster, name, ahead=3, limit_bytes=lambda _conn: others + size + size // 2).start()
    try:
        assert pool.wait_until_full(timeout=120)
        assert pool.held_back
        assert len(ours(cluster, databases.POOL_PREFIX)) == 1
        handed = pool.take()  # a rename: the copy still takes its room, so none is made beside it
        assert checksum(cluster, handed) == rows
        assert pool.wait_until_full(timeout=120)
        assert ours(cluster, databases.POOL_PREFIX) == []
        pool.give_back(handed)  # room again: the pool makes its one copy
        assert pool.wait_until_full(timeout=120)
        assert len(ours(cluster, databases.POOL_PREFIX)) == 1
    finally:
        pool.close()
    assert ours(cluster, databases.POOL_PREFIX) == []


def test_a_dead_processs_pool_copies_are_leftovers(cluster: LocalCluster, tmp_path: Path) -> None:
    """The pool's names carry the pid as the other temporary names do: the reaper's program and the next
    restore's drop_leftovers find them."""
    dead = f"{databases.POOL_PREFIX}999999999_0123abcd"
    assert databases._TEMPORARY.match(dead)
    with cluster.connect() as conn:
        databases.create(conn, dead)
        assert databases.temporary_names_of(conn, 999999999) == [dead]
        assert dead in databases.drop_leftovers(conn)
        assert not databases.exists(conn, dead)


def test_a_copy_gone_before_its_hand_out_is_replaced_by_a_clone(
    cluster: LocalCluster, template: tuple[str, tuple[object, ...]]
) -> None:
    name, rows = template
    pool = ClonePool(cluster, name, ahead=1).start()
    try:
        assert pool.wait_until_full(timeout=120)
        [pooled] = ours(cluster, databases.POOL_PREFIX)
        with cluster.connect() as conn:
            databases.drop(conn, pooled)  # another hand dropped it (a leftover sweep of a confused admin)

        handed = pool.take()

        assert (pool.handed_out_ready, pool.made_on_demand) == (0, 1)
        assert checksum(cluster, handed) == rows
        pool.give_back(handed)  # the connection is usable after the failed rename
    finally:
        pool.close()
    assert ours(cluster, databases.POOL_PREFIX) == []
    assert ours(cluster, databases.FRESH_PREFIX) == []


def test_closing_keeps_one_ready_copy_under_the_spares_name(
    cluster: LocalCluster, template: tuple[str, tuple[object, ...]]
) -> None:
    """A session whose tests took fresh_db copies gets its spare from the pool at the end: a rename of a copy
    made ahead (closed to connections, equal to the template), the others dropped; with nothing ready, False."""
    name, expected = template
    spare = f"{databases.SPARE_PREFIX}pooltest_{os.getpid()}"
    pool = ClonePool(cluster, name, ahead=2).start()
    assert pool.wait_until_full(timeout=120)
    assert pool.close(keep_as=spare) is True
    assert ours(cluster, databases.POOL_PREFIX) == []
    try:
        with cluster.connect() as conn:
            row = conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (spare,)).fetchone()
            assert row == (False,)  # closed, so it stays identical to its template until used
            databases.open_to_connections(conn, spare, spare + "_open")
        assert checksum(cluster, spare + "_open") == expected
    finally:
        with cluster.connect() as conn:
            databases.drop(conn, spare + "_open")
            databases.drop(conn, spare)
    empty = ClonePool(cluster, name, ahead=0).start()
    assert empty.close(keep_as=spare) is False


def test_closing_cancels_a_copy_under_way_instead_of_finishing_it(
    cluster: LocalCluster, template: tuple[str, tuple[object, ...]]
) -> None:
    """At a session's end a copy nobody will take is cancelled, not finished and then dropped: the filler's
    CREATE DATABASE waits here on a lock this test holds, and close() returns while it still holds it."""
    name, expected = template
    with cluster.connect() as blocker:
        blocker.autocommit = False  # the rename below stays uncommitted: it holds the template's lock
        blocker.execute(f'ALTER DATABASE "{name}" RENAME TO "{name}_held"')
        pool = ClonePool(cluster, name, ahead=1).start()
        with cluster.connect() as watcher:
            for _ in range(6000):  # until the filler's clone waits on the lock (a condition, not a sleep)
                waiting = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'CREATE DATABASE%%'"
                ).fetchone()
                if waiting == (1,):
                    break
                watcher.execute("SELECT pg_sleep(0.01)")
            else:
                pytest.fail("the pool's clone never started")
        closing = threading.Thread(target=pool.close)
        closing.start()
        closing.join(timeout=120)
        finished_waiting = closing.is_alive()
        blocker.rollback()  # lets a clone that was not cancelled finish, so the test ends either way
        closing.join()
        assert not finished_waiting, "close() waited for the copy under way instead of cancelling it"
        assert ours(cluster, databases.POOL_PREFIX) == []
    assert checksum_after_open(cluster, name) == expected


def test_a_cancel_that_lands_on_the_drop_of_a_pool_copy_is_survived(
    cluster: LocalCluster, template: tuple[str, tuple[object, ...]]
) -> None:
    """close() cancels the filler's statement from another thread, so a cancel meant for a clone can land on the
    DROP of a copy the filler finished after all (a CI run was left a dbsnap_pool_ copy that way): the DROP is sent
    again and the copy goes. Here the DROP waits on a lock this test holds, is cancelled, and must come back."""
    name, _expected = template
    copy = databases.temporary_name(databases.POOL_PREFIX)
    with cluster.connect() as conn:
        databases.clone(conn, name, copy)
    failures: list[BaseException] = []
    with cluster.connect() as blocker, cluster.connect() as dropper, cluster.connect() as watcher:
        blocker.autocommit = False  # the rename below stays uncommitted: the DROP waits on its lock
        blocker.execute(f'ALTER DATABASE "{copy}" RENAME TO "{copy}_held"')

        def drop() -> None:
            try:
                _drop_own(dropper, copy)
            except BaseException as exc:
                failures.append(exc)

        def waiting_drop() -> object:
            """The start of the dropper's DROP while it waits on the lock, else None."""
            row = watcher.execute(
                "SELECT query_start FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock' "
                "AND query LIKE 'DROP DATABASE%%'",
                (dropper.info.backend_pid,),
            ).fetchone()
            return row[0] if row else None

        dropping = threading.Thread(target=drop)
        dropping.start()
        first = None
        for _ in range(6000):  # until the DROP waits on the lock (a condition, not a sleep)
            if (first := waiting_drop()) is not None or not dropping.is_alive():
                break
            watcher.execute("SELECT pg_sleep(0.01)")
        assert first is not None, f"the DROP never waited on the lock: {failures}"
        dropper.cancel()
        again = None
        for _ in range(6000):  # until the DROP, sent again, waits on the lock again, or the dropper gave up
            again = waiting_drop()
            if (again is not None and again != first) or not dropping.is_alive():
                break
            watcher.execute("SELECT pg_sleep(0.01)")
        blocker.rollback()
        dropping.join()
    assert failures == [], "the cancelled DROP was not sent again"
    assert again is not None
    assert again != first, "the DROP was not sent again after its cancel"
    assert ours(cluster, databases.POOL_PREFIX) == []


def checksum_after_open(cluster: LocalCluster, template: str) -> tuple[object, ...]:
    """The template is intact: a clone of it holds its rows."""
    copy = f"{databases.FRESH_PREFIX}check_{os.getpid()}"
    with cluster.connect() as conn:
        databases.clone(conn, template, copy)
    try:
        return checksum(cluster, copy)
    finally:
        with cluster.connect() as conn:
            databases.drop(conn, copy)

"""pg_restore's progress: the step's bar counts the archive's table of contents (serially and with -j), and the
--verbose lines that move it stay out of a failure's message, which keeps pg_restore's own error."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.core.progress import Reporter
from pytest_dbsnap.dumps.restore import pg_restore_into, toc_entries
from pytest_dbsnap.errors import ToolError
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.local import LocalCluster

TABLES = 24


class RecordingReporter(Reporter):
    """A reporter that also keeps every count its bar was moved to."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: list[tuple[int, int, str | None]] = []

    def advance(self, done: int, total: int, unit: str | None = None) -> None:
        self.counts.append((done, total, unit))
        super().advance(done, total, unit)


@pytest.fixture(scope="module")
def archive(dumps_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A pg_dump -Fc of tables with data, indexes and constraints (a few entries each)."""
    source = "progress_source"
    with dumps_cluster.connect() as conn:
        databases.create_empty(conn, source)
    with dumps_cluster.connect(source) as conn:
        for number in range(TABLES):
            conn.execute(
                f"CREATE TABLE t{number:02d} (id int PRIMARY KEY, note text); "
                f"INSERT INTO t{number:02d} SELECT g, 'row ' || g FROM generate_series(1, 200) g; "
                f"CREATE INDEX ON t{number:02d} (note)"
            )
        conn.commit()
    path = tmp_path_factory.mktemp("progress") / "source.dump"
    conninfo, env = dumps_cluster.tool_args(source)
    subprocess.run([dumps_cluster.tools.path("pg_dump"), "-Fc", "-f", str(path), conninfo], env=env, check=True)
    yield path
    with dumps_cluster.connect() as conn:
        databases.drop(conn, source)


def listed_entries(cluster: LocalCluster, path: Path) -> int:
    listing = subprocess.run(
        [cluster.tools.path("pg_restore"), "--list", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return sum(1 for line in listing.splitlines() if line.strip() and not line.startswith(";"))


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_bar_counts_table_of_contents_entries_up_to_all_of_them(
    dumps_cluster: LocalCluster, archive: Path, jobs: int
) -> None:
    total = toc_entries(dumps_cluster, archive)
    assert total == listed_entries(dumps_cluster, archive)  # no ACL entries in this archive
    assert total >= 3 * TABLES  # a table, its data, its primary key and its index each
    target = f"progress_target_{jobs}"
    with dumps_cluster.connect() as conn:
        databases.create_empty(conn, target)
    reporter = RecordingReporter()
    reporter.step("pg_restore of source.dump")
    try:
        pg_restore_into(dumps_cluster, archive, target, jobs)
        status = reporter.status()
    finally:
        reporter.end()
        with dumps_cluster.connect() as conn:
            databases.drop(conn, target)
    done = [count for count, _total, _unit in reporter.counts]
    assert {(t, u) for _c, t, u in reporter.counts} == {(total, "entries")}
    assert done == sorted(done)  # only ever forward
    assert len(set(done)) > total // 2  # it moved entry by entry, not only at the end
    assert done[-1] == total
    assert status.endswith(f"[####################] {total}/{total} entries | {status.split(' | ', 1)[1]}")


def test_the_failure_message_keeps_the_error_and_leaves_out_the_progress_lines(
    dumps_cluster: LocalCluster, archive: Path
) -> None:
    target = "progress_conflict"
    with dumps_cluster.connect() as conn:
        databases.create_empty(conn, target)
    with dumps_cluster.connect(target) as conn:  # the last table of the archive exists already: pg_restore stops
        conn.execute(f"CREATE TABLE t{TABLES - 1:02d} (other int)")
        conn.commit()
    reporter = RecordingReporter()
    reporter.step("pg_restore of source.dump")
    try:
        with pytest.raises(ToolError) as failed:
            pg_restore_into(dumps_cluster, archive, target, 1)
    finally:
        reporter.end(failed=True)
        with dumps_cluster.connect() as conn:
            databases.drop(conn, target)
    message = str(failed.value)
    assert f'relation "t{TABLES - 1:02d}" already exists' in message
    assert "pg_restore: error:" in message
    assert "from TOC entry" in message  # --verbose's context for the error stays
    assert "pg_restore: creating" not in message
    assert "pg_restore: processing" not in message
    assert reporter.counts  # while the progress lines moved the bar
    assert reporter.counts[-1][0] >= TABLES - 1

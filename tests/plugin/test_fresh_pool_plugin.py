"""The fresh_db pool and the disk budget seen from a user's run (pytester, a subprocess, the local cluster): each
test's private database equals the restored dump (rows and md5), the pool never runs more than N ahead and leaves
nothing, a budget too small for a spare says so once, and `dbsnap list` shows what the store and the parked
cluster hold."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster

PYPROJECT = """\
[tool.dbsnap]
database = "app"
dumps_dir = "dumps"
migrate_command = "python -m refapp.migrate"
seed_command = "python -m refapp.seed --scale 60"
schema_version_query = "SELECT version_num FROM alembic_version"
fresh_db_pool = 2
disk_budget = "2x"
"""

TESTS = """
import os

import psycopg
import pytest

DIGEST = "SELECT count(*), md5(string_agg(id::text || name, ',' ORDER BY id)) FROM reality_nodes"


@pytest.mark.parametrize("number", range(4))
def test_private_copy_of_the_dump(fresh_db, db_dsn, number):
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        mine = conn.execute(DIGEST).fetchone()
        conn.execute("DELETE FROM reality_nodes")  # the next test's copy must not see this
        pooled = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE %s", (f"dbsnap\\\\_pool\\\\_{os.getpid()}\\\\_%",)
        ).fetchone()[0]
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute(DIGEST).fetchone() == mine
    assert mine[0] > 0
    assert pooled <= 2
"""


@pytest.fixture
def project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    for name in list(os.environ):
        if name.startswith("DBSNAP_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    cache = tmp_path_factory.getbasetemp() / "pg-cache"  # shared with the other server tests
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(cache))
    yield pytester.path
    settings = load_settings(project_root=pytester.path.resolve(), environ={})
    if settings.warm_key is not None:
        slot = LocalCluster(find_pg_tools(None), cache_dir=cache, warm_key=settings.warm_key).warm_slot
        assert slot is not None
        shutil.rmtree(slot, ignore_errors=True)


def test_pooled_copies_equal_the_dump_the_budget_warns_once_and_list_shows_the_disk(
    pytester: pytest.Pytester, project: Path
) -> None:
    pytester.makepyprojecttoml(PYPROJECT)
    pytester.makepyfile(test_pool=TESTS)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)

    result.assert_outcomes(passed=4)
    warnings = [line for line in result.stdout.lines if line.startswith("warning: the disk budget (2x the database")]
    assert len(warnings) == 1, result.stdout.str()
    assert "cannot hold a spare copy of the database" in warnings[0]
    assert "Raise disk_budget" in warnings[0]

    listed = subprocess.run(
        [sys.executable, "-m", "pytest_dbsnap.cli", "list"], cwd=project, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    store_line = [line for line in listed.stdout.splitlines() if line.startswith("disk: store ")]
    assert len(store_line) == 1
    assert " MB of dumps, " in store_line[0]
    parked = [line for line in listed.stdout.splitlines() if line.startswith("disk: parked cluster ")]
    assert len(parked) == 1, listed.stdout
    assert parked[0].endswith(" MB")


def test_under_xdist_the_workers_budget_warning_reaches_the_summary_once(
    pytester: pytest.Pytester, project: Path
) -> None:
    """Each xdist worker finds the same budget too small; the controller's summary says so once."""
    pytester.makepyprojecttoml(PYPROJECT)
    pytester.makepyfile(test_pool=TESTS)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", timeout=300)

    result.assert_outcomes(passed=4)
    warnings = [line for line in result.stdout.lines if line.startswith("warning: the disk budget (2x the database")]
    assert len(warnings) == 1, result.stdout.str()
    assert "cannot hold a spare copy of the database" in warnings[0]


def test_a_fresh_db_sessions_spare_is_a_pooled_copy_and_the_next_session_swaps_it_in(
    pytester: pytest.Pytester, project: Path
) -> None:
    """Tests that take fresh_db copies get no spare cloned beside their first copy; the pool's leftover copy
    becomes the spare at the end, and the next session's app database is that spare, renamed."""
    pytester.makepyprojecttoml(PYPROJECT.replace('disk_budget = "2x"\n', ""))
    pytester.makepyfile(test_pool=TESTS)
    # The first run generates the dump and writes the cluster snapshot, which holds the template alone.
    pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300).assert_outcomes(passed=4)
    second = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    second.assert_outcomes(passed=4)
    assert any("template clone" in line for line in second.stdout.lines if line.startswith("database: "))

    third = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "test_pool.py::test_private_copy_of_the_dump[0]", timeout=300
    )

    third.assert_outcomes(passed=1)
    [line] = [line for line in third.stdout.lines if line.startswith("database: ")]
    assert "spare swap" in line, third.stdout.str()


COPIES_ONLY = """
import psycopg


def test_copies_only(fresh_db):
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM reality_nodes").fetchone()[0] > 0
        app = conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'app'").fetchone()
    assert app == (0,), "the app database was made although no test used it"
"""

COPY_THEN_APP = """
import psycopg


def test_a_copy_first(fresh_db):
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'app'").fetchone() == (0,)


def test_then_the_app_database(db_dsn):
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM reality_nodes").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)  # migrated when made
"""


def test_the_app_database_is_made_only_when_a_test_uses_it(pytester: pytest.Pytester, project: Path) -> None:
    """A session whose tests take only fresh_db copies never clones (or migrates) the app database; one that
    reads db_dsn later gets it then, migrated, and both say so in the summary."""
    pytester.makepyprojecttoml(PYPROJECT.replace('disk_budget = "2x"\n', ""))
    pytester.makepyfile(test_copies=COPIES_ONLY)
    first = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)  # generates the dump
    first.assert_outcomes(passed=1)
    for run in range(2):  # twice: neither makes the app database, nor a spare for it at the end
        again = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
        again.assert_outcomes(passed=1)
        [line] = [line for line in again.stdout.lines if line.startswith("database: ")]
        assert "'app' not made: no test used it" in line, (run, line)
        assert "template clone" in line or "cluster snapshot" in line, (run, line)  # no spare was left to swap

    pytester.makepyfile(test_copies="")
    pytester.makepyfile(test_later=COPY_THEN_APP)
    later = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)

    later.assert_outcomes(passed=2)
    [line] = [line for line in later.stdout.lines if line.startswith("database: ")]
    assert "made when first used (" in line, line

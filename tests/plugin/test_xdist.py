"""The plugin under pytest-xdist (pytester, real processes): one server for the controller and its workers, a
database per worker, fresh_db isolation and cleanup, the smoke phases kept in one worker and in order, one dump
generation across workers, and a crashed worker. The server is a local cluster this module starts and hands to
the inner runs as an external DSN, so that its databases can be inspected after each run."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster

PROJECT = """\
[tool.dbsnap]
provider = "external"
dsn = "{dsn}"
database = "app"
dumps_dir = "{dumps_dir}"
migrate_command = "python -m refapp.migrate"
seed_command = "python -m refapp.seed --scale 60"
schema_version_query = "SELECT version_num FROM alembic_version"
"""

# Each smoke test writes its name and worker to smoke.log, so the order they ran in is on record.
PHASE = """\
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.smoke, pytest.mark.order({order})]


def record(name):
    with Path("smoke.log").open("a") as log:
        log.write(f"{{name}} {{os.environ['PYTEST_XDIST_WORKER']}}\\n")


def test_{letter}1(db_dsn):
    record("{letter}1")


def test_{letter}2(dbsnap_db):
    record("{letter}2")
"""

PROBE = "written-by-another-test"

# Every test writes a row into its fresh_db after checking that no other test's row is there, and records its
# worker, its worker's app database and its fresh database.
ISOLATION_TESTS = f"""\
import json
import os
from pathlib import Path

import psycopg
import pytest

COUNT = "SELECT count(*) FROM reality_nodes WHERE name = '{PROBE}'"


@pytest.mark.parametrize("number", range(6))
def test_private_database(fresh_db, db_dsn, number):
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        fresh = conn.execute("SELECT current_database()").fetchone()[0]
        seen_before = conn.execute(COUNT).fetchone()[0]
        conn.execute("INSERT INTO reality_nodes (kind, name, attributes, created_at) "
                     "VALUES ('universe', '{PROBE}', '{{}}', now())")
        seen_after = conn.execute(COUNT).fetchone()[0]
    with psycopg.connect(db_dsn) as conn:
        app = conn.execute("SELECT current_database()").fetchone()[0]
        in_app = conn.execute(COUNT).fetchone()[0]
    record = {{"worker": os.environ["PYTEST_XDIST_WORKER"], "app": app, "fresh": fresh,
              "seen_before": seen_before, "seen_after": seen_after, "in_app": in_app}}
    Path(f"record-{{number}}.json").write_text(json.dumps(record))
"""

CRASH_TESTS = """\
import os
from pathlib import Path

import pytest


def test_crashes_its_worker(fresh_db):
    Path("crash-fresh.txt").write_text(fresh_db.rsplit("/", 1)[-1])
    if Path("crash.flag").exists():
        os._exit(1)  # the worker dies mid-test, without teardown


@pytest.mark.parametrize("number", range(6))
def test_survivor(dbsnap_db, number):
    assert dbsnap_db.execute("SELECT count(*) FROM reality_nodes").fetchone()[0] > 0
"""

FRESH_DB_TESTS = """\
from pathlib import Path

import psycopg


def check_and_record(fresh_db, name):
    with psycopg.connect(fresh_db) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]
        nodes = conn.execute("SELECT count(*) FROM reality_nodes").fetchone()[0]
    Path(name).write_text(f"{database} {nodes}")


def test_fails(fresh_db):
    check_and_record(fresh_db, "failing.txt")
    assert False, "this test fails on purpose"


def test_passes(fresh_db):
    check_and_record(fresh_db, "passing.txt")
"""

# Each test checks its fresh_db against its worker's app database (rows and md5), empties it, and records how many
# copies its worker's pool held ahead at that moment.
POOL_TESTS = """\
import json
import os
from pathlib import Path

import psycopg
import pytest

DIGEST = "SELECT count(*), md5(string_agg(id::text || name, ',' ORDER BY id)) FROM reality_nodes"


@pytest.mark.parametrize("number", range(6))
def test_pooled_copy(fresh_db, db_dsn, number):
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        mine = conn.execute(DIGEST).fetchone()
        conn.execute("DELETE FROM reality_nodes")
        pooled = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE %s", (f"dbsnap\\\\_pool\\\\_{os.getpid()}\\\\_%",)
        ).fetchone()[0]
    with psycopg.connect(db_dsn) as conn:
        app = conn.execute(DIGEST).fetchone()
    record = {"pid": os.getpid(), "equal": list(mine) == list(app), "rows": mine[0], "pooled": pooled}
    Path(f"pool-{number}.json").write_text(json.dumps(record))
"""

VERBOSE_LINE = re.compile(r"^\[(?P<worker>gw\d+)\] \[\s*\d+%\] (?P<outcome>[A-Z]+) (?P<nodeid>\S+)")


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner runs must not see the caller's DBSNAP_* or DATABASE_URL settings."""
    for name in list(os.environ):
        if name.startswith("DBSNAP_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cache = tmp_path_factory.getbasetemp() / "pg-cache"  # shared with the other server tests
    cache.mkdir(exist_ok=True)
    with LocalCluster(find_pg_tools(None), cache_dir=cache).start() as started:
        assert isinstance(started, LocalCluster)
        yield started


@pytest.fixture(scope="module")
def shared_dumps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dump store for the runs that do not look at generation, so the seed runs once for them."""
    return tmp_path_factory.mktemp("xdist-dumps")


def write_project(pytester: pytest.Pytester, cluster: LocalCluster, dumps_dir: Path) -> None:
    pytester.makepyprojecttoml(PROJECT.format(dsn=cluster.dsn(), dumps_dir=dumps_dir))


def temporary_databases(cluster: LocalCluster) -> list[str]:
    """fresh_db clones (handed out or made ahead by a worker's pool) and restore staging databases on the server:
    none may outlive a run."""
    with cluster.connect() as conn:
        rows = conn.execute(
            r"SELECT datname FROM pg_database WHERE datname LIKE 'dbsnap\_test\_%' "
            r"OR datname LIKE 'dbsnap\_stage\_%' OR datname LIKE 'dbsnap\_pool\_%' ORDER BY datname"
        ).fetchall()
    return [str(row[0]) for row in rows]


def database_exists(cluster: LocalCluster, name: str) -> bool:
    with cluster.connect() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def test_workers_get_own_databases_and_the_smoke_phases_one_worker(
    pytester: pytest.Pytester, cluster: LocalCluster, tmp_path: Path
) -> None:
    dumps_dir = tmp_path / "dumps"  # empty: the run must generate, and only once across the workers
    write_project(pytester, cluster, dumps_dir)
    for order, letter in enumerate("abc", start=1):
        pytester.makepyfile(**{f"test_0{order}_{letter}": PHASE.format(order=order, letter=letter)})
    pytester.makepyfile(test_isolation=ISOLATION_TESTS)

    result = pytester.runpytest_subprocess("-n", "2", "-v", "-p", "no:cacheprovider", timeout=180)

    result.assert_outcomes(passed=12)
    # Isolation: each test's fresh database held none of the rows the other tests wrote (on either worker,
    # before or after it), and the worker's app database never saw them either.
    records = [json.loads(path.read_text()) for path in sorted(pytester.path.glob("record-*.json"))]
    assert len(records) == 6
    assert all(r["seen_before"] == 0 and r["seen_after"] == 1 and r["in_app"] == 0 for r in records), records
    assert len({r["fresh"] for r in records}) == 6
    assert all(r["fresh"].startswith("dbsnap_test_") for r in records)
    # Each worker works in its own app database, named after it.
    assert {r["worker"] for r in records} <= {"gw0", "gw1"}
    assert all(r["app"] == f"app_{r['worker']}" for r in records), records
    # The smoke phases ran in one worker, in phase order.
    smoke_log = [line.split() for line in (pytester.path / "smoke.log").read_text().splitlines()]
    assert [name for name, _worker in smoke_log] == ["a1", "a2", "b1", "b2", "c1", "c2"]
    assert len({worker for _name, worker in smoke_log}) == 1
    reported = [m for line in result.stdout.lines if (m := VERBOSE_LINE.match(line))]
    smoke_workers = {m["worker"] for m in reported if m["nodeid"].startswith("test_0")}
    assert smoke_workers == {smoke_log[0][1]}
    assert len([m for m in reported if m["nodeid"].startswith("test_0")]) == 6
    # One dump was generated across the workers; the other worker restored it.
    assert len(list((dumps_dir / "dev").glob("*.dump"))) == 1
    database_lines = [line for line in result.stdout.lines if re.match(r"^database gw\d+: ", line)]
    assert len(database_lines) == 2, result.stdout.str()
    assert len([line for line in database_lines if "generated in" in line]) == 1
    result.stdout.fnmatch_lines(["*= dbsnap =*"])
    result.stdout.re_match_lines([r"^ 1 a +passed +2 +0 +0 ", r"^ 2 b +passed +2 +0 +0 ", r"^ 3 c +passed +2 +0 +0 "])
    # Nothing temporary is left on the server: the fresh databases and the restore's staging databases.
    assert temporary_databases(cluster) == []
    assert database_exists(cluster, "app_gw0")
    assert database_exists(cluster, "app_gw1")


def test_fresh_db_is_made_before_the_test_and_dropped_after_it_pass_or_fail(
    pytester: pytest.Pytester, cluster: LocalCluster, shared_dumps: Path
) -> None:
    write_project(pytester, cluster, shared_dumps)
    pytester.makepyfile(test_fresh=FRESH_DB_TESTS)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)

    result.assert_outcomes(passed=1, failed=1)
    for record in ("failing.txt", "passing.txt"):
        name, nodes = (pytester.path / record).read_text().split()
        assert name.startswith("dbsnap_test_")
        assert int(nodes) > 0, "the fresh database is a clone of the restored dump"
        assert not database_exists(cluster, name), f"{name} outlived its test ({record})"
    assert temporary_databases(cluster) == []


def test_a_crashed_worker_leaves_the_others_results_and_the_next_run_passes(
    pytester: pytest.Pytester, cluster: LocalCluster, shared_dumps: Path
) -> None:
    write_project(pytester, cluster, shared_dumps)
    pytester.makepyfile(test_crash=CRASH_TESTS)
    (pytester.path / "crash.flag").touch()

    # A hang here (timeout) is pytest-xdist 3.8's loadgroup crash handling, which the plugin replaces.
    crashed = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", timeout=90)

    crashed.assert_outcomes(passed=6, failed=1)
    crashed.stdout.fnmatch_lines(["*worker 'gw*' crashed while running*test_crashes_its_worker*"])
    crashed.stdout.fnmatch_lines(["FAILED test_crash.py::test_crashes_its_worker*"])
    # Only one worker died: the test it died on was not handed to another worker to crash that one too.
    assert crashed.stdout.str().count("node down: Not properly terminated") == 1
    left_by_crash = (pytester.path / "crash-fresh.txt").read_text()

    (pytester.path / "crash.flag").unlink()
    again = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", timeout=90)

    again.assert_outcomes(passed=7)
    assert again.ret == pytest.ExitCode.OK
    # The crashed worker could not drop its fresh database; the next run's restore cleared it away.
    assert not database_exists(cluster, left_by_crash)
    assert temporary_databases(cluster) == []


def test_each_worker_fills_its_own_pool_and_leaves_nothing(
    pytester: pytest.Pytester, cluster: LocalCluster, shared_dumps: Path
) -> None:
    pytester.makepyprojecttoml(PROJECT.format(dsn=cluster.dsn(), dumps_dir=shared_dumps) + "fresh_db_pool = 2\n")
    pytester.makepyfile(test_pool=POOL_TESTS)

    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", timeout=180)

    result.assert_outcomes(passed=6)
    records = [json.loads(path.read_text()) for path in sorted(pytester.path.glob("pool-*.json"))]
    assert len(records) == 6
    # Every copy was the dump as restored, although the test before it on its worker emptied its own.
    assert all(r["equal"] and r["rows"] > 0 for r in records), records
    # Each worker's pool (named by the worker's pid) never ran more than two ahead.
    assert all(0 <= r["pooled"] <= 2 for r in records), records
    assert 1 <= len({r["pid"] for r in records}) <= 2
    assert temporary_databases(cluster) == []

"""The dump fixtures seen from a user's pytest run (pytester, one subprocess per run): the first run generates
and restores, later runs restore the same dump, --skip-dump-restore keeps the database, and a project that cannot
make a dump gets one paragraph saying how."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster

PYPROJECT = """\
[tool.dbsnap]
database = "app"
env = "dev"
dumps_dir = "dumps"
migrate_command = "python -m refapp.migrate"
{seed_line}
schema_version_query = "SELECT version_num FROM alembic_version"
fingerprint_inputs = ["seed-inputs"]
"""
SEED_LINE = 'seed_command = "python -m refapp.seed --scale 100"'

RESTORED_TESTS = """
from pathlib import Path

def test_the_seeded_rows_are_there(dbsnap_db, dbsnap_dump):
    assert dbsnap_db.execute("SELECT count(*) FROM reality_nodes").fetchone() == (100,)
    assert dbsnap_db.execute("SELECT version_num FROM alembic_version").fetchone() == (dbsnap_dump.schema_version,)
    assert dbsnap_dump.row_counts["public.reality_nodes"] == 100
    Path("dump-name.txt").write_text(dbsnap_dump.name)

def test_the_restore_replaced_what_an_earlier_run_wrote(dbsnap_db):
    assert dbsnap_db.execute("SELECT to_regclass('public.written_by_a_test')").fetchone() == (None,)

def test_write_a_row(dbsnap_db):
    dbsnap_db.execute("CREATE TABLE written_by_a_test (note text)")
    dbsnap_db.execute("INSERT INTO written_by_a_test VALUES ('from an earlier run')")
"""

KEPT_TESTS = """
def test_the_database_was_kept(dbsnap_db, dbsnap_database):
    assert dbsnap_database.method == "kept as it was"
    assert dbsnap_db.execute("SELECT note FROM written_by_a_test").fetchall() == [("from an earlier run",)]
"""

WRITE_TEST = """
def test_write_a_row(dbsnap_db):
    dbsnap_db.execute("CREATE TABLE written_by_a_test (note text)")
    dbsnap_db.execute("INSERT INTO written_by_a_test VALUES ('from an earlier run')")
"""

# A session that restored the dump drops its used app database before parking (issue 28: a parked cluster holds
# at most twice the database): what is left is the template and one spare, of equal size.
PARKED_TESTS = """
def test_the_parked_cluster_held_the_template_and_one_spare(dbsnap_db, dbsnap_database):
    assert dbsnap_database.method == "kept as it was"
    assert dbsnap_db.execute("SELECT to_regclass('public.written_by_a_test')").fetchone() == (None,)
    rows = dbsnap_db.execute(
        "SELECT datname, pg_database_size(oid) FROM pg_database "
        "WHERE datname NOT IN ('postgres', 'template0', 'template1') ORDER BY datname"
    ).fetchall()
    [app, spare, template] = rows
    assert app[0] == "app"
    assert spare[0].startswith("dbsnap_spare_") and template[0].startswith("dbsnap_tpl_")
    assert spare[1] <= template[1] * 1.05
"""

FRESH_TESTS = """
def test_a_new_database_was_created_and_migrated(dbsnap_db, dbsnap_database):
    assert dbsnap_database.method == "kept as it was"
    assert dbsnap_db.execute("SELECT to_regclass('public.written_by_a_test')").fetchone() == (None,)
    assert dbsnap_db.execute("SELECT count(*) FROM reality_nodes").fetchone() == (0,)
    assert dbsnap_db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs below must not see the caller's DBSNAP_* or DATABASE_URL."""
    for name in list(os.environ):
        if name.startswith("DBSNAP_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The pytester folder as a refapp project; its parked cluster is removed afterwards."""
    cache = tmp_path_factory.getbasetemp() / "pg-cache"  # shared with the other server tests
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(cache))
    (pytester.path / "seed-inputs").mkdir()
    (pytester.path / "seed-inputs" / "universe.txt").write_text("galaxies: spiral\n")
    yield pytester.path
    settings = load_settings(project_root=pytester.path.resolve(), environ={})
    if settings.warm_key is not None:
        slot = LocalCluster(find_pg_tools(None), cache_dir=cache, warm_key=settings.warm_key).warm_slot
        assert slot is not None
        shutil.rmtree(slot, ignore_errors=True)


def summary_line(result: pytest.RunResult) -> str:
    [line] = [line for line in result.stdout.lines if line.startswith("database: ")]
    return line


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=180)


def test_first_run_generates_later_runs_restore_and_skip_keeps_the_database(
    pytester: pytest.Pytester, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyprojecttoml(PYPROJECT.format(seed_line=SEED_LINE))
    pytester.makepyfile(test_restored=RESTORED_TESTS)
    store = DumpStore(project / "dumps")

    first = run(pytester)

    first.assert_outcomes(passed=3)
    [name] = store.names("dev")
    assert (project / "dump-name.txt").read_text() == name
    line = summary_line(first)
    assert line.startswith(f"database: dev/{name} -> 'app': generated in ")
    assert "(no dump yet), then " in line

    second = run(pytester)

    second.assert_outcomes(passed=3)
    assert store.names("dev") == [name], "the second run made another dump"
    line = summary_line(second)
    assert line.startswith(f"database: dev/{name} -> 'app': ")
    assert "generated" not in line
    assert any(method in line for method in ("spare swap", "template clone", "pg_restore")), line

    # The parked cluster of the last run holds the template and a spare, not the used app database (it was
    # dropped when parking): --skip-dump-restore creates it empty and migrates it.
    pytester.makepyfile(test_restored="")
    pytester.makepyfile(test_kept=PARKED_TESTS)
    kept = run(pytester, "--skip-dump-restore")

    kept.assert_outcomes(passed=1)
    assert summary_line(kept).startswith(f"database: dev/{name} -> 'app': kept as it was in ")

    # A database kept as it was is the user's: it is parked with the cluster, and the next such run keeps it.
    pytester.makepyfile(test_kept=KEPT_TESTS)
    pytester.makepyfile(test_write=WRITE_TEST)
    run(pytester, "--skip-dump-restore", "test_write.py").assert_outcomes(passed=1)
    run(pytester, "--skip-dump-restore", "test_kept.py").assert_outcomes(passed=1)

    # A cluster that starts from the pristine copy has no app database: it is created empty and migrated.
    monkeypatch.setenv("DBSNAP_WARM_CLUSTER", "false")
    pytester.makepyfile(test_kept="")
    pytester.makepyfile(test_write="")
    pytester.makepyfile(test_fresh=FRESH_TESTS)
    fresh = run(pytester, "--skip-dump-restore")

    fresh.assert_outcomes(passed=1)
    assert store.names("dev") == [name]


def _dbsnap(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_dbsnap.cli", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_switching_back_to_a_branch_restores_its_dump_without_seeding(pytester: pytest.Pytester, project: Path) -> None:
    """Change an input, run, change it back, run: the first dump is restored again, with no seeding, although
    `latest` is the second one."""
    pytester.makepyprojecttoml(PYPROJECT.format(seed_line=SEED_LINE))
    pytester.makepyfile(test_restored="def test_it(dbsnap_db):\n    assert dbsnap_db.execute('SELECT 1').fetchone()\n")
    store = DumpStore(project / "dumps")
    universe = project / "seed-inputs" / "universe.txt"

    run(pytester).assert_outcomes(passed=1)
    [main] = store.names("dev")
    universe.write_text("galaxies: spiral, elliptical\n")  # another branch
    branch = run(pytester)
    branch.assert_outcomes(passed=1)
    assert "generated in " in summary_line(branch)
    [_, other] = store.names("dev")
    assert store.latest_name("dev") == other

    universe.write_text("galaxies: spiral\n")  # back on the first branch
    fingerprint = _dbsnap(project, "fingerprint")
    assert fingerprint.returncode == 0, fingerprint.stderr
    assert fingerprint.stdout == f"{store.read_meta('dev', main).fingerprint}\n"  # alone on stdout
    listed = _dbsnap(project, "list", "--env", "dev")
    assert listed.returncode == 0, listed.stderr
    [main_line] = [line for line in listed.stdout.splitlines() if main in line]
    [other_line] = [line for line in listed.stdout.splitlines() if other in line]
    assert main_line.endswith("= working tree")
    assert main_line.startswith("  ")
    assert other_line.startswith("* ")
    assert not other_line.endswith("= working tree")

    back = run(pytester)

    back.assert_outcomes(passed=1)
    assert store.names("dev") == [main, other], "switching back seeded a new dump"
    line = summary_line(back)
    assert line.startswith(f"database: dev/{main} -> 'app': the earlier dump matching the working tree "), line
    assert "(latest is stale: seed-inputs/universe.txt changed)" in line
    assert "generated" not in line


def test_no_dump_and_no_seed_command_fails_the_fixture_with_one_paragraph(
    pytester: pytest.Pytester, project: Path
) -> None:
    pytester.makepyprojecttoml(PYPROJECT.format(seed_line=""))
    pytester.makepyfile(test_restored=RESTORED_TESTS)

    result = run(pytester, "-k", "seeded_rows")

    result.assert_outcomes(errors=1, deselected=2)
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output
    # The error section holds the message alone on its line; the short summary repeats it after the test id
    # (in full or cut to the terminal's width, depending on where the run happens).
    [message] = [line for line in result.stdout.lines if line.startswith("pytest-dbsnap: could not prepare")]
    assert message.startswith("pytest-dbsnap: could not prepare the app database: There is no dump of environment ")
    assert f"'dev' in {project / 'dumps'}, and no seed_command is configured" in message
    assert "`dbsnap generate --env dev`" in message
    assert "--skip-dump-restore" in message
    assert not (project / "dumps" / "dev").exists()
    assert not (project / "dump-name.txt").exists()


def test_a_developers_database_url_is_never_restored_over(
    pytester: pytest.Pytester, project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The issue's reproduction: DATABASE_URL names the developer's own `app`, which is also the project's
    database. A plain run must not touch it; pointed at its server, the restore refuses until told it may."""
    cache = tmp_path_factory.getbasetemp() / "pg-cache"
    with LocalCluster(find_pg_tools(None), cache_dir=cache).start() as developers:
        assert isinstance(developers, LocalCluster)
        with developers.connect() as conn:
            conn.execute("CREATE DATABASE app")
        with developers.connect("app") as conn:
            conn.execute("CREATE TABLE customers (name text)")
            conn.execute("INSERT INTO customers VALUES ('ada'), ('grace'), ('edsger')")

        def customers() -> object:
            with developers.connect("app") as conn:
                return conn.execute("SELECT count(*) FROM customers").fetchone()

        monkeypatch.setenv("DATABASE_URL", developers.dsn("app"))
        pytester.makepyprojecttoml(PYPROJECT.format(seed_line=SEED_LINE))
        pytester.makepyfile(test_restored=RESTORED_TESTS)

        plain = run(pytester, "-q")
        plain.assert_outcomes(passed=3)
        assert customers() == (3,)

        pointed = run(pytester, f"--dbsnap-dsn={developers.dsn('postgres')}", "-k", "seeded_rows")
        pointed.assert_outcomes(errors=1, deselected=2)
        [message] = [line for line in pointed.stdout.lines if line.startswith("pytest-dbsnap: could not prepare")]
        assert f"Refusing to replace the database 'app' on external PostgreSQL at 127.0.0.1:{developers.port}" in (
            message
        )
        assert "--dbsnap-replace-database" in message
        assert customers() == (3,)

        allowed = run(pytester, f"--dbsnap-dsn={developers.dsn('postgres')}", "--dbsnap-replace-database")
        allowed.assert_outcomes(passed=3)
        with developers.connect("app") as conn:
            assert conn.execute("SELECT to_regclass('public.customers')").fetchone() == (None,)

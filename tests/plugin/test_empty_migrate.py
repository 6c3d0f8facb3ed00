"""A migrate command that exits 0 but leaves the database it was given empty (the app migrated another database)
is said: in a session's terminal summary (under -q too) and HTML report, and by `dbsnap generate`, naming the
variables the command was given. A real local cluster, real commands."""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The app's migrate reads its own variable, which nobody sets here: it "migrates" a SQLite file of its own.
MIGRATE = """\
import os, sqlite3
sqlite3.connect(os.environ.get("MY_APP_DATABASE", "elsewhere.sqlite3")).execute("CREATE TABLE IF NOT EXISTS t (x)")
"""

PYPROJECT = """
[tool.dbsnap]
database = "app"
dumps_dir = "dumps"
warm_cluster = false
migrate_command = "python migrate.py"
seed_command = "python -c pass"

[tool.dbsnap.env]
APP_DB_URL = "{database_url}"
APP_DB_NAME = "{database}"
"""

TEST = """
def test_the_database_is_there(dbsnap_database):
    assert dbsnap_database.database == "app"
"""

# The parts of the warning that matter: what happened, the variables given, the likely cause.
SAYS = ("exited 0 but left", "with no table, view or sequence", "DATABASE_URL and, from [tool.dbsnap.env], "
        "APP_DB_NAME and APP_DB_URL", "probably reads its database from somewhere else")  # fmt: skip


@pytest.fixture
def project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    for name in list(os.environ):
        if name.startswith(("DBSNAP_", "DJANGO_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    cache = tmp_path_factory.getbasetemp() / "pg-cache"  # shared with the other server tests
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(cache))
    pytester.makepyprojecttoml(PYPROJECT)
    (pytester.path / "migrate.py").write_text(MIGRATE)
    pytester.makepyfile(test_app=TEST)
    return pytester.path


def _warning_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("warning: the migrate command")]


def test_a_session_warns_in_the_summary_and_the_report(pytester: pytest.Pytester, project: Path) -> None:
    result = pytester.runpytest_subprocess(
        "-q", "-p", "no:cacheprovider", "--html=report.html", "--self-contained-html", timeout=180
    )
    result.assert_outcomes(passed=1)
    [warning] = _warning_lines(result.stdout.str())
    assert "(python migrate.py)" in warning
    assert "the new dev database" in warning  # generation migrated a new database, which stayed empty
    for part in SAYS:
        assert part in warning
    assert (project / "elsewhere.sqlite3").is_file()  # where the app did migrate
    report = html.unescape((project / "report.html").read_text())  # pytest-html keeps its data as escaped JSON
    assert "dbsnap warning 1" in report
    assert warning.removeprefix("warning: ") in report.replace("\\", "")

    # The next session restores the (empty) dump and migrates 'app': still empty, still said.
    again = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=180)
    again.assert_outcomes(passed=1)
    [warning] = _warning_lines(again.stdout.str())
    assert "left database 'app' with no table" in warning


def test_a_migrate_that_reaches_the_database_says_nothing(pytester: pytest.Pytester, project: Path) -> None:
    (project / "migrate.py").write_text(
        "import os, psycopg\n"
        "with psycopg.connect(os.environ['APP_DB_URL']) as conn:\n"
        "    conn.execute('CREATE TABLE IF NOT EXISTS t (x int)')\n"
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=180)
    result.assert_outcomes(passed=1)
    assert _warning_lines(result.stdout.str()) == []
    assert "migrate command" not in result.stdout.str()


def test_dbsnap_generate_prints_the_warning(project: Path) -> None:
    dbsnap = shutil.which("dbsnap", path=str(Path(sys.executable).parent))
    assert dbsnap is not None
    finished = subprocess.run(
        [dbsnap, "generate"], cwd=project, capture_output=True, text=True, timeout=180, check=False
    )
    assert finished.returncode == 0, finished.stderr
    [warning] = _warning_lines(finished.stderr)
    for part in SAYS:
        assert part in warning
    assert finished.stdout.startswith("dev/")  # the dump was still made, as the command asked


def test_a_schema_query_that_then_fails_is_explained_by_the_empty_migrate(project: Path) -> None:
    """With a schema_version_query the generation fails on the missing table: the message leads with the cause."""
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('seed_command = "python -c pass"\n', 'seed_command = "python -c pass"\n'
                                      'schema_version_query = "SELECT version FROM schema_version"\n')
    )  # fmt: skip
    dbsnap = shutil.which("dbsnap", path=str(Path(sys.executable).parent))
    assert dbsnap is not None
    finished = subprocess.run(
        [dbsnap, "generate"], cwd=project, capture_output=True, text=True, timeout=180, check=False
    )
    assert finished.returncode != 0
    message = finished.stderr
    assert "Traceback" not in message
    assert "The migrate command (python migrate.py) exited 0 but left the new dev database" in message
    assert message.index("exited 0 but left") < message.index("schema_version_query")

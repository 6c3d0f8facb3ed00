"""Fixture names: the plugin's neither shadow nor are shadowed by pytest-django's (a project may run both), and a
phase whose tests were all skipped says "skipped", never "passed"."""

from __future__ import annotations

import re

import pytest

pytest_plugins = ["pytester"]

_FIXTURE_LINE = re.compile(r"^(?P<name>\w+)(?: \[\w+ scope\])? -- (?P<where>\S+)")


def _fixtures_by_origin(output: str) -> dict[str, set[str]]:
    """{"dbsnap": names, "django": names} from `pytest --fixtures -v` (each line names the file defining it)."""
    found: dict[str, set[str]] = {"dbsnap": set(), "django": set()}
    for line in output.splitlines():
        match = _FIXTURE_LINE.match(line)
        if match is None:
            continue
        where = match["where"].replace("\\", "/")
        if "pytest_dbsnap/" in where:
            found["dbsnap"].add(match["name"])
        elif "pytest_django/" in where:
            found["django"].add(match["name"])
    return found


def test_no_fixture_name_is_shared_with_pytest_django(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_django")
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "pytest_django", "--fixtures", "-v")
    found = _fixtures_by_origin(result.stdout.str())
    # Both plugins were seen, so an empty intersection means something.
    assert {"dbsnap_db", "fresh_db", "pg_server", "dbsnap_database"} <= found["dbsnap"]
    assert {"db", "transactional_db", "django_db_setup", "live_server"} <= found["django"]
    assert found["dbsnap"] & found["django"] == set()
    assert "db" not in found["dbsnap"]


def test_dbsnap_db_reaches_the_plugin_with_pytest_django_loaded(pytester: pytest.Pytester) -> None:
    """The plugin's connection fixture is its own, whatever pytest-django's `db` does without Django settings."""
    pytest.importorskip("pytest_django")
    pytester.makepyfile(
        test_which="""
from pytest_dbsnap.plugin import fixtures

def test_which(request):
    defs = request._fixturemanager.getfixturedefs("dbsnap_db", request.node)
    assert defs[-1].func.__module__ == fixtures.__name__
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "pytest_django")
    result.assert_outcomes(passed=1)


def test_a_phase_whose_tests_were_all_skipped_is_skipped(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_01_first="""
import pytest

pytestmark = pytest.mark.smoke

def test_runs():
    assert True
""",
        test_02_second="""
import pytest

pytestmark = pytest.mark.smoke

@pytest.fixture
def unavailable():
    pytest.skip("no Django settings")

def test_needs_it(unavailable):
    assert False

def test_skips_itself():
    pytest.skip("not here")
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.re_match_lines([r"^ *1 first +passed +1 +0 +0 ", r"^ *2 second +skipped +0 +0 +2 "])

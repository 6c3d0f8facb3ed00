"""Strict projects: with warnings as errors and without pytest-xdist, collecting smoke phases must work, and
every mark the plugin puts on items is registered."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SMOKE_AND_PLAIN = """
import pytest

pytestmark = pytest.mark.smoke


def test_phase_runs():
    assert True
"""


@pytest.fixture(autouse=True)
def _strict_project(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = --strict-markers\nfilterwarnings = error\n")
    pytester.makepyfile(test_01_environment=SMOKE_AND_PLAIN, test_plain="def test_plain():\n    assert True\n")


def test_without_xdist_smoke_phases_collect_and_run_with_warnings_as_errors(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("-p", "no:xdist", "-W", "error", "-p", "no:cacheprovider")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=2)


def test_with_xdist_the_smoke_group_mark_is_registered(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    result = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider", "--markers")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["@pytest.mark.xdist_group*"])
    run = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider")
    run.assert_outcomes(passed=2)

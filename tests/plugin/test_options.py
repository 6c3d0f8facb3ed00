"""The plugin seen from a user's pytest run (pytester): its options, its errors, its header, its server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FLAGS = ("--db-provider", "--dbsnap-dsn", "--dump-env", "--skip-dump-restore", "--skip-frontend", "--regenerate-dump")
GROUP_TITLE = "pytest-dbsnap: seeded PostgreSQL and the app stack:"

QUERY_TEST = """
from pathlib import Path

def test_query(pg_server):
    with pg_server.connect() as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    Path("server.txt").write_text(f"{pg_server.provider} {pg_server.folder}")
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs below must not see the caller's DBSNAP_* or DATABASE_URL."""
    for name in list(os.environ):
        if name.startswith("DBSNAP_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.getbasetemp() / "pg-cache"  # shared with the other server tests
    cache.mkdir(exist_ok=True)
    return cache


def error_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stderr.lines if line.strip()]


def test_help_lists_the_flags_in_the_dbsnap_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == pytest.ExitCode.OK
    lines = result.stdout.lines
    start = lines.index(GROUP_TITLE)
    end = lines.index("", start)
    group = [line.strip() for line in lines[start + 1 : end]]
    for flag in FLAGS:
        assert any(line.startswith(flag) for line in group), f"{flag} is not in the dbsnap group"


@pytest.mark.parametrize(
    ("argument", "flag", "shown", "accepted"),
    [
        ("--db-provider=kubernetes", "--db-provider", "'kubernetes'", "auto, local, docker, external"),
        ("--dump-env=a b", "--dump-env", "'a b'", "letters, digits"),
    ],
    ids=["provider", "dump-env"],
)
def test_bad_flag_value_is_a_one_paragraph_usage_error(
    pytester: pytest.Pytester, argument: str, flag: str, shown: str, accepted: str
) -> None:
    pytester.makepyfile("def test_never_runs(): pass")
    result = pytester.runpytest(argument)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    [message] = error_lines(result)
    assert message.startswith("ERROR: pytest-dbsnap: Setting ")
    assert f"the command-line flag {flag}" in message
    assert shown in message
    assert accepted in message
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert "test session starts" not in result.stdout.str(), "the run must stop before collecting"


def test_unknown_pyproject_key_is_a_one_paragraph_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml('[tool.dbsnap]\nprovidr = "local"\n')
    pytester.makepyfile("def test_never_runs(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    [message] = error_lines(result)
    assert message.startswith("ERROR: pytest-dbsnap: [tool.dbsnap] in ")
    assert str(pytester.path / "pyproject.toml") in message
    assert "unknown key(s) providr" in message
    assert "accepted keys: provider," in message
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_bad_environment_value_is_a_usage_error_naming_the_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBSNAP_SKIP_FRONTEND", "perhaps")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    [message] = error_lines(result)
    assert "the environment variable DBSNAP_SKIP_FRONTEND has the value 'perhaps'" in message


@pytest.mark.parametrize(
    ("arguments", "environ", "header"),
    [
        ((), {}, "dbsnap: provider local (no DSN and no compose file, so the embedded cluster); *"),
        (("--db-provider=local",), {}, "dbsnap: provider local (set by the command line); *"),
        (
            (),
            {"DBSNAP_DSN": "host=/nonexistent user=u"},
            "dbsnap: provider external (a DSN was given by the environment); *",
        ),
        (
            ("--dump-env=staging",),
            {},
            "dbsnap: provider local (*); database 'app'; dump env 'staging' (the command line); dumps in *",
        ),
        (
            (),
            {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/app"},
            "dbsnap: DATABASE_URL is set but not used: the server comes only from --dbsnap-dsn, DBSNAP_DSN or *",
        ),
    ],
    ids=["auto", "flag", "dsn", "dump-env", "database-url-ignored"],
)
def test_report_header_shows_the_provider_and_why(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    arguments: tuple[str, ...],
    environ: dict[str, str],
    header: str,
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    pytester.makepyprojecttoml("[tool.dbsnap]\n")
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest(*arguments)
    result.stdout.fnmatch_lines([header])
    assert result.ret == pytest.ExitCode.OK


def test_an_unconfigured_project_gets_one_idle_line_and_no_probe(pytester: pytest.Pytester) -> None:
    """Installed in a project without [tool.dbsnap] and given no option, the plugin neither picks a provider nor
    looks for PostgreSQL programs: its header is one line and the run stays as quick as without it."""
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["dbsnap: idle (no ?tool.dbsnap? in pyproject.toml and no dbsnap option)*"])
    result.stdout.no_fnmatch_line("dbsnap: provider*")
    result.stdout.no_fnmatch_line("dbsnap: PostgreSQL*")
    assert result.ret == pytest.ExitCode.OK


def test_a_configured_run_whose_tests_need_no_server_never_loads_psycopg(pytester: pytest.Pytester) -> None:
    """The header names the provider and the programs without psycopg: a configured project's unit tests (no
    fixture of ours) pay for no database driver, in a subprocess where nothing else has imported it."""
    pytester.makepyprojecttoml("[tool.dbsnap]\n")
    pytester.makepyfile(
        "import sys\n\ndef test_no_driver_was_loaded():\n    assert 'psycopg' not in sys.modules, 'psycopg loaded'\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["dbsnap: provider local (*", "dbsnap: PostgreSQL server and client programs: *"])
    result.assert_outcomes(passed=1)


def test_pg_server_fixture_gives_a_server_to_query_and_stops_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pg_cache: Path
) -> None:
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(pg_cache))
    pytester.makepyfile(QUERY_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    provider, folder = (pytester.path / "server.txt").read_text().split(" ", 1)
    assert provider == "local"
    assert folder.startswith("/")
    assert not Path(folder).exists(), "the session's cluster folder outlived the session"


def test_external_provider_without_dsn_fails_the_fixture_with_one_paragraph(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(QUERY_TEST)
    result = pytester.runpytest("--db-provider=external")
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    output = result.stdout.str()
    assert "Traceback" not in output + result.stderr.str()
    # The error section holds the message alone on its line; the short summary repeats it after the test id.
    [message] = [line for line in result.stdout.lines if line.startswith("pytest-dbsnap: could not get")]
    assert message.endswith(
        "could not get a PostgreSQL server: The external provider needs a DSN: pass --dbsnap-dsn, set "
        "DBSNAP_DSN, or set dsn in [tool.dbsnap] (DATABASE_URL is not read, so that the database your app uses "
        "is never replaced by accident)."
    )
    assert not (pytester.path / "server.txt").exists()

"""pytest hooks and fixtures: thin wiring of settings, servers, dumps and services (the pytest11 entry point)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.errors import DbsnapError
from pytest_dbsnap.postgres import Server, choose_provider, start_server
from pytest_dbsnap.settings import OPTIONS, Settings, load_settings

SETTINGS_KEY = pytest.StashKey[Settings]()
PROVIDER_KEY = pytest.StashKey[tuple[str, str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dbsnap", "pytest-dbsnap: seeded PostgreSQL and the app stack")
    for option in OPTIONS:
        if option.flag and option.flag_is_switch:
            group.addoption(option.flag, dest=option.dest, action="store_const", const=True, default=None,
                            help=option.help)
        elif option.flag:
            group.addoption(option.flag, dest=option.dest, default=None, metavar=option.key.upper(),
                            help=f"{option.help} (default: {option.default})")
        if option.negative_flag:
            group.addoption(option.negative_flag, dest=option.dest, action="store_const", const=False,
                            default=None, help=f"do not {option.help}")
        parser.addini(option.ini_name, f"pytest-dbsnap: {option.help}", type="string", default=None)


def build_settings(config: pytest.Config) -> Settings:
    """Settings from pyproject, ini, environment and flags; a bad value stops the run with one paragraph."""
    root = Path(config.rootpath)
    pyproject = root / "pyproject.toml"
    ini = {o.key: (config.getini(o.ini_name) or None) for o in OPTIONS}
    cli = {o.key: config.getoption(o.dest, default=None) for o in OPTIONS if o.flag or o.negative_flag}
    try:
        return load_settings(project_root=root, pyproject=pyproject if pyproject.is_file() else None,
                             ini=ini, cli=cli)
    except DbsnapError as exc:
        raise pytest.UsageError(f"pytest-dbsnap: {exc}") from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "smoke: an ordered end-to-end smoke phase of pytest-dbsnap")
    config.stash[SETTINGS_KEY] = build_settings(config)


def _provider(config: pytest.Config) -> tuple[str, str]:
    if PROVIDER_KEY not in config.stash:
        config.stash[PROVIDER_KEY] = choose_provider(config.stash[SETTINGS_KEY])
    return config.stash[PROVIDER_KEY]


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash[SETTINGS_KEY]
    provider, why = _provider(config)
    return [
        f"dbsnap: provider {provider} ({why}); database {settings.database!r}; dump env {settings.env!r} "
        f"({settings.source_of('env')}); dumps in {settings.dumps_dir}",
    ]


@pytest.fixture(scope="session")
def dbsnap_settings(pytestconfig: pytest.Config) -> Settings:
    """The session's settings; override in conftest.py to build your own."""
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config, dbsnap_settings: Settings) -> Iterator[Server]:
    """A running PostgreSQL for the session, stopped at the end (an external server is left running)."""
    try:
        server = start_server(dbsnap_settings, _provider(pytestconfig)[0])
    except DbsnapError as exc:
        pytest.fail(f"pytest-dbsnap could not get a PostgreSQL server: {exc}", pytrace=False)
    with server:
        yield server

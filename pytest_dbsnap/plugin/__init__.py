"""The pytest11 entry point: options, settings and the hooks that wire the plugin's modules.

Importing it loads pytest, the option table and the plugin's own small modules, nothing more: psycopg, httpx,
Playwright, boto3 and the session machinery load inside the fixtures and hooks that use them, so a run that never
asks for a database pays (almost) nothing for the plugin being installed.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.config.options import OPTIONS
from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.core import reaper
from pytest_dbsnap.errors import DbsnapError
from pytest_dbsnap.plugin import browser, fixtures, report, signals, smoke, xdist
from pytest_dbsnap.plugin.smoke import PhaseBook
from pytest_dbsnap.plugin.stash import OWN_CHECKS_KEY, PHASES_KEY, REAPER_KEY, SERVICES_KEY, SETTINGS_KEY


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # The fixtures and the hooks of each concern live beside them: phase fail-fast, reports, pytest-xdist, the
    # browser checks. Registered here rather than through pytest_plugins because this module imports them already
    # (pytest would warn that it cannot rewrite their asserts).
    for module in (fixtures, smoke, report, xdist, signals, browser):
        if not pluginmanager.is_registered(module):
            pluginmanager.register(module, f"dbsnap.{module.__name__.rsplit('.', 1)[-1]}")
    group = parser.getgroup("dbsnap", "pytest-dbsnap: seeded PostgreSQL and the app stack")
    for option in OPTIONS:
        if option.flag and option.flag_is_switch:
            group.addoption(
                option.flag, dest=option.dest, action="store_const", const=True, default=None, help=option.help
            )
        elif option.flag:
            group.addoption(
                option.flag,
                dest=option.dest,
                default=None,
                metavar=option.key.upper(),
                help=option.help if option.default is None else f"{option.help} (default: {option.default})",
            )
        if option.negative_flag:
            group.addoption(
                option.negative_flag,
                dest=option.dest,
                action="store_const",
                const=False,
                default=None,
                help=f"do not {option.help}",
            )
        parser.addini(option.ini_name, f"pytest-dbsnap: {option.help}", type="string", default=None)


def build_settings(config: pytest.Config) -> Settings:
    """Settings from pyproject, ini, environment and flags; a bad value stops the run with one paragraph."""
    root = Path(config.rootpath)
    pyproject = root / "pyproject.toml"
    ini = {o.key: (config.getini(o.ini_name) or None) for o in OPTIONS}
    cli = {o.key: config.getoption(o.dest, default=None) for o in OPTIONS if o.flag or o.negative_flag}
    try:
        return load_settings(project_root=root, pyproject=pyproject if pyproject.is_file() else None, ini=ini, cli=cli)
    except DbsnapError as exc:
        raise pytest.UsageError(f"pytest-dbsnap: {exc}") from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "smoke: an ordered end-to-end smoke phase of pytest-dbsnap (a failed phase skips the later ones)"
    )
    settings = config.stash[SETTINGS_KEY] = build_settings(config)
    config.stash[SERVICES_KEY] = {}
    config.stash[PHASES_KEY] = PhaseBook()
    # The session's watchdog (one per process: under xdist the controller's owns the server, each worker's its
    # services and restores). It starts with the first thing registered, so a run that starts nothing has none.
    config.stash[REAPER_KEY] = reaper.install(reaper.Reaper(settings.logs_dir / "reaper.log"))
    # After pytest-django (an entry point too), so that its django_db_setup is overridden by ours.
    from pytest_dbsnap.plugin import django as djangodb

    djangodb.maybe_register(config, settings)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """After everything is stopped (the xdist controller stops its server at sessionfinish, or at its own
    unconfigure when the session ended early)."""
    watchdog = config.stash.get(REAPER_KEY, None)
    if watchdog is not None:
        reaper.uninstall(watchdog)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> Generator[None, None, None]:
    """A run that selects smoke in a project with [tool.dbsnap] gets the plugin's own checks, first in each phase,
    so a project with no test files still has a whole suite. A wrapper, so that they are there before any other
    plugin looks at the items (-m deselects, pytest-order sorts, the xdist smoke group is given)."""
    from pytest_dbsnap.plugin.checks import make_items, smoke_selected

    settings = config.stash[SETTINGS_KEY]
    if settings.has_table and smoke_selected(config):
        own = make_items(session, settings)
        items[:0] = own
        config.stash[OWN_CHECKS_KEY] = len(own)
    return (yield)


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    """pytest's "collected N items" counts test files only; say what the plugin added."""
    added = config.stash.get(OWN_CHECKS_KEY, 0)
    if not added:
        return []
    return [f"dbsnap: {added} checks of its own joined this smoke run (built-ins and [[tool.dbsnap.checks]])"]

"""pytest hooks and fixtures: thin wiring of settings, servers, dumps and services (the pytest11 entry point)."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from pytest_dbsnap import parallel, reaper, report, signals, smoke
from pytest_dbsnap.errors import DbsnapError, storage_error
from pytest_dbsnap.parallel import attached_server
from pytest_dbsnap.postgres import Server, start_server, watch_server
from pytest_dbsnap.report import progress_reporter, publish_facts
from pytest_dbsnap.settings import OPTIONS, ServiceSettings, Settings, load_settings
from pytest_dbsnap.smoke import PhaseBook
from pytest_dbsnap.stash import (
    OUTCOME_KEY,
    OWN_CHECKS_KEY,
    PHASES_KEY,
    REAPER_KEY,
    SERVER_KEY,
    SERVICES_KEY,
    SETTINGS_KEY,
    provider_choice,
)

if TYPE_CHECKING:
    import httpx
    import psycopg

    from pytest_dbsnap.dumps.meta import DumpMeta
    from pytest_dbsnap.services import Service
    from pytest_dbsnap.session import DatabaseOutcome

# The frontend's browser checks (the frontend_page fixture and its report extras) live in their own module.
pytest_plugins = ["pytest_dbsnap.browser_plugin"]


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # The hooks of each concern live beside it: phase fail-fast, reports, pytest-xdist. They are registered
    # here rather than through pytest_plugins because this module imports them already (pytest would warn that
    # it cannot rewrite their asserts).
    for module in (smoke, report, parallel, signals):
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
    from pytest_dbsnap import djangodb

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
    from pytest_dbsnap.checks.items import make_items, smoke_selected

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


def _fail(what: str, exc: DbsnapError) -> NoReturn:
    """A setup failure the user can fix: the message only, no traceback into our internals."""
    # `from None`: pytest shows the chained exceptions even with pytrace=False, which would repeat the
    # message (and mirakuru's) two more times around a "During handling..." line.
    raise pytest.fail.Exception(f"pytest-dbsnap: {what}: {exc}", pytrace=False) from None


def _storage_or_raise(exc: OSError) -> DbsnapError:
    """A full or read-only disk is the user's to fix (one paragraph); any other OSError is a bug."""
    converted = storage_error(exc)
    if converted is None:
        raise exc
    return converted


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dbsnap_settings(pytestconfig: pytest.Config) -> Settings:
    """The session's settings; override in conftest.py to build your own."""
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config, dbsnap_settings: Settings) -> Iterator[Server]:
    """A running PostgreSQL for the session, stopped at the end (an external server is left running)."""
    attached = attached_server(pytestconfig)
    if attached is not None:
        pytestconfig.stash[SERVER_KEY] = attached
        forget = watch_server(attached)  # this worker's temporary databases on the controller's server
        yield attached
        forget()
        return
    progress = progress_reporter(pytestconfig)
    progress.step(f"starting PostgreSQL ({provider_choice(pytestconfig)[0]})")
    try:
        server = start_server(dbsnap_settings, provider_choice(pytestconfig)[0])
    except DbsnapError as exc:
        progress.end(failed=True)
        _fail("could not get a PostgreSQL server", exc)
    except OSError as exc:
        progress.end(failed=True)
        _fail("could not get a PostgreSQL server", _storage_or_raise(exc))
    finally:
        progress.end()
    pytestconfig.stash[SERVER_KEY] = server
    forget = watch_server(server)
    server.version  # noqa: B018 - read while it runs: the report is written after the server is gone
    try:
        with server:
            yield server
    finally:
        forget()


@pytest.fixture(scope="session")
def dbsnap_database(
    pytestconfig: pytest.Config, dbsnap_settings: Settings, pg_server: Server
) -> Iterator[DatabaseOutcome]:
    """The app database, restored from the latest dump of --dump-env (generated first when missing or stale)."""
    from pytest_dbsnap.session import prepare_database

    progress = progress_reporter(pytestconfig)
    progress.step(f"preparing {dbsnap_settings.database!r} from {dbsnap_settings.env}")
    try:
        outcome = prepare_database(pg_server, dbsnap_settings, progress=progress.step)
    except DbsnapError as exc:
        progress.end(failed=True)
        _fail("could not prepare the app database", exc)
    except OSError as exc:
        progress.end(failed=True)
        _fail("could not prepare the app database", _storage_or_raise(exc))
    finally:
        progress.end()
    pytestconfig.stash[OUTCOME_KEY] = outcome
    publish_facts(pytestconfig)
    yield outcome
    outcome.wait_for_spare(timeout=120)


@pytest.fixture(scope="session")
def dbsnap_dump(dbsnap_database: DatabaseOutcome) -> DumpMeta | None:
    """Metadata of the dump the app database was restored from (None with --skip-dump-restore and no dump)."""
    return dbsnap_database.meta


@pytest.fixture(scope="session")
def db_dsn(pg_server: Server, dbsnap_database: DatabaseOutcome) -> str:
    """URL of the restored app database, as the app gets it in DATABASE_URL."""
    return pg_server.dsn(dbsnap_database.database)


@pytest.fixture
def dbsnap_db(pg_server: Server, dbsnap_database: DatabaseOutcome) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection to the app database for one test (closed after it)."""
    import psycopg

    with psycopg.connect(pg_server.conninfo(dbsnap_database.database)) as conn:
        yield conn


@pytest.fixture
def fresh_db(pg_server: Server, dbsnap_database: DatabaseOutcome) -> Iterator[str]:
    """URL of a private database cloned from the dump's template for one test, dropped after it (pass or fail)."""
    with contextlib.ExitStack() as stack:
        name = clone_for_test(
            stack,
            pg_server,
            dbsnap_database,
            need="fresh_db clones the restored dump's template",
            fix="Run without --skip-dump-restore.",
        )
        yield pg_server.dsn(name)


def clone_for_test(
    stack: contextlib.ExitStack[bool | None], server: Server, outcome: DatabaseOutcome, *, need: str, fix: str
) -> str:
    """session.template_clone entered on `stack` (dropped when it closes), for a fixture: a session without
    the template fails the test with the one paragraph, not a traceback."""
    from pytest_dbsnap.errors import DumpError
    from pytest_dbsnap.session import template_clone

    try:
        return stack.enter_context(template_clone(server, outcome, need=need, fix=fix))
    except DumpError as exc:
        pytest.fail(f"pytest-dbsnap: {exc}", pytrace=False)


@dataclass(frozen=True)
class RunningService:
    """What a test gets of a started service: its URL, an HTTP client bound to it, and its log."""

    name: str
    url: str
    client: httpx.Client
    log_path: Path
    service: Service


def _start_service(
    config: pytest.Config, settings: ServiceSettings, env: dict[str, str], placeholders: dict[str, str]
) -> Iterator[RunningService]:
    from pytest_dbsnap.services import Service

    session_settings = config.stash[SETTINGS_KEY]
    service = Service(
        settings,
        env=env,
        logs_dir=session_settings.logs_dir,
        placeholders=placeholders,
        shared_env=session_settings.app_env,
        django_root=session_settings.project_root if session_settings.django else None,
    )
    config.stash[SERVICES_KEY][settings.name] = service
    progress = progress_reporter(config)
    progress.step(f"starting the {settings.name}")
    try:
        service.start()
    except DbsnapError as exc:
        progress.end(failed=True)
        service.stop()
        _fail(f"the {settings.name} did not start", exc)
    except OSError as exc:  # its log folder is full or read-only
        progress.end(failed=True)
        service.stop()
        _fail(f"the {settings.name} did not start", _storage_or_raise(exc))
    finally:
        progress.end()
    try:
        with service.client() as client:
            yield RunningService(settings.name, service.url, client, service.log_path, service)
    finally:
        service.stop()


def _database_placeholders(server: Server, database: str) -> dict[str, str]:
    from pytest_dbsnap.template import database_values

    return database_values(server.params, server.dsn(database), database)


@pytest.fixture(scope="session")
def backend(
    pytestconfig: pytest.Config,
    dbsnap_settings: Settings,
    pg_server: Server,
    dbsnap_database: DatabaseOutcome,
    db_dsn: str,
) -> Iterator[RunningService]:
    """The app's backend as a real process on DATABASE_URL = the restored database, healthy before use (or,
    given only by `url`, a backend that runs already: health-checked, neither started nor stopped)."""
    if dbsnap_settings.backend is None:
        pytest.skip("no [tool.dbsnap.backend] is configured")
    values = {**_database_placeholders(pg_server, dbsnap_database.database), "database_url": db_dsn}
    env = {"DATABASE_URL": db_dsn}
    yield from _start_service(pytestconfig, dbsnap_settings.backend, env, values)


@pytest.fixture(scope="session")
def frontend(
    pytestconfig: pytest.Config, dbsnap_settings: Settings, backend: RunningService
) -> Iterator[RunningService]:
    """The app's frontend as a real process, pointed at the backend; skipped with --skip-frontend."""
    if dbsnap_settings.skip_frontend:
        pytest.skip("--skip-frontend was given, so the frontend was not started")
    if dbsnap_settings.frontend is None:
        pytest.skip("no [tool.dbsnap.frontend] is configured")
    values = {**backend.service.placeholders, "backend_url": backend.url.rstrip("/")}
    yield from _start_service(pytestconfig, dbsnap_settings.frontend, {"BACKEND_URL": backend.url}, values)

"""pytest hooks and fixtures: thin wiring of settings, servers, dumps and services (the pytest11 entry point)."""

from __future__ import annotations

import html
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_dbsnap.errors import DbsnapError
from pytest_dbsnap.postgres import Server, choose_provider, start_server
from pytest_dbsnap.settings import OPTIONS, ServiceSettings, Settings, load_settings
from pytest_dbsnap.smoke import PhaseBook

if TYPE_CHECKING:
    import httpx
    import psycopg

    from pytest_dbsnap.dumps.meta import DumpMeta
    from pytest_dbsnap.services import Service
    from pytest_dbsnap.session import DatabaseOutcome

SETTINGS_KEY = pytest.StashKey[Settings]()
PROVIDER_KEY = pytest.StashKey[tuple[str, str]]()
OUTCOME_KEY = pytest.StashKey["DatabaseOutcome"]()
SERVER_KEY = pytest.StashKey[Server]()
SERVICES_KEY = pytest.StashKey[dict[str, "Service"]]()
PHASES_KEY = pytest.StashKey[PhaseBook]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dbsnap", "pytest-dbsnap: seeded PostgreSQL and the app stack")
    for option in OPTIONS:
        if option.flag and option.flag_is_switch:
            group.addoption(option.flag, dest=option.dest, action="store_const", const=True, default=None,
                            help=option.help)
        elif option.flag:
            group.addoption(option.flag, dest=option.dest, default=None, metavar=option.key.upper(),
                            help=option.help if option.default is None else f"{option.help} (default: {option.default})")
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
    config.addinivalue_line("markers", "smoke: an ordered end-to-end smoke phase of pytest-dbsnap "
                                       "(a failed phase skips the later ones)")
    config.stash[SETTINGS_KEY] = build_settings(config)
    config.stash[SERVICES_KEY] = {}
    config.stash[PHASES_KEY] = PhaseBook()


def _provider(config: pytest.Config) -> tuple[str, str]:
    if PROVIDER_KEY not in config.stash:
        config.stash[PROVIDER_KEY] = choose_provider(config.stash[SETTINGS_KEY])
    return config.stash[PROVIDER_KEY]


def _fail(what: str, exc: DbsnapError) -> None:
    """A setup failure the user can fix: the message only, no traceback into our internals."""
    pytest.fail(f"pytest-dbsnap: {what}: {exc}", pytrace=False)


# --- report header, summary, reports ------------------------------------------------------------------------

def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash[SETTINGS_KEY]
    provider, why = _provider(config)
    return [
        f"dbsnap: provider {provider} ({why}); database {settings.database!r}; dump env {settings.env!r} "
        f"({settings.source_of('env')}); dumps in {settings.dumps_dir}",
    ]


def report_facts(config: pytest.Config) -> dict[str, str]:
    """What a reader of a report needs to know about the database; never a password."""
    facts: dict[str, str] = {"dbsnap provider": _provider(config)[0]}
    if SERVER_KEY in config.stash:
        server = config.stash[SERVER_KEY]
        facts["PostgreSQL"] = f"{server.version} ({server.describe()})"
    if OUTCOME_KEY in config.stash:
        outcome = config.stash[OUTCOME_KEY]
        facts["dbsnap database"] = outcome.database
        facts["dbsnap restore"] = f"{outcome.method} in {outcome.seconds:.2f} s"
        if outcome.meta is not None:
            facts["dbsnap environment"] = outcome.meta.environment
            facts["dbsnap dump"] = outcome.meta.name
            facts["dbsnap sha256"] = outcome.meta.sha256
            facts["dbsnap schema version"] = str(outcome.meta.schema_version or "-")
            if outcome.generated:
                facts["dbsnap generated"] = f"in {outcome.generate_seconds:.1f} s ({outcome.stale_reason})"
    return facts


def _publish_facts(config: pytest.Config) -> None:
    """Into pytest-metadata's table, which pytest-html shows as its Environment section (if installed)."""
    try:
        from pytest_metadata.plugin import metadata_key
    except ImportError:
        return
    if metadata_key in config.stash:
        config.stash[metadata_key].update(report_facts(config))


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(prefix: list[str], summary: list[str], postfix: list[str],
                                session: pytest.Session) -> None:
    book = session.config.stash[PHASES_KEY]
    if not book.phases:
        return
    rows = "".join(
        f"<tr><td>{p.order}</td><td>{html.escape(p.name)}</td><td class='{p.status}'>{p.status}</td>"
        f"<td>{p.passed}</td><td>{p.failed}</td><td>{p.skipped}</td><td>{p.seconds:.2f} s</td>"
        f"<td>{html.escape(p.first_failure or ('; '.join(p.skip_reasons[:1])))}</td></tr>"
        for p in book.ordered()
    )
    prefix.append(
        "<h2>Smoke phases</h2><table id='dbsnap-phases'><thead><tr><th scope='col'>#</th>"
        "<th scope='col'>Phase</th><th scope='col'>Status</th><th scope='col'>Passed</th>"
        "<th scope='col'>Failed</th><th scope='col'>Skipped</th><th scope='col'>Duration</th>"
        f"<th scope='col'>First failure / skip reason</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    book = config.stash.get(PHASES_KEY, None)
    outcome = config.stash.get(OUTCOME_KEY, None)
    if outcome is None and not (book and book.phases):
        return
    terminalreporter.section("dbsnap")
    if outcome is not None:
        terminalreporter.write_line(f"database: {outcome.describe()}")
    if book and book.phases:
        for line in book.table():
            terminalreporter.write_line(line)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    book = item.config.stash[PHASES_KEY]
    failed = book.earlier_failure(item)
    if failed is not None:
        pytest.skip(f"the {failed.name} phase failed ({failed.first_failure}), so this later phase was not run")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                           pytest.TestReport]:
    book = item.config.stash[PHASES_KEY]
    phase = book.phase(item)
    if phase is not None and call.when == "setup":
        item.user_properties.append(("phase", phase.name))
        outcome = item.config.stash.get(OUTCOME_KEY, None)
        if outcome is not None and outcome.meta is not None:
            item.user_properties.append(("dump", f"{outcome.meta.environment}/{outcome.meta.name}"))
    report = yield
    if phase is not None:
        book.record(item, report)
        if report.failed:
            for name, service in item.config.stash[SERVICES_KEY].items():
                report.sections.append((f"{name} log, last lines ({service.log_path})", service.log_tail()))
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    _publish_facts(session.config)


# --- fixtures -----------------------------------------------------------------------------------------------

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
        _fail("could not get a PostgreSQL server", exc)
    pytestconfig.stash[SERVER_KEY] = server
    server.version  # noqa: B018 - read while it runs: the report is written after the server is gone
    with server:
        yield server


@pytest.fixture(scope="session")
def dbsnap_database(pytestconfig: pytest.Config, dbsnap_settings: Settings,
                    pg_server: Server) -> Iterator[DatabaseOutcome]:
    """The app database, restored from the latest dump of --dump-env (generated first when missing or stale)."""
    from pytest_dbsnap.session import prepare_database

    try:
        outcome = prepare_database(pg_server, dbsnap_settings)
    except DbsnapError as exc:
        _fail("could not prepare the app database", exc)
    pytestconfig.stash[OUTCOME_KEY] = outcome
    _publish_facts(pytestconfig)
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
def db(pg_server: Server, dbsnap_database: DatabaseOutcome) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection to the app database for one test (closed after it)."""
    import psycopg

    with psycopg.connect(pg_server.conninfo(dbsnap_database.database)) as conn:
        yield conn


@dataclass(frozen=True)
class RunningService:
    """What a test gets of a started service: its URL, an HTTP client bound to it, and its log."""

    name: str
    url: str
    client: httpx.Client
    log_path: Path
    service: Service


def _start_service(config: pytest.Config, settings: ServiceSettings, env: dict[str, str],
                   logs_dir: Path) -> Iterator[RunningService]:
    from pytest_dbsnap.services import Service

    service = Service(settings, env=env, logs_dir=logs_dir)
    config.stash[SERVICES_KEY][settings.name] = service
    try:
        service.start()
    except DbsnapError as exc:
        service.stop()
        _fail(f"the {settings.name} did not start", exc)
    try:
        with service.client() as client:
            yield RunningService(settings.name, service.url, client, service.log_path, service)
    finally:
        service.stop()


@pytest.fixture(scope="session")
def backend(pytestconfig: pytest.Config, dbsnap_settings: Settings, db_dsn: str) -> Iterator[RunningService]:
    """The app's backend as a real process on DATABASE_URL = the restored database, healthy before use."""
    if dbsnap_settings.backend is None:
        pytest.skip("no [tool.dbsnap.backend] is configured")
    yield from _start_service(pytestconfig, dbsnap_settings.backend, {"DATABASE_URL": db_dsn},
                              dbsnap_settings.logs_dir)


@pytest.fixture(scope="session")
def frontend(pytestconfig: pytest.Config, dbsnap_settings: Settings,
             backend: RunningService) -> Iterator[RunningService]:
    """The app's frontend as a real process, pointed at the backend; skipped with --skip-frontend."""
    if dbsnap_settings.skip_frontend:
        pytest.skip("--skip-frontend was given, so the frontend was not started")
    if dbsnap_settings.frontend is None:
        pytest.skip("no [tool.dbsnap.frontend] is configured")
    env = {"BACKEND_URL": backend.url, "DATABASE_URL": os.environ.get("DATABASE_URL", "")}
    env = {key: value for key, value in env.items() if value}
    yield from _start_service(pytestconfig, dbsnap_settings.frontend, env, dbsnap_settings.logs_dir)

"""pytest hooks and fixtures: thin wiring of settings, servers, dumps and services (the pytest11 entry point)."""

from __future__ import annotations

import dataclasses
import html
import json
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from pytest_dbsnap.errors import DbsnapError
from pytest_dbsnap.postgres import Server, choose_provider, start_server
from pytest_dbsnap.settings import OPTIONS, ServiceSettings, Settings, load_settings
from pytest_dbsnap.smoke import Phase, PhaseBook

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

# The frontend's browser checks (the frontend_page fixture and its report extras) live in their own module.
pytest_plugins = ["pytest_dbsnap.browser_plugin"]


def pytest_addoption(parser: pytest.Parser) -> None:
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


def worker_id(config: pytest.Config) -> str | None:
    """The pytest-xdist worker id (gw0, gw1...) in a worker process, else None."""
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "smoke: an ordered end-to-end smoke phase of pytest-dbsnap (a failed phase skips the later ones)"
    )
    settings = build_settings(config)
    worker = worker_id(config)
    if worker is not None:
        # Each xdist worker restores into its own database, so workers never see each other's writes.
        settings = dataclasses.replace(settings, database=f"{settings.database}_{worker}")
        # Workers re-read the command line (dist=load), so the controller's switch to loadgroup comes this way.
        if getattr(config, "workerinput", {}).get("dbsnap_loadgroup"):
            config.option.loadgroup = True
    elif getattr(config.option, "dist", "no") == "load":
        # loadgroup is load for ungrouped tests, and keeps the smoke phases (one group) in one worker.
        config.option.dist = "loadgroup"
    config.stash[SETTINGS_KEY] = settings
    config.stash[SERVICES_KEY] = {}
    config.stash[PHASES_KEY] = PhaseBook()


SMOKE_GROUP = "dbsnap-smoke"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The smoke phases describe one stack: under xdist they run in one worker, in order."""
    for item in items:
        if item.get_closest_marker("smoke") is not None:
            item.add_marker(pytest.mark.xdist_group(SMOKE_GROUP))
            if getattr(config.option, "loadgroup", False):
                _tag_group(item)


def _tag_group(item: pytest.Item) -> None:
    """pytest-xdist 3.8 marks a group by suffixing `item._nodeid`, which pytest 9.2 no longer reads
    (pytest-xdist issue #1386); until its fix is released, put the suffix on the structured id ourselves."""
    if "@" in item.nodeid or not hasattr(item, "_id"):
        return  # older pytest: xdist's own suffix works
    from _pytest.nodeid import coerce_node_id

    item._id = coerce_node_id(f"{item.nodeid}@{SMOKE_GROUP}")


# --- one server per run under pytest-xdist: the controller owns it, workers attach ------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if worker_id(config) is not None or not config.pluginmanager.has_plugin("dsession"):
        return
    try:
        server = start_server(config.stash[SETTINGS_KEY], _provider(config)[0])
    except DbsnapError as exc:
        raise pytest.UsageError(f"pytest-dbsnap could not get a PostgreSQL server for the workers: {exc}") from None
    config.stash[SERVER_KEY] = server
    server.version  # noqa: B018 - read while it runs: the report is written after the server is gone


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Hand the controller's server to each xdist worker (connection keywords, never logged)."""
    if node.config.getvalue("dist") == "loadgroup":
        node.workerinput["dbsnap_loadgroup"] = True
    server = node.config.stash.get(SERVER_KEY, None)
    if server is not None:
        node.workerinput["dbsnap_server"] = json.dumps(
            {
                "provider": server.provider,
                "params": server.params,
                "bindir": str(server.tools.bindir),
                "version": server.tools.version,
            }
        )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """loadgroup (which this plugin turns `-n N` into) with the crash handling of pytest-xdist's later fixes.

    In pytest-xdist 3.8 a crashed worker under loadgroup hands the test it died on to another worker, which
    dies on it too, and a replacement worker given a single test waits forever for a second one (pytest-xdist
    issues #1323, #1327, #1371): one `os._exit` in a test would hang the whole run.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling  # type: ignore[import-untyped]

    if not all(hasattr(LoadGroupScheduling, name) for name in ("remove_node", "schedule", "_reschedule")):
        return None  # a pytest-xdist whose internals moved on (and, one hopes, fixed the hang itself)

    class CrashSafeLoadGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]
        def remove_node(self, node: Any) -> str | None:
            workload: dict[str, dict[str, bool]] = self.assigned_work.pop(node)
            pending = [(scope, nodeid) for scope, unit in workload.items() for nodeid, done in unit.items() if not done]
            if not pending:
                return None
            scope, crashed = pending[0]
            workload[scope][crashed] = True  # xdist reports it as failed; running it again would crash again
            for scope, unit in workload.items():
                if not all(unit.values()):
                    self.workqueue[scope] = unit
            for other in self.assigned_work:
                self._reschedule(other)
            return crashed

        def schedule(self) -> None:
            late = self.collection is not None
            super().schedule()
            if late:
                # A worker runs its last queued test only once it knows whether more follows: give a
                # replacement a second unit, or tell it (shutdown) that none is coming.
                for node in self.nodes:
                    self._reschedule(node)

    return CrashSafeLoadGroupScheduling(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    if worker_id(config) is None and config.pluginmanager.has_plugin("dsession") and SERVER_KEY in config.stash:
        config.stash[SERVER_KEY].stop()


def _provider(config: pytest.Config) -> tuple[str, str]:
    if PROVIDER_KEY not in config.stash:
        config.stash[PROVIDER_KEY] = choose_provider(config.stash[SETTINGS_KEY])
    return config.stash[PROVIDER_KEY]


def _fail(what: str, exc: DbsnapError) -> NoReturn:
    """A setup failure the user can fix: the message only, no traceback into our internals."""
    # `from None`: pytest shows the chained exceptions even with pytrace=False, which would repeat the
    # message (and mirakuru's) two more times around a "During handling..." line.
    raise pytest.fail.Exception(f"pytest-dbsnap: {what}: {exc}", pytrace=False) from None


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
def pytest_html_results_summary(
    prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
) -> None:
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
        "<style>#dbsnap-phases{border-collapse:collapse;margin:6px 0 18px}"
        "#dbsnap-phases th,#dbsnap-phases td{border:1px solid #d0d0d0;padding:4px 12px;text-align:left}"
        "#dbsnap-phases th{background:#f3f3f3}#dbsnap-phases td.failed{color:#b00020;font-weight:bold}"
        "#dbsnap-phases td.passed{color:#1b5e20}#dbsnap-phases td.skipped{color:#7a4f00}</style>"
        "<h2>Smoke phases</h2><table id='dbsnap-phases'><thead><tr><th scope='col'>#</th>"
        "<th scope='col'>Phase</th><th scope='col'>Status</th><th scope='col'>Passed</th>"
        "<th scope='col'>Failed</th><th scope='col'>Skipped</th><th scope='col'>Duration</th>"
        f"<th scope='col'>First failure / skip reason</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    book = config.stash.get(PHASES_KEY, None)
    outcome = config.stash.get(OUTCOME_KEY, None)
    workers = config.stash.get(WORKER_DATABASES_KEY, [])
    if outcome is None and not workers and not (book and book.phases):
        return
    terminalreporter.section("dbsnap")
    if outcome is not None:
        terminalreporter.write_line(f"database: {outcome.describe()}")
    for line in sorted(workers):
        terminalreporter.write_line(f"database {line}")
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
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
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


WORKER_DATABASES_KEY = pytest.StashKey[list[str]]()


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    _publish_facts(config)
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        # A worker's phases and database line travel to the controller, which writes the reports.
        outcome = config.stash.get(OUTCOME_KEY, None)
        workeroutput["dbsnap"] = json.dumps(
            {
                "database": outcome.describe() if outcome is not None else None,
                "phases": [dataclasses.asdict(p) for p in config.stash[PHASES_KEY].ordered()],
                "facts": report_facts(config) if outcome is not None else {},
            }
        )


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    config = node.config
    data = json.loads(getattr(node, "workeroutput", {}).get("dbsnap", "null") or "null")
    if not data:
        return
    book = config.stash[PHASES_KEY]
    for phase in data["phases"]:
        book.phases.setdefault(phase["name"], Phase(**phase))
    if data["database"]:
        config.stash.setdefault(WORKER_DATABASES_KEY, []).append(f"{node.gateway.id}: {data['database']}")
    try:
        from pytest_metadata.plugin import metadata_key
    except ImportError:
        return
    if metadata_key in config.stash:
        config.stash[metadata_key].update(data["facts"])


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dbsnap_settings(pytestconfig: pytest.Config) -> Settings:
    """The session's settings; override in conftest.py to build your own."""
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config, dbsnap_settings: Settings) -> Iterator[Server]:
    """A running PostgreSQL for the session, stopped at the end (an external server is left running)."""
    shared = getattr(pytestconfig, "workerinput", {}).get("dbsnap_server")
    if shared:
        from pytest_dbsnap.postgres.base import PgTools
        from pytest_dbsnap.postgres.external import AttachedServer

        info = json.loads(shared)
        server: Server = AttachedServer(
            info["params"],
            PgTools(Path(info["bindir"]), info["version"]),
            provider=f"{info['provider']} (shared by the xdist workers)",
        )
        pytestconfig.stash[SERVER_KEY] = server
        yield server
        return
    try:
        server = start_server(dbsnap_settings, _provider(pytestconfig)[0])
    except DbsnapError as exc:
        _fail("could not get a PostgreSQL server", exc)
    pytestconfig.stash[SERVER_KEY] = server
    server.version  # noqa: B018 - read while it runs: the report is written after the server is gone
    with server:
        yield server


@pytest.fixture(scope="session")
def dbsnap_database(
    pytestconfig: pytest.Config, dbsnap_settings: Settings, pg_server: Server
) -> Iterator[DatabaseOutcome]:
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


@pytest.fixture
def fresh_db(pg_server: Server, dbsnap_database: DatabaseOutcome) -> Iterator[str]:
    """URL of a private database cloned from the dump's template for one test, dropped after it (pass or fail)."""
    from pytest_dbsnap.dumps import databases
    from pytest_dbsnap.dumps.restore import template_name

    meta = dbsnap_database.meta
    template = template_name(meta) if meta is not None else None
    name = databases.temporary_name(databases.FRESH_PREFIX)
    with pg_server.connect() as conn:
        if template is None or not databases.exists(conn, template):
            pytest.fail(
                "pytest-dbsnap: fresh_db clones the restored dump's template, and this session has none "
                "(--skip-dump-restore, or no dump). Run without --skip-dump-restore.",
                pytrace=False,
            )
        databases.clone(conn, template, name)
    try:
        yield pg_server.dsn(name)
    finally:
        with pg_server.connect() as conn:
            databases.drop(conn, name)


@dataclass(frozen=True)
class RunningService:
    """What a test gets of a started service: its URL, an HTTP client bound to it, and its log."""

    name: str
    url: str
    client: httpx.Client
    log_path: Path
    service: Service


def _start_service(
    config: pytest.Config, settings: ServiceSettings, env: dict[str, str], logs_dir: Path
) -> Iterator[RunningService]:
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
    yield from _start_service(pytestconfig, dbsnap_settings.backend, {"DATABASE_URL": db_dsn}, dbsnap_settings.logs_dir)


@pytest.fixture(scope="session")
def frontend(
    pytestconfig: pytest.Config, dbsnap_settings: Settings, backend: RunningService
) -> Iterator[RunningService]:
    """The app's frontend as a real process, pointed at the backend; skipped with --skip-frontend."""
    if dbsnap_settings.skip_frontend:
        pytest.skip("--skip-frontend was given, so the frontend was not started")
    if dbsnap_settings.frontend is None:
        pytest.skip("no [tool.dbsnap.frontend] is configured")
    env = {"BACKEND_URL": backend.url, "DATABASE_URL": os.environ.get("DATABASE_URL", "")}
    env = {key: value for key, value in env.items() if value}
    yield from _start_service(pytestconfig, dbsnap_settings.frontend, env, dbsnap_settings.logs_dir)

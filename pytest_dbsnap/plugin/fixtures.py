"""The plugin's fixtures: a few lines each around the stack's context managers (servers, the database step,
services). Heavy modules (psycopg, the session machinery) load inside the fixtures, on first use."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NoReturn

import pytest

from pytest_dbsnap.errors import DbsnapError, storage_error
from pytest_dbsnap.plugin.report import progress_reporter, publish_facts
from pytest_dbsnap.plugin.stash import OUTCOME_KEY, SERVER_KEY, SERVICES_KEY, SETTINGS_KEY, provider_choice

if TYPE_CHECKING:
    import psycopg

    from pytest_dbsnap.config.settings import ServiceSettings, Settings
    from pytest_dbsnap.dumps.meta import DumpMeta
    from pytest_dbsnap.postgres.base import Server
    from pytest_dbsnap.stack.services import RunningService
    from pytest_dbsnap.stack.session import DatabaseOutcome


def fail_setup(what: str, exc: DbsnapError) -> NoReturn:
    """A setup failure the user can fix: the message only, no traceback into our internals."""
    # `from None`: pytest shows the chained exceptions even with pytrace=False, which would repeat the
    # message (and mirakuru's) two more times around a "During handling..." line.
    raise pytest.fail.Exception(f"pytest-dbsnap: {what}: {exc}", pytrace=False) from None


def storage_or_raise(exc: OSError) -> DbsnapError:
    """A full or read-only disk is the user's to fix (one paragraph); any other OSError is a bug."""
    converted = storage_error(exc)
    if converted is None:
        raise exc
    return converted


@contextlib.contextmanager
def setup_step(config: pytest.Config, step: str, what: str, undo: Callable[[], None] | None = None) -> Iterator[None]:
    """A slow set-up step on the progress line; a failure the user can fix (or a full or read-only disk) fails
    the test with the message only, after `undo`."""
    progress = progress_reporter(config)
    progress.step(step)
    try:
        yield
    except (DbsnapError, OSError) as exc:
        progress.end(failed=True)
        if undo is not None:
            undo()
        fail_setup(what, exc if isinstance(exc, DbsnapError) else storage_or_raise(exc))
    finally:
        progress.end()


@pytest.fixture(scope="session")
def dbsnap_settings(pytestconfig: pytest.Config) -> Settings:
    """The session's settings; override in conftest.py to build your own."""
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config, dbsnap_settings: Settings) -> Iterator[Server]:
    """A running PostgreSQL for the session, stopped at the end (an external server is left running)."""
    from pytest_dbsnap.plugin.xdist import attached_server
    from pytest_dbsnap.stack.servers import start_server, watch_server

    attached = attached_server(pytestconfig)
    if attached is not None:
        pytestconfig.stash[SERVER_KEY] = attached
        forget = watch_server(attached)  # this worker's temporary databases on the controller's server
        yield attached
        forget()
        return
    provider = provider_choice(pytestconfig)[0]
    with setup_step(pytestconfig, f"starting PostgreSQL ({provider})", "could not get a PostgreSQL server"):
        server = start_server(dbsnap_settings, provider)
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
    request: pytest.FixtureRequest, pytestconfig: pytest.Config, dbsnap_settings: Settings, pg_server: Server
) -> Iterator[DatabaseOutcome]:
    """The app database, restored from the latest dump of --dump-env (generated first when missing or stale)."""
    from pytest_dbsnap.stack.session import prepare_database

    preparing = f"preparing {dbsnap_settings.database!r} from {dbsnap_settings.env}"
    # Tests that take fresh_db copies: the spare comes from the pool at the end, not cloned while they start.
    takes_copies = any("fresh_db" in getattr(item, "fixturenames", ()) for item in request.session.items)
    with setup_step(pytestconfig, preparing, "could not prepare the app database"):
        outcome = prepare_database(
            pg_server,
            dbsnap_settings,
            progress=progress_reporter(pytestconfig).step,
            spare_at_end=takes_copies,
            defer_app=True,
        )
    pytestconfig.stash[OUTCOME_KEY] = outcome
    publish_facts(pytestconfig)
    try:
        yield outcome
    finally:
        outcome.close_pool()  # the fresh_db clones made ahead
        outcome.wait_for_spare(timeout=120)


def app_database(config: pytest.Config, outcome: DatabaseOutcome) -> str:
    """The app database's name, made here when the session deferred it (its failure is one paragraph)."""
    if not outcome.pending:
        return outcome.database
    with setup_step(config, f"making the app database {outcome.name!r}", "could not make the app database"):
        return outcome.database


@pytest.fixture(scope="session")
def dbsnap_dump(dbsnap_database: DatabaseOutcome) -> DumpMeta | None:
    """Metadata of the dump the app database was restored from (None with --skip-dump-restore and no dump)."""
    return dbsnap_database.meta


@pytest.fixture(scope="session")
def db_dsn(pytestconfig: pytest.Config, pg_server: Server, dbsnap_database: DatabaseOutcome) -> str:
    """URL of the restored app database, as the app gets it in DATABASE_URL."""
    return pg_server.dsn(app_database(pytestconfig, dbsnap_database))


@pytest.fixture
def dbsnap_db(
    pytestconfig: pytest.Config, pg_server: Server, dbsnap_database: DatabaseOutcome
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection to the app database for one test (closed after it)."""
    import psycopg

    with psycopg.connect(pg_server.conninfo(app_database(pytestconfig, dbsnap_database))) as conn:
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
    from pytest_dbsnap.stack.session import template_clone

    try:
        return stack.enter_context(template_clone(server, outcome, need=need, fix=fix))
    except DumpError as exc:
        pytest.fail(f"pytest-dbsnap: {exc}", pytrace=False)


def _start_service(
    config: pytest.Config, settings: ServiceSettings, env: dict[str, str], placeholders: dict[str, str]
) -> Iterator[RunningService]:
    from pytest_dbsnap.stack.services import RunningService, Service

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
    # An OSError here is its log folder, full or read-only.
    with setup_step(config, f"starting the {settings.name}", f"the {settings.name} did not start", service.stop):
        service.start()
    try:
        with service.client() as client:
            yield RunningService(settings.name, service.url, client, service.log_path, service)
    finally:
        service.stop()


def _database_placeholders(server: Server, database: str) -> dict[str, str]:
    from pytest_dbsnap.config.placeholders import database_values

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

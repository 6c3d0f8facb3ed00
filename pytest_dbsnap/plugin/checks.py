"""The plugin's own smoke checks as pytest items: the built-ins of each phase and [[tool.dbsnap.checks]].

They are added to a run that selects smoke (`-m smoke`) in a project with [tool.dbsnap], so a project with no
test files gets a whole suite. Ids read dbsnap::<phase>::<check>; each item carries the `smoke` marker with its
phase and the phase's order, so it joins the user's own modules of the same phase and the fail-fast rule.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from pytest_dbsnap.config.checks import BUILTIN_CHECKS, PHASES, CheckSpec
from pytest_dbsnap.config.django_env import django_settings_env
from pytest_dbsnap.config.placeholders import DATABASE_NAMES, command_argv, database_values, fill, fill_env, names_in
from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.core.redact import redact
from pytest_dbsnap.errors import DbsnapError, ToolError

if TYPE_CHECKING:
    from pytest_dbsnap.postgres import Server
    from pytest_dbsnap.stack.browser import RenderedPage
    from pytest_dbsnap.stack.services import RunningService
    from pytest_dbsnap.stack.session import DatabaseOutcome

ROOT = "dbsnap"
_SHOWN_BODY = 300  # characters of a response body a failure quotes


def smoke_selected(config: pytest.Config) -> bool:
    """Whether this run is a smoke run that wants the plugin's checks: its -m expression selects tests marked
    smoke (`-m smoke` does, no -m does not, so a plain `pytest` of a project's unit tests never starts the
    stack, and neither does `-m "not smoke"`), and it names no test paths (`pytest -m smoke tests/x.py` runs
    just that file's tests)."""
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        return False
    expression = str(config.getoption("markexpr", "") or "").strip()
    if not expression:
        return False
    try:
        from _pytest.mark.expression import Expression

        return bool(Expression.compile(expression).evaluate(lambda name, /, **_kwargs: name == "smoke"))
    except (ImportError, SyntaxError, TypeError, ValueError):  # pytest's own error for a bad -m comes later
        return "smoke" in expression.split() and "not smoke" not in expression


def fail(message: str) -> NoReturn:
    """A failed check shows its message only, passwords redacted: the check and both values say it all."""
    raise pytest.fail.Exception(redact(message), pytrace=False) from None


class CheckItem(pytest.Function):
    """A check of the plugin: a pytest function with a readable location instead of this module's lines."""

    def reportinfo(self) -> tuple[Path, int, str]:
        # Where it comes from is the configuration; a skip report wants a line number.
        return self.config.rootpath / "pyproject.toml", 0, self.nodeid


class _Group(pytest.Collector):
    """dbsnap (the root) and dbsnap::<phase>: nodes that only give the checks their ids."""

    def collect(self) -> Iterable[pytest.Item | pytest.Collector]:
        return []


def make_items(session: pytest.Session, settings: Settings) -> list[pytest.Item]:
    """The checks of this run: the built-ins not switched off, then the declarative ones, phase by phase."""
    root = _Group.from_parent(session, name=ROOT, nodeid=ROOT)
    by_phase: dict[tuple[int, str], list[tuple[str, Callable[..., None]]]] = {}
    if settings.builtin_checks:
        for phase, names in BUILTIN_CHECKS.items():
            if phase in settings.skip_checks:
                continue
            for name in names:
                if f"{phase}.{name}" not in settings.skip_checks:
                    by_phase.setdefault((PHASES[phase], phase), []).append((name, _BUILTINS[name]))
    for spec in settings.checks:
        by_phase.setdefault((spec.order, spec.phase), []).append((spec.node_name, _declarative(spec)))
    items: list[pytest.Item] = []
    for (order, phase), checks in sorted(by_phase.items()):
        group = _Group.from_parent(root, name=phase, nodeid=f"{ROOT}::{phase}")
        for name, function in checks:
            item = CheckItem.from_parent(group, name=name, callobj=function)
            item.add_marker(pytest.mark.smoke(phase=phase))
            item.add_marker(pytest.mark.order(order))
            items.append(item)
    return items


# --- environment ----------------------------------------------------------------------------------------------


def postgres_programs(pytestconfig: pytest.Config, dbsnap_settings: Settings) -> None:
    """The PostgreSQL programs this run needs are found (the server's only when it starts a local cluster)."""
    from pytest_dbsnap.plugin.stash import provider_choice
    from pytest_dbsnap.postgres import find_pg_tools

    provider = provider_choice(pytestconfig)[0]
    if provider != "local" and dbsnap_settings.skip_dump_restore:
        pytest.skip(f"the {provider} provider with --skip-dump-restore runs no PostgreSQL program")
    try:
        tools = find_pg_tools(dbsnap_settings, need_server=provider == "local")
    except DbsnapError as exc:
        fail(f"environment check 'postgres_programs': {exc}")
    for program in ("pg_dump", "pg_restore"):
        if not tools.path(program).is_file():
            fail(f"environment check 'postgres_programs': expected {program} in {tools.bindir}, it is not there")


def required_programs(dbsnap_settings: Settings) -> None:
    """Every program of required_tools and of the services' `requires` is on PATH."""
    wanted = set(dbsnap_settings.required_tools)
    for service in (dbsnap_settings.backend, None if dbsnap_settings.skip_frontend else dbsnap_settings.frontend):
        if service is not None:
            wanted.update(service.requires)
    missing = sorted(program for program in wanted if shutil.which(program) is None)
    if missing:
        fail(
            f"environment check 'required_programs': expected {', '.join(sorted(wanted))} on PATH, missing: "
            f"{', '.join(missing)}"
        )


# --- database -------------------------------------------------------------------------------------------------


def server_answers(pg_server: Server, dbsnap_database: DatabaseOutcome) -> None:
    """The server answers a query on the app database."""
    try:
        with pg_server.connect(dbsnap_database.database) as conn:
            row = conn.execute("SELECT 1").fetchone()
    except DbsnapError as exc:
        fail(f"database check 'server_answers': {exc}")
    if row != (1,):
        fail(f"database check 'server_answers' (SELECT 1): expected (1,), got {row!r}")


def _restored(outcome: DatabaseOutcome) -> None:
    if outcome.meta is None or outcome.method == "kept as it was":
        pytest.skip("no dump was restored in this session (--skip-dump-restore), so there is nothing to compare")


def dump_sha256(dbsnap_database: DatabaseOutcome, dbsnap_settings: Settings) -> None:
    """The restored dump's bytes still have the sha256 its metadata recorded."""
    from pytest_dbsnap.dumps.restore import verify_file
    from pytest_dbsnap.dumps.store import DumpStore

    _restored(dbsnap_database)
    meta = dbsnap_database.meta
    assert meta is not None
    try:
        verify_file(meta, DumpStore(dbsnap_settings.dumps_dir).dump_path(meta.environment, meta.name))
    except DbsnapError as exc:
        fail(f"database check 'dump_sha256' ({meta.environment}/{meta.name}): {exc}")


def schema_version(pg_server: Server, dbsnap_database: DatabaseOutcome, dbsnap_settings: Settings) -> None:
    """The database's schema version (schema_version_query) equals the one the dump recorded."""
    from pytest_dbsnap.dumps.generate import read_schema_version

    query = dbsnap_settings.schema_version_query
    if not query:
        pytest.skip("no schema_version_query is configured in [tool.dbsnap]")
    _restored(dbsnap_database)
    assert dbsnap_database.meta is not None
    try:
        actual = read_schema_version(pg_server, dbsnap_database.database, query)
    except DbsnapError as exc:
        fail(f"database check 'schema_version': {exc}")
    meta = dbsnap_database.meta
    expected = meta.schema_version
    if actual != expected and meta.source != "generated":
        # Captured from a live database or imported: made by other migrations than this tree's, which
        # migrate_command may have moved on since (a pull request's new migration). Nothing to hold it to.
        was = f"recorded schema version {expected}" if expected is not None else "no recorded schema version"
        pytest.skip(
            f"the dump {meta.environment}/{meta.name} was {meta.source} ({was}); after migrate_command the database "
            f"is at {actual}: a dump made elsewhere is not held to this tree's migrations"
        )
    if actual != expected:
        fail(f"database check 'schema_version' ({query}): expected {expected} (the dump's), got {actual}")


def row_counts(pg_server: Server, dbsnap_database: DatabaseOutcome) -> None:
    """Every table holds as many rows as the dump's metadata recorded."""
    from pytest_dbsnap.dumps.restore import count_rows

    _restored(dbsnap_database)
    meta = dbsnap_database.meta
    assert meta is not None
    try:
        with pg_server.connect(dbsnap_database.database) as conn:
            actual = count_rows(conn)
    except DbsnapError as exc:
        fail(f"database check 'row_counts': {exc}")
    made_here = meta.source == "generated"
    if not meta.row_counts and not made_here:
        pytest.skip(f"the dump {meta.environment}/{meta.name} was {meta.source} and records no row counts")
    # A dump made elsewhere may be behind this tree's migrations: tables they added since are not its.
    tables = set(meta.row_counts) | set(actual) if made_here else set(meta.row_counts)
    wrong = [
        f"{table}: expected {meta.row_counts.get(table, 'no table')}, got {actual.get(table, 'no table')}"
        for table in sorted(tables)
        if meta.row_counts.get(table) != actual.get(table)
    ]
    if wrong:
        fail(f"database check 'row_counts' (the dump {meta.name} against the database): " + "; ".join(wrong))


# --- backend and frontend -------------------------------------------------------------------------------------


def _answers(phase: str, check: str, service: RunningService, url: str, expected: int) -> None:
    import httpx  # here: a session without services never loads it (70 ms at start)

    try:
        response = service.client.get(url)
    except httpx.HTTPError as exc:  # no answer at all is the check failing, quoted
        fail(f"{phase} check '{check}' (GET {url}): expected status {expected}, got no answer: {exc}")
    if response.status_code != expected:
        fail(
            f"{phase} check '{check}' (GET {url}): expected status {expected}, got {response.status_code}: "
            f"{response.text[:_SHOWN_BODY]!r}"
        )


def health(backend: RunningService, dbsnap_settings: Settings) -> None:
    """The backend's health URL answers the expected status."""
    assert dbsnap_settings.backend is not None
    _answers("backend", "health", backend, backend.service.health_url, dbsnap_settings.backend.expected_status)


def answers(frontend: RunningService, dbsnap_settings: Settings) -> None:
    """The frontend's URL answers the expected status."""
    assert dbsnap_settings.frontend is not None
    _answers("frontend", "answers", frontend, frontend.url, dbsnap_settings.frontend.expected_status)


def browser_render(frontend_page: RenderedPage, dbsnap_settings: Settings) -> None:
    """In headless Chromium the page loads, and shows render_selector when one is set."""
    frontend = dbsnap_settings.frontend
    selector = frontend.render_selector if frontend is not None else None
    if selector and not frontend_page.rendered:
        fail(f"frontend check 'browser_render' ({frontend_page.url}): expected {selector!r} on the page, got none")


def accessibility(frontend_page: RenderedPage) -> None:
    """axe-core finds nothing of serious or critical impact on the page."""
    from pytest_dbsnap.stack.browser import describe_violations

    blocking = frontend_page.blocking_violations
    if blocking:
        fail(
            f"frontend check 'accessibility' ({frontend_page.url}): expected no serious or critical violation, "
            f"got {describe_violations(blocking, frontend_page.axe_version)}"
        )


def console_errors(frontend_page: RenderedPage) -> None:
    """The page logged no console errors, failed loads or uncaught exceptions."""
    errors = frontend_page.console_errors
    if errors:
        fail(
            f"frontend check 'console_errors' ({frontend_page.url}): expected none, got {len(errors)}:\n"
            + "\n".join(f"  {error}" for error in errors)
        )


_BUILTINS: dict[str, Callable[..., None]] = {
    "postgres_programs": postgres_programs,
    "required_programs": required_programs,
    "server_answers": server_answers,
    "dump_sha256": dump_sha256,
    "schema_version": schema_version,
    "row_counts": row_counts,
    "health": health,
    "answers": answers,
    "browser_render": browser_render,
    "accessibility": accessibility,
    "console_errors": console_errors,
}
assert set(_BUILTINS) == {name for names in BUILTIN_CHECKS.values() for name in names}


# --- [[tool.dbsnap.checks]] -----------------------------------------------------------------------------------


def _declarative(spec: CheckSpec) -> Callable[..., None]:
    label = f"{spec.phase} check '{spec.name}' ({spec.what})"
    if spec.kind == "sql":

        def sql_check(pg_server: Server, dbsnap_database: DatabaseOutcome) -> None:
            _sql_check(spec, label, pg_server, dbsnap_database)

        return sql_check
    if spec.kind == "request":

        def request_check(request: pytest.FixtureRequest) -> None:
            _request_check(spec, label, request)

        return request_check

    def command_check(request: pytest.FixtureRequest, dbsnap_settings: Settings) -> None:
        _command_check(spec, label, request, dbsnap_settings)

    return command_check


def _sql_check(spec: CheckSpec, label: str, server: Server, outcome: DatabaseOutcome) -> None:
    import psycopg

    try:
        with server.connect(outcome.database) as conn:
            row = conn.execute(str(spec.sql).encode()).fetchone()
    except (psycopg.Error, DbsnapError) as exc:
        fail(f"{label}: the query failed: {str(exc).strip()}")
    actual = None if row is None else row[0]
    if spec.at_least is not None:
        number = _number(actual)
        if number is None or number < spec.at_least:
            fail(f"{label}: expected at least {_show(spec.at_least)}, got {_show(actual)}")
    elif not _equal(actual, spec.equals):
        fail(f"{label}: expected {_show(spec.equals)}, got {_show(actual)}")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _equal(actual: object, expected: object) -> bool:
    """TOML has strings, numbers and booleans; the database value is compared as the same kind."""
    if isinstance(expected, bool):
        return actual is expected or (isinstance(actual, str) and actual.lower() == str(expected).lower())
    if isinstance(expected, int | float):
        number = _number(actual)
        return number is not None and number == float(expected)
    return actual is not None and str(actual) == expected


def _show(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bool):
        return str(value).lower()
    return "NULL (no row)" if value is None else str(value)


def _values(request: pytest.FixtureRequest, wanted: Iterable[str]) -> dict[str, str]:
    """Placeholder values for the names a check uses; asking for one starts what gives it (the database, the
    backend), as the check's fixtures would."""
    wanted = set(wanted)
    values: dict[str, str] = {}
    if wanted & set(DATABASE_NAMES):
        server: Server = request.getfixturevalue("pg_server")
        outcome: DatabaseOutcome = request.getfixturevalue("dbsnap_database")
        try:
            name = outcome.database  # a deferred app database is made here
        except DbsnapError as exc:
            fail(f"the app database for the check's placeholders: {exc}")
        values.update(database_values(server.params, server.dsn(name), name))
    for name in ("backend", "frontend"):
        if f"{name}_url" in wanted:
            values[f"{name}_url"] = request.getfixturevalue(name).url.rstrip("/")
    return values


def _request_check(spec: CheckSpec, label: str, request: pytest.FixtureRequest) -> None:
    service: RunningService = request.getfixturevalue(spec.service)
    values = {**service.service.values, **_values(request, names_in(spec.path, *spec.headers.values()))}
    key = f"checks[{spec.index}]"
    try:
        path = fill(spec.path, values, key=f"{key}.request")
        headers = {name: fill(value, values, key=f"{key}.headers.{name}") for name, value in spec.headers.items()}
    except DbsnapError as exc:  # {port} of a service that was not started has no value
        fail(f"{label}: {exc}")
    import httpx

    try:
        response = service.client.request(spec.method, path.lstrip("/"), json=spec.json, headers=headers)
    except httpx.HTTPError as exc:  # no answer at all is the check failing, quoted
        fail(f"{label}: expected status {spec.status}, got no answer: {exc}")
    body = response.text
    if response.status_code != spec.status:
        fail(f"{label}: expected status {spec.status}, got {response.status_code}: {body[:_SHOWN_BODY]!r}")
    if spec.contains is not None and spec.contains not in body:
        fail(f"{label}: expected the body to contain {spec.contains!r}, got {body[:_SHOWN_BODY]!r}")


def _command_check(spec: CheckSpec, label: str, request: pytest.FixtureRequest, settings: Settings) -> None:
    from pytest_dbsnap.core.proc import resolve_python, run

    assert spec.command is not None
    parts = [spec.command] if isinstance(spec.command, str) else list(spec.command)
    values = _values(request, names_in(*parts))  # env values without a value here are left out
    try:
        argv = resolve_python(command_argv(spec.command, values, key=f"checks[{spec.index}].command"))
    except DbsnapError as exc:  # a filled value that a string command cannot take
        fail(f"{label}: {exc}")
    env = {**fill_env(settings.app_env, values, key="env")}
    if "database_url" in values:
        env["DATABASE_URL"] = values["database_url"]
    if settings.django:  # `python manage.py ...` checks the session's database, as migrate and the seed did
        env.update(django_settings_env(settings.project_root, {**os.environ, **env}))
    try:
        run(argv, what=label, env={**os.environ, **env}, cwd=settings.project_root, timeout=300)
    except ToolError as exc:
        if exc.returncode is None:
            fail(f"{label}: expected exit code 0, but it could not run: {exc}")
        fail(f"{label}: expected exit code 0, got {exc.returncode}. Its last output lines:\n{exc.stderr_tail}")

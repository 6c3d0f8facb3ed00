"""What the reports say: the header line, the HTML report's environment facts and phase table, JUnit properties,
service log tails on failures and the terminal summary. Never a password."""

from __future__ import annotations

import contextlib
import html
import os
import sys
from collections.abc import Generator

import pytest

from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.core.progress import Reporter, Step, interactive
from pytest_dbsnap.core.redact import redact
from pytest_dbsnap.plugin.stash import (
    OUTCOME_KEY,
    PHASES_KEY,
    PROGRESS_KEY,
    SERVER_KEY,
    SERVICES_KEY,
    SETTINGS_KEY,
    WORKER_DATABASES_KEY,
    WORKER_WARNINGS_KEY,
    provider_choice,
)

_PHASE_TABLE_STYLE = (
    "<style>#dbsnap-phases{border-collapse:collapse;margin:6px 0 18px}"
    "#dbsnap-phases th,#dbsnap-phases td{border:1px solid #d0d0d0;padding:4px 12px;text-align:left}"
    "#dbsnap-phases th{background:#f3f3f3}#dbsnap-phases td.failed{color:#b00020;font-weight:bold}"
    "#dbsnap-phases td.passed{color:#1b5e20}#dbsnap-phases td.skipped{color:#7a4f00}"
    "#dbsnap-phases tr.dbsnap-step td{color:#555}</style>"
)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """The session's progress reporter, made while pytest's capture is off so that it sees the real stdout.

    The live line is drawn by a background thread while a fixture runs, when pytest captures file descriptor 1;
    so it goes to a copy of the terminal's descriptor taken here, placed behind the terminal writer's current
    line (whose bookkeeping it leaves alone). Finished steps' lines go through the terminal reporter.
    """
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is None or hasattr(config, "workerinput"):  # an xdist worker's terminal is nobody's
        config.stash[PROGRESS_KEY] = Reporter()
        return
    live = None
    if interactive(sys.stdout):
        with contextlib.suppress(OSError, ValueError):
            live = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", errors="replace")
    verbose = config.get_verbosity() > 0

    def finished(line: str) -> None:
        capture = config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            terminal.write_line(line)

    tw = config.get_terminal_writer()
    config.stash[PROGRESS_KEY] = Reporter(
        live=live,
        finished=finished if live is None or verbose else None,
        width=lambda: tw.fullwidth,
        column=lambda: tw.width_of_current_line,
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    reporter = config.stash.get(PROGRESS_KEY, None)
    if reporter is not None:
        reporter.end()
        if reporter.live is not None:
            with contextlib.suppress(OSError):
                reporter.live.close()


def progress_reporter(config: pytest.Config) -> Reporter:
    """The session's reporter (a silent one when the plugin's configure did not run, e.g. a conftest's config)."""
    if PROGRESS_KEY not in config.stash:
        config.stash[PROGRESS_KEY] = Reporter()
    return config.stash[PROGRESS_KEY]


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash[SETTINGS_KEY]
    if not settings.configured:
        # Installed but not configured: no probe for a server or programs (they cost a run that never uses them).
        return ["dbsnap: idle (no [tool.dbsnap] in pyproject.toml and no dbsnap option); its fixtures start on use"]
    provider, why = provider_choice(config)
    lines = [
        f"dbsnap: provider {provider} ({why}); database {settings.database!r}; dump env {settings.env!r} "
        f"({settings.source_of('env')}); dumps in {settings.dumps_dir}",
    ]
    if settings.database_url_ignored:
        lines.append(
            "dbsnap: DATABASE_URL is set but not used: the server comes only from --dbsnap-dsn, DBSNAP_DSN or "
            "dsn in [tool.dbsnap], so the database your app points at is never replaced by accident"
        )
    lines.append(programs_line(settings, provider))
    return lines


def programs_line(settings: Settings, provider: str) -> str:
    """Which PostgreSQL programs the session uses and where they came from (the server's too for local)."""
    from pytest_dbsnap.errors import DbsnapError
    from pytest_dbsnap.postgres.base import find_pg_tools

    what = "server and client programs" if provider == "local" else "client programs"
    try:
        tools = find_pg_tools(settings, need_server=provider == "local")
    except DbsnapError:
        return f"dbsnap: PostgreSQL {what}: none found (the session says why)"
    return f"dbsnap: PostgreSQL {what}: {tools.describe()}"


def report_facts(config: pytest.Config) -> dict[str, str]:
    """What a reader of a report needs to know about the database; never a password."""
    facts: dict[str, str] = {"dbsnap provider": provider_choice(config)[0]}
    if SERVER_KEY in config.stash:
        server = config.stash[SERVER_KEY]
        facts["PostgreSQL"] = f"{server.version} ({server.describe()})"
        facts["dbsnap PostgreSQL programs"] = server.tools.describe()
    if OUTCOME_KEY in config.stash:
        outcome = config.stash[OUTCOME_KEY]
        facts["dbsnap database"] = outcome.name
        facts["dbsnap restore"] = f"{outcome.method} in {outcome.seconds:.2f} s"
        if outcome.meta is not None:
            facts["dbsnap environment"] = outcome.meta.environment
            facts["dbsnap dump"] = outcome.meta.name
            facts["dbsnap sha256"] = outcome.meta.sha256
            facts["dbsnap schema version"] = str(outcome.meta.schema_version or "-")
            facts["dbsnap clones"] = "copy-on-write" if outcome.copy_on_write else "full copy"
            if outcome.generated:
                facts["dbsnap generated"] = f"in {outcome.generate_seconds:.1f} s ({outcome.stale_reason})"
        for number, warning in enumerate(outcome.warnings, 1):
            facts[f"dbsnap warning {number}"] = warning
    written = getattr(config.stash.get(SERVER_KEY, None), "snapshot_written", None)
    if written:
        facts["dbsnap cluster snapshot"] = str(written)
    reporter = config.stash.get(PROGRESS_KEY, None)
    if reporter is not None and reporter.steps:
        facts["dbsnap steps"] = "; ".join(s.line().removeprefix("dbsnap: ") for s in reporter.steps)
    return facts


def publish_facts(config: pytest.Config, facts: dict[str, str] | None = None) -> None:
    """Into pytest-metadata's table, which pytest-html shows as its Environment section (if installed)."""
    try:
        from pytest_metadata.plugin import metadata_key
    except ImportError:
        return
    if metadata_key in config.stash:
        config.stash[metadata_key].update(report_facts(config) if facts is None else facts)


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(
    prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
) -> None:
    reporter = session.config.stash.get(PROGRESS_KEY, None)
    all_steps = reporter.steps if reporter is not None else []
    if all_steps:
        steps = "".join(
            f"<tr><td>{html.escape(_step_name(s))}</td><td>{html.escape(s.phase or '')}</td><td>{s.duration}</td></tr>"
            for s in all_steps
        )
        prefix.append(
            f"<h2>Where the session's time went</h2><table id='dbsnap-steps'><thead><tr>"
            f"<th scope='col'>Step</th><th scope='col'>Phase</th><th scope='col'>Duration</th></tr></thead>"
            f"<tbody>{steps}</tbody></table>"
        )
    book = session.config.stash[PHASES_KEY]
    if not book.phases:
        return
    rows = "".join(
        f"<tr><td>{p.order}</td><td>{html.escape(p.name)}</td><td class='{p.status}'>{p.status}</td>"
        f"<td>{p.passed}</td><td>{p.failed}</td><td>{p.skipped}</td><td>{p.seconds:.2f} s</td>"
        f"<td>{html.escape(p.first_failure or ('; '.join(p.skip_reasons[:1])))}</td></tr>"
        + "".join(
            f"<tr class='dbsnap-step'><td></td><td colspan='5'>{html.escape(_step_name(s))}</td>"
            f"<td>{s.duration}</td><td></td></tr>"
            for s in all_steps
            if s.phase == p.name
        )
        for p in book.ordered()
    )
    prefix.append(
        f"{_PHASE_TABLE_STYLE}<h2>Smoke phases</h2><table id='dbsnap-phases'><thead><tr><th scope='col'>#</th>"
        "<th scope='col'>Phase</th><th scope='col'>Status</th><th scope='col'>Passed</th>"
        "<th scope='col'>Failed</th><th scope='col'>Skipped</th><th scope='col'>Duration</th>"
        f"<th scope='col'>First failure / skip reason</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _step_name(step: Step) -> str:
    return f"{step.within} > {step.label}" if step.within else step.label


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    book = config.stash.get(PHASES_KEY, None)
    outcome = config.stash.get(OUTCOME_KEY, None)
    workers = config.stash.get(WORKER_DATABASES_KEY, [])
    worker_warnings = config.stash.get(WORKER_WARNINGS_KEY, [])
    server = config.stash.get(SERVER_KEY, None)
    # A local cluster says what it wrote when it stopped, or why it wrote nothing.
    written = getattr(server, "snapshot_written", None)
    not_written = getattr(server, "snapshot_write_problem", None)
    reporter = config.stash.get(PROGRESS_KEY, None)
    steps = reporter.steps if reporter is not None else []
    if not (outcome or workers or (book and book.phases) or written or not_written or steps):
        return
    terminalreporter.section("dbsnap")
    phases = set(book.phases) if book else set()
    for step in steps:
        if step.phase not in phases:  # the others are listed under their phase in the phase table
            terminalreporter.write_line(step.line().replace("dbsnap: ", "step: ", 1))
    if outcome is not None:
        terminalreporter.write_line(f"database: {outcome.describe()}")
        for warning in outcome.warnings:
            terminalreporter.write_line(f"warning: {warning}", yellow=True)
    started_from = getattr(server, "started_from_snapshot", None)
    if outcome is None and started_from:
        # The xdist controller: its cluster came from the snapshot; the workers cloned the template it held.
        seconds = float(getattr(server, "snapshot_seconds", 0.0))
        terminalreporter.write_line(f"cluster started from the cluster snapshot {started_from} in {seconds:.2f} s")
    not_used = getattr(server, "snapshot_problem", None)
    if outcome is None and not_used:
        terminalreporter.write_line(f"warning: {not_used}", yellow=True)
    if written:
        terminalreporter.write_line(str(written))
    if not_written:
        terminalreporter.write_line(f"warning: {not_written}", yellow=True)
    for line in sorted(workers):
        terminalreporter.write_line(f"database {line}")
    for warning in worker_warnings:
        terminalreporter.write_line(f"warning: {warning}", yellow=True)
    if book and book.phases:
        for line in book.table(steps):
            terminalreporter.write_line(line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    book = item.config.stash[PHASES_KEY]
    phase = book.phase(item)
    server = item.config.stash.get(SERVER_KEY, None)
    if call.when == "setup" and server is not None and "pg_server" in getattr(item, "fixturenames", ()):
        item.user_properties.append(("postgres server", server.version))
        item.user_properties.append(("postgres programs", server.tools.describe()))
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
                if not service.log_path.exists():  # a url-only service: nothing was started, nothing logged
                    continue
                report.sections.append((f"{name} log, last lines ({service.log_path})", service.log_tail()))
    _redact_report(report)
    return report


def _redact_report(report: pytest.TestReport) -> None:
    """A failing test's traceback or captured output may hold the app's DATABASE_URL (an assertion on db_dsn, a
    driver's error): the terminal, JUnit and HTML all show the report, so it is redacted once, here."""
    if report.longrepr is not None:
        text = str(report.longrepr)
        hidden = redact(text)
        if hidden != text:
            report.longrepr = hidden
    report.sections = [(title, redact(content)) for title, content in report.sections]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    """The steps a smoke test's set-up runs (its session fixtures: the server, the database, a service) are
    recorded with its phase, so that the phase table lists them under it."""
    reporter = progress_reporter(item.config)
    phase = item.config.stash[PHASES_KEY].phase(item)
    reporter.phase = phase.name if phase is not None else None
    try:
        return (yield)
    finally:
        reporter.phase = None


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    settings = config.stash.get(SETTINGS_KEY, None)
    # A project that neither configures the plugin nor used a fixture of it gets no facts, and no provider probe.
    if SERVER_KEY in config.stash or (settings is not None and settings.configured):
        publish_facts(config)

"""SIGTERM and SIGHUP end a session like Ctrl-C: CI sends them to a job that timed out or was cancelled (so does
`timeout 600 pytest`), and that job's report is the one a team needs most. The running test stops, fixtures are
torn down (services, the cluster, temporary databases), the summary and the JUnit and HTML reports are written with
what ran, one line names the signal and the test, and the exit status is non-zero. A second signal during that
teardown ends the process at once; the session's reaper then cleans up what it left."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from pytest_dbsnap.core.proc import SignalStop

STOP_KEY = pytest.StashKey[SignalStop]()


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # Only the main process: xdist workers are stopped by their controller. signal() works in the main thread only.
    if getattr(config, "workerinput", None) is not None:
        return
    try:
        stop = SignalStop()
        stop.install()
    except ValueError:  # not the main thread (pytest run from a thread of another program)
        return
    config.stash[STOP_KEY] = stop


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    stop = item.config.stash.get(STOP_KEY, None)
    if stop is not None:
        stop.running = item.nodeid
    try:
        return (yield)
    finally:
        if stop is not None and stop.received is None:
            stop.running = None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    stop = terminalreporter.config.stash.get(STOP_KEY, None)
    line = stop.describe() if stop is not None else None
    if line:
        terminalreporter.write_line(line, red=True, bold=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    stop = config.stash.get(STOP_KEY, None)
    if stop is not None:
        stop.uninstall()

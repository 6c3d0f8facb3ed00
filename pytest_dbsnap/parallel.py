"""pytest-xdist support: one server per run owned by the controller, a database per worker, the smoke phases
kept in one worker, and the workers' phases and facts carried back to the controller's reports."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_dbsnap.errors import DbsnapError
from pytest_dbsnap.postgres import Server, start_server, watch_server
from pytest_dbsnap.report import publish_facts, report_facts
from pytest_dbsnap.smoke import Phase
from pytest_dbsnap.stash import (
    OUTCOME_KEY,
    PHASES_KEY,
    SERVER_KEY,
    SETTINGS_KEY,
    WORKER_DATABASES_KEY,
    provider_choice,
    worker_id,
)

SMOKE_GROUP = "dbsnap-smoke"
FORGET_SERVER_KEY = pytest.StashKey[Callable[[], None]]()  # the controller's server, given back to its reaper


def _is_controller(config: pytest.Config) -> bool:
    return worker_id(config) is None and config.pluginmanager.has_plugin("dsession")


def _xdist_active(config: pytest.Config) -> bool:
    """pytest-xdist installed and not disabled (-p no:xdist): only then do its marks mean anything."""
    return config.pluginmanager.has_plugin("xdist")


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """After the plugin built the settings: give a worker its own database, and group the smoke phases."""
    if _xdist_active(config):
        # pytest-xdist registers it too; registered here as well because this plugin applies it, so that
        # --strict-markers and -W error never depend on the order the plugins configure in.
        config.addinivalue_line("markers", "xdist_group(name): run the tests of one group in one xdist worker")
    worker = worker_id(config)
    if worker is not None:
        settings = config.stash[SETTINGS_KEY]
        # Each xdist worker restores into its own database, so workers never see each other's writes.
        config.stash[SETTINGS_KEY] = dataclasses.replace(settings, database=f"{settings.database}_{worker}")
        # Workers re-read the command line (dist=load), so the controller's switch to loadgroup comes this way.
        if getattr(config, "workerinput", {}).get("dbsnap_loadgroup"):
            config.option.loadgroup = True
    elif getattr(config.option, "dist", "no") == "load":
        # loadgroup is load for ungrouped tests, and keeps the smoke phases (one group) in one worker.
        config.option.dist = "loadgroup"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The smoke phases describe one stack: under xdist they run in one worker, in order."""
    if not _xdist_active(config):
        return  # without pytest-xdist there are no workers to keep them in, and its mark would be unknown
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


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if not _is_controller(config):
        return
    try:
        server = start_server(config.stash[SETTINGS_KEY], provider_choice(config)[0])
    except DbsnapError as exc:
        raise pytest.UsageError(f"pytest-dbsnap could not get a PostgreSQL server for the workers: {exc}") from None
    config.stash[SERVER_KEY] = server
    config.stash[FORGET_SERVER_KEY] = watch_server(server)
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
                "origin": server.tools.origin,
                "throwaway": server.is_throwaway,
            }
        )


def attached_server(config: pytest.Config) -> Server | None:
    """In a worker: the controller's server, used but never stopped here. Elsewhere None."""
    shared = getattr(config, "workerinput", {}).get("dbsnap_server")
    if not shared:
        return None
    from pytest_dbsnap.postgres.base import PgTools
    from pytest_dbsnap.postgres.external import AttachedServer

    info = json.loads(shared)
    return AttachedServer(
        info["params"],
        PgTools(Path(info["bindir"]), info["version"], info.get("origin", "")),
        provider=f"{info['provider']} (shared by the xdist workers)",
        throwaway=bool(info.get("throwaway")),
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


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is None:
        return
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
    publish_facts(config, data["facts"])


def pytest_unconfigure(config: pytest.Config) -> None:
    if _is_controller(config) and SERVER_KEY in config.stash:
        config.stash[SERVER_KEY].stop()
        config.stash.get(FORGET_SERVER_KEY, lambda: None)()

"""pytest-xdist support: one server per run owned by the controller, a database per worker, the smoke phases
kept in one worker, and the workers' phases and facts carried back to the controller's reports."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dbsnap.errors import DbsnapError
from pytest_dbsnap.plugin.report import publish_facts, report_facts
from pytest_dbsnap.plugin.smoke import Phase
from pytest_dbsnap.plugin.stash import (
    OUTCOME_KEY,
    PHASES_KEY,
    SERVER_KEY,
    SETTINGS_KEY,
    WORKER_DATABASES_KEY,
    WORKER_WARNINGS_KEY,
    provider_choice,
    worker_id,
)

if TYPE_CHECKING:
    from pytest_dbsnap.postgres.base import Server

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
        if settings.configured:
            watch_controller()
    elif getattr(config.option, "dist", "no") == "load":
        # loadgroup is load for ungrouped tests, and keeps the smoke phases (one group) in one worker.
        config.option.dist = "loadgroup"


def watch_controller(interval: float = 0.2, grace: float = 5.0) -> None:
    """End this xdist worker once its controller (its parent) is gone, say killed by a CI cancellation.
    execnet interrupts a worker's main thread 5 s after it loses its controller, but only between Python
    bytecodes: a test blocked in one call (a long sleep, a socket read) kept the worker and the test running until
    the call returned. SIGTERM (which workers leave at its default) ends it at once, and its reaper then drops its
    databases and stops its services; SIGKILL follows if something in the test caught SIGTERM."""
    parent = os.getppid()
    if parent == 1:
        return  # started by init, or already orphaned: there is no controller to watch

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)  # polling the parent's pid: no readiness is waited for here
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="dbsnap-controller-watch", daemon=True).start()


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
    from pytest_dbsnap.stack.servers import start_server, watch_server

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
                "copy_on_write": server.copy_on_write,
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
        copy_on_write=bool(info.get("copy_on_write")),
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


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if _is_controller(config):
        # Every worker is down by now. Stopped here rather than at unconfigure so that the snapshot it writes
        # (or why it wrote none) is in the terminal summary, which comes after this hook.
        _stop_controller_server(config)
        return
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is None:
        return
    # A worker's phases and database line travel to the controller, which writes the reports.
    outcome = config.stash.get(OUTCOME_KEY, None)
    # The controller owns the cluster, so it writes the snapshot of the dump a worker restored cold (or
    # generated) when it stops the cluster: the workers' own server objects are only attached to it.
    cold = outcome is not None and outcome.meta is not None and (outcome.generated or outcome.method == "pg_restore")
    workeroutput["dbsnap"] = json.dumps(
        {
            "database": outcome.describe() if outcome is not None else None,
            "warnings": outcome.warnings if outcome is not None else [],
            "phases": [dataclasses.asdict(p) for p in config.stash[PHASES_KEY].ordered()],
            "facts": report_facts(config) if outcome is not None else {},
            # Restored from a dump: the controller's local cluster drops it before parking, as its own.
            "discard": outcome.name
            if outcome is not None and outcome.meta is not None and outcome.method != "kept as it was"
            else None,
            "snapshot_of": [outcome.meta.environment, outcome.meta.name, outcome.pushed]
            if cold and outcome is not None and outcome.meta is not None
            else None,
        }
    )


def _stop_controller_server(config: pytest.Config) -> None:
    server = config.stash.get(SERVER_KEY, None)
    if server is not None:
        server.stop()
        config.stash.get(FORGET_SERVER_KEY, lambda: None)()


def _request_snapshot(config: pytest.Config, env: str, name: str, pushed: bool) -> None:
    """A worker restored this dump cold: the controller's local cluster writes its snapshot when it stops (and
    pushes it when the worker pushed the dump), as a session without workers does."""
    from pytest_dbsnap.dumps.store import DumpStore
    from pytest_dbsnap.postgres.local import LocalCluster
    from pytest_dbsnap.postgres.snapshot import DumpRef
    from pytest_dbsnap.stack.session import push_snapshot_later

    server = config.stash.get(SERVER_KEY, None)
    settings = config.stash[SETTINGS_KEY]
    if not isinstance(server, LocalCluster) or not settings.cluster_snapshot:
        return
    store = DumpStore(settings.dumps_dir)
    try:
        meta = store.get(env, name)
    except DbsnapError:
        return  # removed meanwhile: nothing to snapshot
    push = push_snapshot_later(settings, meta) if pushed else None
    server.snapshot_after_stop(DumpRef(meta, store.dump_path(env, name)), then=push)


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
    # Every worker finds the same budget too small, each with the sizes it measured: said once.
    said = config.stash.setdefault(WORKER_WARNINGS_KEY, [])
    for warning in data.get("warnings", []):
        if _shape(warning) not in {_shape(w) for w in said}:
            said.append(warning)
    publish_facts(config, data["facts"])
    if data.get("discard"):
        from pytest_dbsnap.postgres.local import LocalCluster

        server = config.stash.get(SERVER_KEY, None)
        if isinstance(server, LocalCluster):
            server.discard_at_park(data["discard"])
    if data.get("snapshot_of"):
        _request_snapshot(config, *data["snapshot_of"])


def _shape(warning: str) -> str:
    """A warning without its numbers: two workers' sizes of one finding differ."""
    return re.sub(r"\d+", "#", warning)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _is_controller(config):
        _stop_controller_server(config)  # when the session ended before sessionfinish (a stop is idempotent)

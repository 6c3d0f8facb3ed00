"""`dbsnap up` and `dbsnap down`: the project's local cluster with the seeded database, kept running between
commands, the no-Docker twin of `docker compose up`. The cluster starts as a session's does (parked folder >
cluster snapshot > pristine copy), gets the dump like a session's database step, and is then handed over: its
folder records the project instead of a live owner pid, so no later start removes it as stale. `down` stops it
and parks its data folder for the next session or `up`."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.core import reaper
from pytest_dbsnap.errors import ServerError
from pytest_dbsnap.postgres.account import runtime_base
from pytest_dbsnap.postgres.base import find_pg_tools, wait_until_accepting
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.postgres.parking import cluster_instructions, stop_postmaster
from pytest_dbsnap.stack.session import DatabaseOutcome, Progress, prepare_database, snapshot_source


def state_path(settings: Settings) -> Path:
    """One running `up` cluster per project, recorded in the runtime folder."""
    key = hashlib.sha256(str(settings.project_root.resolve()).encode()).hexdigest()[:10]
    return runtime_base() / f"up-{key}.json"


@dataclass(frozen=True)
class Up:
    """What `dbsnap up` prints: where the database is and how it got there."""

    database_url: str
    reused: bool
    how: str
    programs: str  # the server's version and where its programs came from


def _cluster(settings: Settings, *, port: int | None = None) -> LocalCluster:
    return LocalCluster(
        find_pg_tools(settings),
        cache_dir=settings.resolved_cache_dir,
        start_timeout=settings.start_timeout,
        port=port,
        warm_key=settings.warm_key,
        warm_owner=settings.project_root,
        snapshot_of=snapshot_source(settings),
    )


def _running(settings: Settings) -> LocalCluster | None:
    """The project's `up` cluster when it still answers, else None (a stale record is removed)."""
    state = state_path(settings)
    try:
        recorded = json.loads(state.read_text())
        folder, params = Path(recorded["folder"]), dict(recorded["params"])
    except (OSError, ValueError, KeyError, TypeError):
        state.unlink(missing_ok=True)
        return None
    cluster = _cluster(settings)
    cluster.folder, cluster.params = folder, params
    try:
        wait_until_accepting(cluster, 2)
    except ServerError:
        state.unlink(missing_ok=True)
        if folder.is_dir():
            stop_postmaster(cluster.tools, cluster.data_dir, cluster.account)
        return None
    return cluster


def bring_up(settings: Settings, *, port: int | None = None, progress: Progress | None = None) -> Up:
    """Start (or find) the project's cluster with the app database restored, and leave it running."""
    running = _running(settings)
    if running is not None:
        return Up(running.dsn(settings.database), True, "already running", running.tools.describe())
    if progress is not None:
        progress("starting the local cluster")
    cluster = _cluster(settings, port=port).start()
    assert cluster.folder is not None
    folder = cluster.folder
    try:
        # Killed before the hand-over, the cluster is this command's: its reaper stops it.
        with reaper.watched(lambda watchdog: watchdog.register(*cluster_instructions(folder))):
            outcome: DatabaseOutcome = prepare_database(
                cluster, settings, spare_in_background=False, progress=progress or (lambda _line: None)
            )
        # From now on the folder belongs to the project, not to this short-lived process.
        (cluster.folder / "owner.json").write_text(
            json.dumps({"up": True, "project_root": str(settings.project_root.resolve())})
        )
        state = state_path(settings)
        fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the secret
        with os.fdopen(fd, "w") as handle:
            json.dump({"folder": str(cluster.folder), "params": cluster.params}, handle)
    except BaseException:
        cluster.stop()
        raise
    return Up(cluster.dsn(settings.database), False, outcome.describe(), cluster.tools.describe())


def bring_down(settings: Settings) -> bool:
    """Stop the project's `up` cluster and park its data folder; False when none was running."""
    state = state_path(settings)
    try:
        recorded = json.loads(state.read_text())
        folder = Path(recorded["folder"])
    except (OSError, ValueError, KeyError, TypeError):
        state.unlink(missing_ok=True)
        return False
    cluster = _cluster(settings)
    cluster.folder = folder
    if folder.is_dir():
        cluster.stop()  # parks the data folder (warm_cluster on) and removes the rest
    state.unlink(missing_ok=True)
    return True

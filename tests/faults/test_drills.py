"""Fault drills: a real run on a small project (a pytest session, or a dbsnap command) is killed with -9 at one
point (seeding, pg_restore, a service starting, the tests running), as a cancelled CI job or the OOM killer
would; within 15 s nothing of it may be left (processes, its cluster, staging databases, temporary files,
locks), and the next run is green with the dump's data."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from drills import (
    ITEMS,
    LEFTOVER_DEADLINE,
    Drilled,
    clusters_of,
    descendants,
    describe,
    drill_runs,
    leftover_files,
    lock_is_free,
    marked,
    reachable_folder,
    run_environ,
    server_processes,
    start_run,
    still_running,
    temporary_databases,
    wait_until,
    write_project,
)

from pytest_dbsnap.dumps import databases
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster

pytestmark = pytest.mark.faults

PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_drill.py"]
DBSNAP = str(Path(sys.executable).with_name("dbsnap"))
REACH_TIMEOUT = 180  # generous: the machine is shared, and a point is reached after a cluster start and a seed


@pytest.fixture
def drilled() -> Iterator[Drilled]:
    with drill_runs() as runs:
        yield runs


@pytest.fixture(scope="module")
def pg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.getbasetemp() / "pg-cache"  # shared with the other server tests
    cache.mkdir(exist_ok=True)
    return cache


@pytest.fixture(scope="module")
def outside_server(pg_cache: Path) -> Iterator[LocalCluster]:
    """A server the drilled runs use as an external one: it outlives them, so their staging databases show."""
    with LocalCluster(find_pg_tools(None), cache_dir=pg_cache).start() as server:
        assert isinstance(server, LocalCluster)
        yield server


@pytest.fixture
def project() -> Iterator[Path]:
    with reachable_folder() as folder:
        yield write_project(folder / "project")


def runs_pg_restore(run: subprocess.Popen[bytes]) -> bool:
    for pid, _started in descendants(run.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "pg_restore":
                return True
        except OSError:
            continue
    return False


def kill_at(
    project: Path,
    env: dict[str, str],
    drilled: Drilled,
    argv: list[str],
    *,
    hold: str,
    reached: Callable[[subprocess.Popen[bytes]], bool],
) -> int:
    """Start a run that holds at `hold`, kill it there with -9, check that nothing of it is left within 15 s;
    returns the killed pid."""
    (project / f"hold-{hold}").write_text("")
    drill_id = drilled.new_id()
    output = project / "killed-run.out"
    run = start_run(argv, cwd=project, env=env, drill_id=drill_id, output=output)
    wait_until(lambda: run.poll() is not None or reached(run), REACH_TIMEOUT, f"reaching {hold}")
    assert run.poll() is None, output.read_text()
    clusters = clusters_of(run.pid)
    processes = descendants(run.pid) | marked(drill_id)
    for cluster in clusters:
        processes |= server_processes(cluster)

    run.send_signal(signal.SIGKILL)
    run.wait()

    took = wait_until(
        lambda: not still_running(processes) and not marked(drill_id),
        LEFTOVER_DEADLINE,
        lambda: f"the end of the run killed at {hold} ({describe(still_running(processes) | marked(drill_id))})",
    )
    wait_until(lambda: not any(c.exists() for c in clusters), LEFTOVER_DEADLINE, "the removal of its cluster folder")
    assert not leftover_files(project / "dumps")
    assert lock_is_free(project / "dumps" / "dev" / ".generate.lock")
    print(f"killed at {hold}: {len(processes)} process(es) gone {took:.1f} s after the kill")
    reaper_log = project / "reports" / "logs" / "reaper.log"
    print(reaper_log.read_text() if reaper_log.exists() else "(no reaper log)")
    (project / f"hold-{hold}").unlink()
    return run.pid


def assert_green(project: Path, env: dict[str, str], drilled: Drilled, argv: list[str]) -> None:
    """The next run passes (its test checks the dump's data) and leaves nothing running either."""
    drill_id = drilled.new_id()
    output = project / "next-run.out"
    run = start_run(argv, cwd=project, env=env, drill_id=drill_id, output=output)
    assert run.wait(timeout=300) == 0, output.read_text()
    wait_until(lambda: not marked(drill_id), LEFTOVER_DEADLINE, "the end of the next run's processes")


def generate_dump(project: Path, env: dict[str, str]) -> None:
    done = subprocess.run([DBSNAP, "generate"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_killed_while_seeding(project: Path, pg_cache: Path, drilled: Drilled) -> None:
    env = run_environ(pg_cache)
    kill_at(project, env, drilled, PYTEST, hold="seed", reached=lambda _run: (project / "seed.started").exists())
    assert_green(project, env, drilled, PYTEST)


def test_killed_during_pg_restore(
    project: Path, pg_cache: Path, outside_server: LocalCluster, drilled: Drilled
) -> None:
    env = run_environ(pg_cache)
    generate_dump(project, env)
    env["DBSNAP_DSN"] = outside_server.dsn("postgres")

    killed = kill_at(project, env, drilled, PYTEST, hold="restore", reached=runs_pg_restore)

    with outside_server.connect() as conn:
        # Its reaper dropped them (ending the backend that pg_restore left building the index).
        wait_until(lambda: not temporary_databases(conn, killed), LEFTOVER_DEADLINE, "the drop of its staging database")
    assert_green(project, env, drilled, PYTEST)


def test_killed_while_a_service_starts(project: Path, pg_cache: Path, drilled: Drilled) -> None:
    env = run_environ(pg_cache)
    generate_dump(project, env)
    started = project / "service.started"

    kill_at(project, env, drilled, PYTEST, hold="service", reached=lambda _run: started.exists())

    # The service's worker and its daemonised child, which left the process group, are gone too.
    assert len(started.read_text().split()) == 3
    assert_green(project, env, drilled, PYTEST)


def test_killed_during_the_tests(pg_cache: Path, drilled: Drilled) -> None:
    with reachable_folder() as folder:
        project = write_project(folder / "project", backend="python -m refapp.backend")
        env = run_environ(pg_cache)
        generate_dump(project, env)
        kill_at(project, env, drilled, PYTEST, hold="tests", reached=lambda _run: (project / "tests.started").exists())
        assert_green(project, env, drilled, PYTEST)


# --- the dbsnap command line ---------------------------------------------------------------------------------


def test_cli_killed_during_restore(
    project: Path, pg_cache: Path, outside_server: LocalCluster, drilled: Drilled
) -> None:
    env = run_environ(pg_cache)
    generate_dump(project, env)
    restore = [DBSNAP, "restore", "--dsn", outside_server.dsn("postgres"), "--database", "restored", "--no-spare"]

    killed = kill_at(project, env, drilled, restore, hold="restore", reached=runs_pg_restore)

    with outside_server.connect() as conn:
        wait_until(lambda: not temporary_databases(conn, killed), LEFTOVER_DEADLINE, "the drop of its staging database")
        assert not databases.exists(conn, "restored")
    assert_green(project, env, drilled, restore)
    with outside_server.connect("restored") as conn:
        assert conn.execute("SELECT count(*) FROM drill_items").fetchone() == (ITEMS,)


def test_cli_killed_while_generating(project: Path, pg_cache: Path, drilled: Drilled) -> None:
    env = run_environ(pg_cache)
    generate = [DBSNAP, "generate"]

    kill_at(project, env, drilled, generate, hold="seed", reached=lambda _run: (project / "seed.started").exists())

    assert DumpStore(project / "dumps").latest("dev") is None
    assert_green(project, env, drilled, generate)
    meta = DumpStore(project / "dumps").latest("dev")
    assert meta is not None
    assert meta.row_counts["public.drill_items"] == ITEMS


def test_xdist_controller_killed_during_the_tests(project: Path, pg_cache: Path, drilled: Drilled) -> None:
    """Under pytest-xdist the controller owns the cluster and each worker its restores and services; a CI
    cancellation kills the controller (the pytest process it started)."""
    env = run_environ(pg_cache)
    generate_dump(project, env)
    parallel = [*PYTEST, "-n", "2"]

    kill_at(project, env, drilled, parallel, hold="tests", reached=lambda _run: (project / "tests.started").exists())

    assert_green(project, env, drilled, parallel)

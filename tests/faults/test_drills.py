"""Fault drills: a real run on a small project (a pytest session, or a dbsnap command) is killed with -9 at one
point (seeding, pg_restore, a service starting, the tests running), as a cancelled CI job or the OOM killer
would; within 15 s nothing of it may be left (processes, its cluster, staging databases, temporary files,
locks), and the next run is green with the dump's data."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from drills import (
    DBSNAP,
    ITEMS,
    LEFTOVER_DEADLINE,
    Drilled,
    assert_green,
    building_the_held_index,
    descendants,
    drill_runs,
    generate_dump,
    kill_at,
    reachable_folder,
    run_environ,
    temporary_databases,
    wait_until,
    write_project,
)

from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster

pytestmark = pytest.mark.faults

PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_drill.py"]


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

    killed = kill_at(project, env, drilled, PYTEST, hold="restore", reached=building_the_held_index(outside_server))

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


FRESH_TEST = """\
import time
from pathlib import Path


def test_private_database_while_the_pool_is_full(fresh_db):
    here = Path(__file__).resolve().parent
    (here / "tests.started").write_text("")
    while (here / "hold-tests").exists():
        time.sleep(0.05)
"""


def test_killed_with_fresh_db_clones_made_ahead(
    project: Path, pg_cache: Path, outside_server: LocalCluster, drilled: Drilled
) -> None:
    """The pool's copies and the test's own clone sit on a server that outlives the run: its reaper drops them."""
    env = run_environ(pg_cache)
    generate_dump(project, env)
    env["DBSNAP_DSN"] = outside_server.dsn("postgres")
    env["DBSNAP_FRESH_DB_POOL"] = "2"
    (project / "test_drill.py").write_text(FRESH_TEST)

    with outside_server.connect() as conn:

        def pool_full(run: subprocess.Popen[bytes]) -> bool:
            names = temporary_databases(conn, run.pid)
            pooled = [n for n in names if n.startswith(databases.POOL_PREFIX)]
            return (project / "tests.started").exists() and len(pooled) == 2

        killed = kill_at(project, env, drilled, PYTEST, hold="tests", reached=pool_full)

        wait_until(lambda: not temporary_databases(conn, killed), LEFTOVER_DEADLINE, "the drop of its pool's copies")
    assert_green(project, env, drilled, PYTEST)


# --- the dbsnap command line ---------------------------------------------------------------------------------


def test_cli_killed_during_restore(
    project: Path, pg_cache: Path, outside_server: LocalCluster, drilled: Drilled
) -> None:
    env = run_environ(pg_cache)
    generate_dump(project, env)
    restore = [DBSNAP, "restore", "--dsn", outside_server.dsn("postgres"), "--database", "restored", "--no-spare"]

    killed = kill_at(project, env, drilled, restore, hold="restore", reached=building_the_held_index(outside_server))

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


BLOCKED_TEST = """\
import time
from pathlib import Path


def test_blocked_where_an_interrupt_does_not_end_it(dbsnap_db):
    assert dbsnap_db.execute("SELECT 1").fetchone() == (1,)
    (Path(__file__).resolve().parent / "blocked.started").write_text("")
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except KeyboardInterrupt:
            pass  # a call that an interrupt of the main thread does not end
"""


def test_xdist_worker_that_an_interrupt_does_not_end_goes_with_its_killed_controller(
    project: Path, pg_cache: Path, drilled: Drilled
) -> None:
    """execnet ends a worker whose controller is gone by interrupting its main thread (KeyboardInterrupt) 5 s
    later. A worker that does not end on that interrupt (a C call that does not return, a teardown waiting for
    the server the controller's reaper stopped: a Django project's worker took 15 s here) ran on; this one would
    for an hour. The plugin's watch of the controller ends it with SIGTERM instead."""
    env = run_environ(pg_cache)
    generate_dump(project, env)
    (project / "test_blocked.py").write_text(BLOCKED_TEST)
    blocked = [*PYTEST[:-1], "test_blocked.py", "-n", "1"]

    kill_at(project, env, drilled, blocked, hold="blocked", reached=lambda _run: (project / "blocked.started").exists())


CAPTURE_POLICY = """
[tool.dbsnap.capture]
keep = ["public.people.id"]

[tool.dbsnap.capture.mask]
"public.people.email" = "email"
"public.people.bio" = "text"
"""


def masking_workers(run: subprocess.Popen[bytes]) -> int:
    """How many of the run's masking worker processes (python -m ...capture.masking) are alive."""
    found = 0
    for pid, _started in descendants(run.pid):
        try:
            if b"pytest_dbsnap.dumps.capture.masking" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found += 1
        except OSError:
            continue
    return found


def test_cli_killed_while_workers_mask_a_capture(
    project: Path, pg_cache: Path, outside_server: LocalCluster, drilled: Drilled
) -> None:
    """`dbsnap capture` masks a large source in worker processes; killed then, the workers end with it (they
    hold the masking key), as do its cluster and its files, and the store gets nothing."""
    source = f"drill_source_{uuid.uuid4().hex[:8]}"
    with outside_server.connect() as admin:
        admin.execute(f'CREATE DATABASE "{source}"')
    try:
        with outside_server.connect(source) as conn:
            # About 40 MB of masked COPY text: past the 16 MB masked in the command's own process.
            conn.execute("CREATE TABLE people (id int PRIMARY KEY, email text NOT NULL, bio text)")
            conn.execute(
                "INSERT INTO people SELECT i, 'person' || i || '@realmail.org', repeat('a true story ' || i, 10) "
                "FROM generate_series(1, 250000) i"
            )
        with (project / "pyproject.toml").open("a") as toml:
            toml.write(CAPTURE_POLICY)
        env = {**run_environ(pg_cache), "DBSNAP_MASK_KEY": "drill-" + uuid.uuid4().hex}
        capture = [DBSNAP, "capture", "--env", "prod", "--dsn", outside_server.dsn(source), "--jobs", "2"]

        kill_at(project, env, drilled, capture, hold="capture", reached=lambda run: masking_workers(run) == 2)

        assert DumpStore(project / "dumps").latest("prod") is None
        assert_green(project, env, drilled, capture)
        meta = DumpStore(project / "dumps").latest("prod")
        assert meta is not None
        assert meta.captured
        assert meta.row_counts["public.people"] == 250000
    finally:
        with outside_server.connect() as admin:
            databases.drop(admin, source)

"""What the fault drills share (imported as `drills`: a conftest name would clash with the other folders' for
mypy): processes told apart by pid and start time, found by walking /proc, and waits
with a deadline (a drill never sleeps as a readiness check)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from filelock import FileLock, Timeout

from pytest_dbsnap.core.reaper import process_start
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.account import runtime_base
from pytest_dbsnap.postgres.base import Server

DRILL_VARIABLE = "DBSNAP_DRILL_ID"  # every process a drilled run starts inherits it, daemons included
LEFTOVER_DEADLINE = 15.0  # the goal: nothing of a killed run alive 15 s after the kill
REACH_TIMEOUT = 180  # generous: the machine is shared, and a point is reached after a cluster start and a seed
DBSNAP = str(Path(sys.executable).with_name("dbsnap"))

Process = tuple[int, str | None]  # pid and its start time: a reused pid is another process


def is_running(pid: int) -> bool:
    """True while the process exists and has not exited; this container's PID 1 does not reap orphans, so a
    finished process can linger as a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def still_running(processes: set[Process]) -> set[Process]:
    return {(pid, started) for pid, started in processes if is_running(pid) and process_start(pid) == started}


def descendants(root: int) -> set[Process]:
    """The live processes below `root` (children, grandchildren...), by their parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[Process] = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if is_running(pid):
            found.add((pid, process_start(pid)))
        todo.extend(children.get(pid, []))
    return found


def marked(drill_id: str) -> set[Process]:
    """The live processes carrying a drill's id in their environment: everything its run started, also the
    ones that left the process tree (a postmaster, a daemonised child of a service)."""
    needle = f"{DRILL_VARIABLE}={drill_id}".encode()
    found: set[Process] = set()
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and is_running(pid):
            found.add((pid, process_start(pid)))
    return found


def wait_until(condition: Callable[[], object], seconds: float, what: str | Callable[[], str]) -> float:
    """Poll until `condition` is true; returns the seconds it took, fails naming `what` at the deadline (a
    callable is asked then, to describe the state at that moment)."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > seconds:
            pytest.fail(f"{what() if callable(what) else what} did not happen within {seconds:g} s")
        time.sleep(0.05)
    return time.monotonic() - began


class Drilled:
    """Runs started under a drill id, so that whatever is left at the end of a test can be ended (only
    processes of runs the test started carry the id)."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def new_id(self) -> str:
        drill_id = uuid.uuid4().hex
        self.ids.append(drill_id)
        return drill_id

    def kill_leftovers(self) -> None:
        for drill_id in self.ids:
            for pid, _started in marked(drill_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def drill_runs() -> Iterator[Drilled]:
    """For a test's fixture: the drilled runs, whatever of them is left ended at the end."""
    runs = Drilled()
    try:
        yield runs
    finally:
        runs.kill_leftovers()


def start_run(
    argv: list[str], *, cwd: Path, env: dict[str, str], drill_id: str, output: Path
) -> subprocess.Popen[bytes]:
    """A run as CI starts it: its own process, output to a file, the drill id in its environment."""
    with output.open("ab") as log:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env={**env, DRILL_VARIABLE: drill_id},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


# --- killing a run at a point, and the next run -----------------------------------------------------------------


def runs_pg_restore(run: subprocess.Popen[bytes]) -> bool:
    for pid, _started in descendants(run.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "pg_restore":
                return True
        except OSError:
            continue
    return False


def building_the_held_index(server: Server) -> Callable[[subprocess.Popen[bytes]], bool]:
    """The run's pg_restore is held building the gated index: its backend shows on `server`, and it stays
    there until the test removes hold-restore, so a kill that follows finds the run at that point."""

    def held(run: subprocess.Popen[bytes]) -> bool:
        if not runs_pg_restore(run):
            return False
        with server.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE 'CREATE INDEX drill_items_gate %%'"
            ).fetchone()
        return bool(row and row[0])

    return held


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


# --- a small project to drill: the reference app's migrations and seed, stand-in services, holds -----------------

# A point of the run holds while its file `hold-<point>` exists in the project, so a drill can kill the run there
# (and the next run, without the file, goes through). The restore hold is in the dump itself: the index of
# drill_items calls drill_gate(), which waits while hold-restore exists, so pg_restore is caught building it.
# (A field of pg_stat_file's row, not the row: `row IS NOT NULL` needs every field set, and the creation time
# is NULL on Linux, so the whole row tested that way never held.)
PROJECT_TOML = """\
[tool.dbsnap]
database = "app"
env = "dev"
dumps_dir = "dumps"
warm_cluster = false
migrate_command = "python -m refapp.migrate"
seed_command = "python seed.py"
schema_version_query = "SELECT version_num FROM alembic_version"
fingerprint_inputs = ["seed.py"]

[tool.dbsnap.backend]
command = "{backend}"
health_url = "http://127.0.0.1:{{port}}/health"
start_timeout = 60
"""

SEED = '''\
"""The drills' seed: the reference app's, then a table whose index waits while hold-restore exists."""
import os, time
from pathlib import Path

import psycopg
from refapp import seed

here = Path(__file__).resolve().parent
(here / "seed.started").write_text(str(os.getpid()))
while (here / "hold-seed").exists():
    time.sleep(0.05)
seed.main(["--scale", "60"])
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("""
        CREATE FUNCTION drill_gate(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN
            WHILE (pg_stat_file('HOLD', true)).size IS NOT NULL LOOP
                PERFORM pg_sleep(0.05);
            END LOOP;
            RETURN i;
        END $$""".replace("HOLD", str(here / "hold-restore")))
    conn.execute("CREATE TABLE drill_items (id int PRIMARY KEY, name text NOT NULL)")
    conn.execute("INSERT INTO drill_items SELECT g, 'item ' || g FROM generate_series(1, 500) g")
    conn.execute("CREATE INDEX drill_items_gate ON drill_items (drill_gate(id))")
'''
ITEMS = 500

# A stand-in backend whose children outlive a plain kill of its main process: one in its process group, one
# daemonised into a session of its own. It answers 503 while hold-service exists.
SERVICE = """\
import os, subprocess, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

here = Path(__file__).resolve().parent
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
(here / "service.started.tmp").write_text(f"{os.getpid()} {worker.pid} {daemon.pid}")
os.replace(here / "service.started.tmp", here / "service.started")  # whole when the drill sees it


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        status = 503 if (here / "hold-service").exists() else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

# The project's test: the backend answers and the data is the dump's; it holds while hold-tests exists.
TEST = """\
import time
from pathlib import Path


def test_backend_serves_the_restored_data(backend, dbsnap_db, dbsnap_dump):
    assert backend.client.get("/health").status_code == 200
    assert dbsnap_db.execute("SELECT count(*) FROM drill_items").fetchone() == (ITEMS,)
    nodes = dbsnap_db.execute("SELECT count(*) FROM reality_nodes").fetchone()
    assert nodes == (dbsnap_dump.row_counts["public.reality_nodes"],)
    here = Path(__file__).resolve().parent
    (here / "tests.started").write_text("")
    while (here / "hold-tests").exists():
        time.sleep(0.05)
""".replace("ITEMS", str(ITEMS))


def write_project(root: Path, *, backend: str = "python service.py") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(PROJECT_TOML.format(backend=backend))
    (root / "seed.py").write_text(SEED)
    (root / "service.py").write_text(SERVICE)
    (root / "test_drill.py").write_text(TEST)
    return root


@contextlib.contextmanager
def reachable_folder() -> Iterator[Path]:
    """A folder the server's unprivileged account can read (pytest's tmp_path is root's own, mode 0700): the
    restore hold is a file the server itself looks at."""
    folder = Path(tempfile.mkdtemp(prefix="dbsnap-drill-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_environ(cache: Path) -> dict[str, str]:
    """Our environment without settings that would leak in (DBSNAP_*, DATABASE_URL) and with the shared cache."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("DBSNAP_") and k not in {"DATABASE_URL", "CI"}}
    return {**keep, "DBSNAP_CACHE_DIR": str(cache)}


def clusters_of(pid: int) -> list[Path]:
    """The local cluster folders a process made (their owner file names it)."""
    found = []
    for folder in runtime_base().glob("cluster-*"):
        try:
            owner = json.loads((folder / "owner.json").read_text())
        except (OSError, ValueError):
            continue
        if owner.get("pid") == pid:
            found.append(folder)
    return found


def server_processes(cluster: Path) -> set[Process]:
    """A local cluster's postmaster and its children (backends, background workers). PostgreSQL rewrites its
    process titles over the memory /proc/<pid>/environ reads, so the drill id does not find them."""
    try:
        pid = int((cluster / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return set()
    return {(pid, process_start(pid)), *descendants(pid)} if is_running(pid) else set()


def describe(processes: set[Process]) -> str:
    """The command lines of processes, for a failure message."""
    shown = []
    for pid, _started in sorted(processes):
        try:
            shown.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes().replace(bytes(1), b' ').decode()[:120]}")
        except OSError:
            shown.append(f"{pid}: (gone)")
    return "; ".join(shown)


def temporary_databases(conn: psycopg.Connection[tuple[object, ...]], pid: int) -> list[str]:
    return databases.temporary_names_of(conn, pid)


def leftover_files(store: Path) -> list[Path]:
    """Temporary files of the dump store (a dump or metadata on its way in)."""
    return sorted(path for path in store.rglob(".*") if path.is_file() and path.name.endswith(".tmp"))


def lock_is_free(lock_file: Path) -> bool:
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    lock.release()
    return True

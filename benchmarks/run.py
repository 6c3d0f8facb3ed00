"""Benchmarks of pytest-dbsnap against plain pg_restore and the reference app's own seed.

    .venv/bin/python benchmarks/run.py [--quick] [--scales 10MB 200MB 1GB] [--reps N] [--out FILE] [--no-smoke]

All server work runs on a LocalCluster started by the project's own code in a scratch folder of this run,
which is stopped and removed at the end, also on Ctrl-C, SIGTERM or an error. The markdown table goes to
stdout and to --out (default benchmarks/out/bench-<UTC time>.md, with the raw samples beside it as .json);
progress goes to stderr. benchmarks/README.md says what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import bench_data
import bench_report as rpt
from bench_data import Dataset, Scale

from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.core.proc import run, tail
from pytest_dbsnap.core.progress import Reporter
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.restore import (
    pg_restore_into,
    prepare_spare,
    restore_dump,
    spare_name,
    template_name,
    verify_file,
)
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.account import server_account
from pytest_dbsnap.postgres.base import PgTools, find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.postgres.parking import stop_postmaster

ROOT = Path(__file__).resolve().parent.parent
FULL_SCALES = ("10MB", "200MB", "1GB")
QUICK_SCALES = ("1MB", "3MB", "6MB")
LARGE_BYTES = 500_000_000  # scales from here on get --large-reps repetitions: one pg_restore takes a minute
SOURCE_DB = "bench_seeded"  # the seeded smallest scale, source of the larger ones
BUILD_DB = "bench_build"  # a larger scale while it is built and dumped
PLAIN_DB = "bench_plain"  # target of the plain pg_restore baseline
TARGET_DB = "bench_app"  # target of dbsnap's restores, as the app database of a session
SESSION_TIMEOUT = 900.0  # a smoke session that runs longer than this is stuck, not slow
TARGET_WARM_MID, TARGET_WARM_LARGE, TARGET_COLD = 20.0, 100.0, 1.15
TARGET_CLUSTER_WARM, TARGET_SMOKE_WARM = 1.0, 5.0
TARGET_FRESH_DB = 0.1  # seconds per test for the reference app's default data (the smallest scale)


def _interrupted(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up the same way as Ctrl-C


class Bench:
    """One benchmark run: its scratch folder, the clusters and child sessions it started, and the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.began = time.monotonic()
        self.cores = os.cpu_count() or 1
        self.scratch = Path(tempfile.mkdtemp(prefix="dbsnap-bench-"))
        self.scratch.chmod(0o755)  # the server account must reach its cluster folders inside
        self._tempdir = tempfile.tempdir
        # runtime_base() of every cluster started here (and its parked folder) lands in the scratch folder.
        tempfile.tempdir = str(self.scratch)
        self.clusters: list[LocalCluster] = []
        self.child: subprocess.Popen[bytes] | None = None
        self.tools: PgTools | None = None
        self.report = rpt.Report(self.cores, {})
        self.datasets: list[Dataset] = []
        self.main: LocalCluster  # the server for all database work, started by run()

    # --- plumbing -------------------------------------------------------------------------------------------

    def progress(self, message: str) -> None:
        print(f"[{time.monotonic() - self.began:7.1f} s] {message}", file=sys.stderr, flush=True)

    def settings(self) -> Settings:
        """The project's settings from pyproject.toml, with every folder it writes to inside the scratch folder."""
        return bench_data.scratch_settings(self.scratch)

    def start_cluster(self, cache_dir: Path, warm_key: str | None = None) -> tuple[LocalCluster, float]:
        assert self.tools is not None
        cluster = LocalCluster(self.tools, cache_dir=cache_dir, warm_key=warm_key)
        self.clusters.append(cluster)
        began = time.monotonic()
        cluster.start()
        return cluster, time.monotonic() - began

    def settle(self) -> None:
        with self.main.connect() as conn:
            bench_data.settle(conn)

    def reps_for(self, scale: Scale) -> int:
        return int(self.args.large_reps if scale.target_bytes >= LARGE_BYTES else self.args.reps)

    def close(self) -> None:
        """Stop everything this run started and remove its scratch folder; safe to call at any point."""
        self.end_child()
        for cluster in reversed(self.clusters):
            with contextlib.suppress(Exception):
                cluster.stop()
        if self.tools is not None:
            # A start or a child session interrupted half way can leave a postmaster: stop it by its data folder.
            for pid_file in self.scratch.glob("**/postmaster.pid"):
                with contextlib.suppress(Exception):
                    stop_postmaster(self.tools, pid_file.parent, server_account())
        shutil.rmtree(self.scratch, ignore_errors=True)
        tempfile.tempdir = self._tempdir

    def end_child(self) -> None:
        """Interrupt a running smoke session like Ctrl-C would (its own teardown stops its cluster), then kill."""
        child, self.child = self.child, None
        rpt.end_session(child)

    # --- the run --------------------------------------------------------------------------------------------

    def run(self) -> rpt.Report:
        settings = self.settings()
        self.tools = find_pg_tools(settings)
        self.progress(f"scratch folder {self.scratch}; starting the local cluster")
        self.main, seconds = self.start_cluster(settings.resolved_cache_dir)
        self.report.row(rpt.CLUSTER_COLD).samples.append(seconds)  # its first start ran initdb
        self.report.machine = self.machine_facts()
        self.bench_cluster_starts(settings.resolved_cache_dir)
        store = DumpStore(settings.dumps_dir)
        scales = [bench_data.parse_scale(text) for text in self.args.scales]
        seeded: Dataset | None = None
        bytes_per_copy = 0.0
        for scale in scales:
            if seeded is None:
                seeded = self.build_seeded(settings, store, scale)
                dataset, bytes_per_copy = seeded, float(seeded.table_bytes)
            else:
                dataset, copies = self.build_synthetic(settings, store, scale, seeded, bytes_per_copy)
                bytes_per_copy = dataset.table_bytes / copies
            self.bench_restores(dataset)
            if dataset is not seeded:
                store.remove(dataset.scale.env, dataset.meta.name)
        with self.main.connect() as conn:
            databases.drop(conn, SOURCE_DB)
        if seeded is not None:
            self.extrapolate_seeding(seeded, scales)
        if self.args.smoke:
            self.bench_smoke()
        else:
            for key in (rpt.SMOKE_COLD, rpt.SMOKE_WARM, rpt.RSS_SMOKE):
                self.report.row(key).note = "not run (--no-smoke)"
        self.memory_rows()
        self.judge_targets(scales)
        # Table order: by scale, seeding first within one; the rows without a scale last.
        order = {scale.label: index for index, scale in enumerate(scales)}
        keys = list(rpt.labels(self.cores))
        self.report.rows.sort(key=lambda r: (r.scale is None, order.get(r.scale or "", 0), keys.index(r.key)))
        self.report.machine["load average (1, 5, 15 min) at the end"] = _loadavg()
        self.report.machine["benchmark wall time"] = f"{time.monotonic() - self.began:.0f} s"
        return self.report

    def machine_facts(self) -> dict[str, str]:
        memory = "?"
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
        cpu = "?"
        with contextlib.suppress(OSError):
            cpu = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")
                ),
                "?",
            )
        assert self.tools is not None
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
        return {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{self.cores} cores ({cpu}), {memory} memory, {platform.platform()}",
            "PostgreSQL": f"server {self.main.version}, client programs {self.tools.version} ({self.tools.bindir})",
            "project": f"pytest-dbsnap at {commit or '?'}, Python {platform.python_version()}",
            "repetitions": f"{self.args.reps} (scales of {LARGE_BYTES / 1e6:.0f} MB and more, and the cold smoke "
            f"session: {min(self.args.reps, self.args.large_reps)})",
            "load average (1, 5, 15 min) at the start": _loadavg(),
        }

    # --- cluster starts ---------------------------------------------------------------------------------------

    def bench_cluster_starts(self, cache_dir: Path) -> None:
        reps = self.args.reps
        self.progress("cluster start: cold (initdb into a fresh cache)")
        for rep in range(reps - 1):  # the main cluster's own start was the first cold sample
            fresh = self.scratch / f"cold-cache-{rep}"
            cluster, seconds = self.start_cluster(fresh)
            assert not cluster.reused_pristine, "a fresh cache must run initdb"
            cluster.stop()
            shutil.rmtree(fresh, ignore_errors=True)
            self.report.row(rpt.CLUSTER_COLD).samples.append(seconds)
        self.progress("cluster start: warm (pristine copy)")
        for _ in range(reps):
            cluster, seconds = self.start_cluster(cache_dir)
            assert cluster.reused_pristine
            cluster.stop()
            self.report.row(rpt.CLUSTER_PRISTINE).samples.append(seconds)
        self.progress("cluster start: warm (parked data folder)")
        warm_key = f"bench{os.getpid()}"
        primer, _ = self.start_cluster(cache_dir, warm_key)
        primer.stop()  # parks its data folder
        for _ in range(reps):
            cluster, seconds = self.start_cluster(cache_dir, warm_key)
            assert cluster.started_warm, "the parked folder was not taken"
            cluster.stop()
            self.report.row(rpt.CLUSTER_PARKED).samples.append(seconds)
        if primer.warm_slot is not None:
            shutil.rmtree(primer.warm_slot, ignore_errors=True)

    # --- datasets ---------------------------------------------------------------------------------------------

    def build_seeded(self, settings: Settings, store: DumpStore, scale: Scale) -> Dataset:
        nodes = bench_data.seed_nodes(scale)
        row = self.report.row(rpt.SEED, scale.label)
        for rep in range(self.args.reps):
            self.progress(f"{scale.label}: seeding {nodes} nodes through refapp.seed ({rep + 1}/{self.args.reps})")
            bench_data.create_migrated(self.main, settings, SOURCE_DB)  # untimed: the seed's input
            self.settle()
            row.samples.append(bench_data.run_seed(self.main, settings, SOURCE_DB, nodes))
        with self.main.connect(SOURCE_DB) as conn:
            conn.execute("VACUUM (FREEZE, ANALYZE)")  # settled, like the larger scales
        assert row.median is not None
        return self.finish_dataset(settings, store, scale, SOURCE_DB, f"`refapp.seed --scale {nodes}`", row.median)

    def build_synthetic(
        self, settings: Settings, store: DumpStore, scale: Scale, seeded: Dataset, bytes_per_copy: float
    ) -> tuple[Dataset, int]:
        """Copies of the seeded data up to the scale's size; built again once or twice if the guess was off
        (rebuilt indexes are denser than the seed's row-by-row ones, so the first guess runs small)."""
        began = time.monotonic()
        copies = max(2, round(scale.target_bytes / bytes_per_copy))
        for attempt in range(3):
            self.progress(f"{scale.label}: building {copies} copies of the seeded data in SQL")
            bench_data.synthesize(self.main, SOURCE_DB, BUILD_DB, copies, self.progress)
            table_bytes = bench_data.measure(self.main, BUILD_DB)[2]
            if abs(table_bytes / scale.target_bytes - 1) <= 0.15 or attempt == 2:
                break
            copies = max(2, round(scale.target_bytes / (table_bytes / copies)))
            self.progress(f"{scale.label}: {bench_data.pretty_bytes(table_bytes)} is off target, again")
        how = f"SQL: {copies} copies of the {seeded.scale.label} seed"
        dataset = self.finish_dataset(settings, store, scale, BUILD_DB, how, time.monotonic() - began)
        with self.main.connect() as conn:
            databases.drop(conn, BUILD_DB)
        return dataset, copies

    def finish_dataset(
        self, settings: Settings, store: DumpStore, scale: Scale, database: str, how: str, build_seconds: float
    ) -> Dataset:
        nodes, edges, table_bytes, database_bytes = bench_data.measure(self.main, database)
        self.progress(f"{scale.label}: pg_dump of {bench_data.pretty_bytes(table_bytes)} of table data")
        self.settle()
        meta, dump_seconds = bench_data.dump_database(self.main, settings, store, scale.env, database, how)
        self.report.row(rpt.DUMP, scale.label).samples.append(dump_seconds)
        dataset = Dataset(
            scale,
            how,
            nodes,
            edges,
            table_bytes,
            database_bytes,
            build_seconds,
            meta,
            store.dump_path(scale.env, meta.name),
            dump_seconds,
        )
        self.datasets.append(dataset)
        self.report.datasets.append(dataset.describe())
        self.progress(dataset.describe())
        return dataset

    def extrapolate_seeding(self, seeded: Dataset, scales: Sequence[Scale]) -> None:
        """Seeding the larger scales through the app would take hours: scale the measured time by row count."""
        measured = self.report.median(rpt.SEED, seeded.scale.label)
        assert measured is not None
        for dataset in self.datasets:
            if dataset is not seeded:
                row = self.report.row(rpt.SEED, dataset.scale.label)
                row.estimated = measured * dataset.rows / seeded.rows
                row.note = f"extrapolated from {seeded.scale.label} by row count"

    # --- restores ---------------------------------------------------------------------------------------------

    def drop_dbsnap_copies(self, dataset: Dataset, *, target: bool) -> None:
        with self.main.connect() as conn:
            for name in (spare_name(dataset.meta), template_name(dataset.meta)):
                if databases.exists(conn, name):
                    databases.drop_template(conn, name)
            if target:
                databases.drop(conn, TARGET_DB)

    def timed(self, step: Callable[[], object]) -> tuple[float, object]:
        self.settle()
        began = time.monotonic()
        result = step()
        return time.monotonic() - began, result

    def bench_restores(self, dataset: Dataset) -> None:
        label, reps = dataset.scale.label, self.reps_for(dataset.scale)
        meta, path = dataset.meta, dataset.dump_path
        self.drop_dbsnap_copies(dataset, target=True)
        self.progress(f"{label}: sha256 verification alone")
        for _ in range(reps):
            seconds, _ = self.timed(lambda: verify_file(meta, path))
            self.report.row(rpt.VERIFY, label).samples.append(seconds)
        for rep in range(reps):
            # Interleaved, so a disturbance from elsewhere on the machine hits the baselines and dbsnap alike.
            self.progress(f"{label}: plain pg_restore -j1, -j{self.cores} and dbsnap cold restore ({rep + 1}/{reps})")
            self.report.row(rpt.PLAIN_1, label).samples.append(self.plain_restore(path, 1))
            self.report.row(rpt.PLAIN_N, label).samples.append(self.plain_restore(path, self.cores))
            self.drop_dbsnap_copies(dataset, target=True)  # cold: no template, spare or target on the server
            seconds, result = self.timed(
                lambda: in_a_step(lambda: restore_dump(self.main, meta, path, TARGET_DB, jobs=self.cores))
            )
            _expect_method(result, "pg_restore")
            self.report.row(rpt.COLD, label).samples.append(seconds)
        self.progress(f"{label}: dbsnap warm restore, template clone")
        for _ in range(reps):
            seconds, result = self.timed(lambda: restore_dump(self.main, meta, path, TARGET_DB, jobs=self.cores))
            _expect_method(result, "template clone")
            self.report.row(rpt.CLONE, label).samples.append(seconds)
        self.progress(f"{label}: dbsnap warm restore, spare swap")
        for _ in range(reps):
            prepare_spare(self.main, meta)  # untimed: a session makes it in the background after its restore
            seconds, result = self.timed(lambda: restore_dump(self.main, meta, path, TARGET_DB, jobs=self.cores))
            _expect_method(result, "spare swap")
            self.report.row(rpt.SPARE, label).samples.append(seconds)
        self.progress(f"{label}: fresh_db per test (clone + drop)")
        for _ in range(reps):
            seconds, _ = self.timed(lambda: self.fresh_db_cycle(meta))
            self.report.row(rpt.FRESH, label).samples.append(seconds)
        self.progress(f"{label}: cp -r of the database folder")
        for _ in range(reps):
            self.report.row(rpt.FLOOR, label).samples.append(self.copy_floor())
        self.drop_dbsnap_copies(dataset, target=True)

    def fresh_db_cycle(self, meta: DumpMeta) -> None:
        """What the fresh_db fixture costs a test: the clone before it and the drop after it."""
        name = databases.temporary_name(databases.FRESH_PREFIX)
        with self.main.connect() as conn:
            databases.clone(conn, template_name(meta), name, copy_on_write=self.main.copy_on_write)
            databases.drop(conn, name)

    def plain_restore(self, path: Path, jobs: int) -> float:
        """The baseline: pg_restore with the flags dbsnap passes, into an empty database."""
        with self.main.connect() as conn:
            databases.drop(conn, PLAIN_DB)
            databases.create_empty(conn, PLAIN_DB)
        seconds, _ = self.timed(lambda: pg_restore_into(self.main, path, PLAIN_DB, jobs))
        with self.main.connect() as conn:
            databases.drop(conn, PLAIN_DB)
        return seconds

    def copy_floor(self) -> float:
        """cp -r of the restored database's folder: what any copy of those bytes costs on this disk."""
        with self.main.connect() as conn:
            oid = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (TARGET_DB,)).fetchone()
            data_dir = conn.execute("SHOW data_directory").fetchone()
        assert oid is not None
        assert data_dir is not None
        source = Path(str(data_dir[0])) / "base" / str(oid[0])
        copy = self.scratch / "floor-copy"
        try:
            seconds, _ = self.timed(lambda: run(["cp", "-r", str(source), str(copy)], what="cp -r"))
        finally:
            shutil.rmtree(copy, ignore_errors=True)
        return seconds

    # --- smoke sessions ---------------------------------------------------------------------------------------

    def session_env(self, folder: Path, *, warm: bool) -> dict[str, str]:
        """A session of this repository with its dumps, caches, logs and clusters in a folder of ours."""
        tmp = folder / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        tmp.chmod(0o755)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("DBSNAP_") and key not in {"DATABASE_URL", "PYTEST_ADDOPTS"}
        }
        return env | {
            "TMPDIR": str(tmp),  # its runtime folder and parked cluster, apart from other sessions on this machine
            "DBSNAP_DUMPS_DIR": str(folder / "dumps"),
            "DBSNAP_CACHE_DIR": str(folder / "cache"),
            "DBSNAP_LOGS_DIR": str(folder / "logs"),
            "DBSNAP_WARM_CLUSTER": "true" if warm else "false",
        }

    def pytest_session(self, env: dict[str, str], log_path: Path) -> tuple[float, float, int]:
        """(seconds, peak RSS in MB, exit code) of one whole `pytest -m smoke --skip-frontend` session."""
        command = [sys.executable, "-m", "pytest", "-m", "smoke", "--skip-frontend", "-q", "-p", "no:cacheprovider"]
        with log_path.open("wb") as log:
            began = time.monotonic()
            self.child = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            while True:
                # wait4 rather than wait: it also gives the session's own resource usage (peak RSS).
                pid, status, usage = os.wait4(self.child.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() - began > SESSION_TIMEOUT:
                    self.end_child()
                    raise TimeoutError(f"the smoke session ran over {SESSION_TIMEOUT:.0f} s; see {log_path}")
                time.sleep(0.005)
            seconds = time.monotonic() - began
            self.child.returncode = os.waitstatus_to_exitcode(status)
            self.child = None
        return seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)

    def bench_smoke(self) -> None:
        cold, warm = self.report.row(rpt.SMOKE_COLD), self.report.row(rpt.SMOKE_WARM)
        rss = self.report.row(rpt.RSS_SMOKE, None)
        rss.unit = "MB"
        peaks: list[float] = []
        folder = self.scratch / "smoke-none"
        cold_reps = min(self.args.reps, self.args.large_reps)
        for rep in range(cold_reps):
            self.progress(f"smoke session, cold ({rep + 1}/{cold_reps})")
            shutil.rmtree(folder, ignore_errors=True)
            folder = self.scratch / f"smoke-cold-{rep}"
            log = folder / "session.log"
            env = self.session_env(folder, warm=False)
            seconds, peak, code = self.pytest_session(env, log)
            if code != 0:
                self.smoke_failed(f"the cold session exited with {code}", log)
                return
            cold.samples.append(seconds)
            peaks.append(peak)
        # The warm sessions reuse the last cold session's dump and cache; the first one parks the cluster.
        env = self.session_env(folder, warm=True)
        for rep in range(self.args.reps + 1):
            what = "priming: restores the dump and parks the cluster" if rep == 0 else f"{rep}/{self.args.reps}"
            self.progress(f"smoke session, warm ({what})")
            log = folder / f"session-warm-{rep}.log"
            seconds, peak, code = self.pytest_session(env, log)
            if code != 0:
                self.smoke_failed(f"a warm session exited with {code}", log)
                return
            if rep == 0:
                continue
            if "spare swap" not in log.read_text(errors="replace"):
                self.report.notes.append(f"warm smoke session {rep} did not restore by spare swap (see its log)")
            warm.samples.append(seconds)
            peaks.append(peak)
        rss.samples.append(max(peaks))
        shutil.rmtree(folder, ignore_errors=True)

    def smoke_failed(self, why: str, log: Path) -> None:
        last = " / ".join(line for line in tail(log.read_text(errors="replace"), 4).splitlines() if line.strip())
        note = f"`pytest -m smoke --skip-frontend` fails here ({why}: {last[:300]})"
        for key in (rpt.SMOKE_COLD, rpt.SMOKE_WARM, rpt.RSS_SMOKE):
            row = self.report.row(key)
            row.samples.clear()
            row.note = "the smoke suite does not pass yet, see the notes"
        self.report.notes.append(note)
        self.progress(note)

    # --- summary ----------------------------------------------------------------------------------------------

    def memory_rows(self) -> None:
        row = self.report.row(rpt.RSS_SELF)
        row.unit = "MB"
        row.samples.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        self.report.notes.append(
            f"largest peak RSS of any program this run waited for (pg_restore, pg_dump, the "
            f"seed, cp, pytest sessions; RUSAGE_CHILDREN): {children:.0f} MB"
        )

    def judge_targets(self, scales: Sequence[Scale]) -> None:
        """The targets of the issue, at the 2nd scale (200 MB) and the 3rd (1 GB) of this run."""
        report, plain = self.report, f"pg_restore -j{self.cores}"

        def at_least(key: str, scale: str, factor: float) -> None:
            row, baseline = report.find(key, scale), report.median(rpt.PLAIN_N, scale)
            if row is not None and row.median is not None and baseline is not None:
                row.target, row.met = f"≥ {factor:.0f}x faster than {plain}", baseline / row.median >= factor

        if len(scales) > 1:
            mid = scales[1].label
            at_least(rpt.SPARE, mid, TARGET_WARM_MID)
            at_least(rpt.CLONE, mid, TARGET_WARM_MID)
            cold, baseline = report.find(rpt.COLD, mid), report.median(rpt.PLAIN_N, mid)
            if cold is not None and cold.median is not None and baseline is not None:
                cold.target = f"≤ {TARGET_COLD}x the time of {plain} ({cold.median / baseline:.2f}x)"
                cold.met = cold.median <= TARGET_COLD * baseline
        if len(scales) > 2:
            at_least(rpt.SPARE, scales[2].label, TARGET_WARM_LARGE)
            at_least(rpt.CLONE, scales[2].label, TARGET_WARM_LARGE)
        fresh = report.find(rpt.FRESH, scales[0].label) if scales else None
        if fresh is not None and fresh.median is not None:
            fresh.target, fresh.met = f"< {TARGET_FRESH_DB * 1000:.0f} ms", fresh.median < TARGET_FRESH_DB
        for key in (rpt.CLUSTER_PRISTINE, rpt.CLUSTER_PARKED):
            row = report.row(key)
            if row.median is not None:
                row.target, row.met = f"< {TARGET_CLUSTER_WARM:.0f} s", row.median < TARGET_CLUSTER_WARM
        smoke = report.row(rpt.SMOKE_WARM)
        if smoke.median is not None:
            smoke.target, smoke.met = f"< {TARGET_SMOKE_WARM:.0f} s", smoke.median < TARGET_SMOKE_WARM
        if self.args.quick:
            report.notes.append("quick mode: tiny scales, so the targets (meant for 200 MB and 1 GB) say little")


def in_a_step(call: Callable[[], object]) -> object:
    """A session's restore runs inside a progress step, so its pg_restore also counts the archive's table of
    contents (pg_restore --list) and follows --verbose for the bar: the cold restore row pays that as sessions do."""
    reporter = Reporter()
    reporter.step("restoring")
    try:
        return call()
    finally:
        reporter.end()


def _expect_method(result: object, method: str) -> None:
    got = getattr(result, "method", None)
    if got != method:
        raise RuntimeError(f"expected a {method} restore, got {got!r}: the benchmark's setup of that path is wrong")


def _loadavg() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small scales ({' '.join(QUICK_SCALES)}) for a small machine or a test; reps default to 3",
    )
    parser.add_argument(
        "--scales",
        nargs="+",
        metavar="SIZE",
        help=f"table data sizes, the first seeded through the app, the others built in SQL "
        f"(default {' '.join(FULL_SCALES)})",
    )
    parser.add_argument("--reps", type=_positive, default=None, help="repetitions of each step (default 5; quick 3)")
    parser.add_argument(
        "--large-reps",
        type=_positive,
        default=None,
        help=f"repetitions at scales of {LARGE_BYTES / 1e6:.0f} MB and more and of the cold smoke session "
        "(default 3; quick 1)",
    )
    parser.add_argument("--out", type=Path, help="markdown file to write (default benchmarks/out/bench-<time>.md)")
    parser.add_argument("--no-smoke", dest="smoke", action="store_false", help="skip the pytest smoke sessions")
    args = parser.parse_args(argv)
    args.scales = args.scales or list(QUICK_SCALES if args.quick else FULL_SCALES)
    args.reps = args.reps or (3 if args.quick else 5)
    args.large_reps = min(args.large_reps or (1 if args.quick else 3), args.reps)
    try:
        for text in args.scales:
            bench_data.parse_scale(text)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    # Started in the background by a shell, SIGINT arrives ignored: Ctrl-C (or kill -INT) must still clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    bench = Bench(args)
    try:
        report = bench.run()
    except KeyboardInterrupt:
        print("interrupted: stopping what this run started", file=sys.stderr)
        return 130
    finally:
        bench.close()
    text = report.markdown()
    out = args.out or rpt.default_out("bench")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    print(text)
    print(f"written to {out} (raw samples in {out.with_suffix('.json').name})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

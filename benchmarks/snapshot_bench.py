"""Fresh-machine benchmark of cluster snapshots: the database step of a machine that has never seen the dump.

    .venv/bin/python benchmarks/snapshot_bench.py [--scales 200MB 1GB] [--reps 3] [--out FILE]
        [--sessions N] [--suites user smoke] [--ext4-loop]

For each scale, each repetition times, on clusters started by the project's own code with an empty pristine
cache and no parked folder:
  cold           LocalCluster start (initdb) + restore_dump (sha256, pg_restore -j<cores>, row counts, template,
                 clone, swap): what a CI runner pays today
  snapshot write stop() of that cluster with a snapshot requested, minus nothing: prepare (drop the other
                 databases), pack (tar | zstd -1) and the atomic rename, as the session's teardown pays it
  from snapshot  LocalCluster start from the snapshot (unpack with sha256, start, new secret) + restore_dump
                 (a template clone): what the next fresh machine pays
With --sessions N, N pairs of whole pytest processes on a fresh machine (own TMPDIR, empty cache,
nothing parked): the first cold (it writes the snapshot at its end), the second from the snapshot; --suites picks
a user's test file (benchmarks/user_session) and/or the smoke suite.
The data is the reference app's seed copied up to the scale in SQL (benchmarks/bench_data.py). Everything
runs in a scratch folder of this run, removed at the end; with --ext4-loop that folder is a new ext4 in a loop
file, made by mkfs.ext4 with its defaults (a journal, as CI runners' disks have; see cow_bench.ext4_journal for
why that matters on this VM, whose own ext4 has none).
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_data
from bench_report import default_out, median, progress
from cow_bench import ext4_journal, mount_loop, mounted_on

from pytest_dbsnap.dumps.restore import count_rows, restore_dump
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.account import server_account
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.postgres.parking import stop_postmaster
from pytest_dbsnap.postgres.snapshot import DumpRef, SnapshotMeta, snapshots_of

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DB, BUILD_DB, TARGET_DB = "bench_seeded", "bench_build", "app"
LOGS = ROOT / "benchmarks" / "out" / "snapshot-sessions"  # the sessions' logs (gitignored)
# The pytest sessions timed whole: a user's own test file (three tests reading the app database through
# dbsnap_db), and this repository's smoke suite, whose data checks count and join every row of the dataset.
SUITES = {
    "user": ["benchmarks/user_session/test_user_queries.py"],
    "smoke": ["-m", "smoke", "--skip-frontend"],
}


def spread(samples: list[float]) -> str:
    return f"{min(samples):.2f}-{max(samples):.2f} s" if samples else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=["200MB"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--sessions", type=int, default=0, help="also time N pairs of whole pytest sessions")
    parser.add_argument(
        "--suites",
        nargs="+",
        choices=sorted(SUITES),
        default=["user"],
        help="which sessions: `user` (a user's test file, benchmarks/user_session) and/or `smoke` (the smoke suite)",
    )
    parser.add_argument(
        "--ext4-loop",
        action="store_true",
        help="run on a new ext4 in a loop file, made by mkfs.ext4 with its defaults (journaled, as on CI runners)",
    )
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    outer = scratch = Path(tempfile.mkdtemp(prefix="dbsnap-snapbench-"))
    scratch.chmod(0o755)
    loop: Path | None = None
    if args.ext4_loop:
        largest = max(bench_data.parse_scale(text).target_bytes for text in args.scales)
        loop, why = mount_loop(outer, "ext4", max(16 << 30, 20 * largest))
        if loop is None:
            shutil.rmtree(outer, ignore_errors=True)
            parser.error(f"--ext4-loop: {why}")
        scratch = loop
    disk = describe_disk(scratch)
    tempfile.tempdir = str(scratch)  # every cluster's runtime folder lands in the scratch folder
    settings = bench_data.scratch_settings(scratch)
    tools = find_pg_tools(settings)
    store = DumpStore(settings.dumps_dir)
    clusters: list[LocalCluster] = []
    rows: list[dict[str, object]] = []
    load_start = os.getloadavg()
    try:
        main_cluster = LocalCluster(tools, cache_dir=scratch / "cache").start()
        clusters.append(main_cluster)
        seed_scale = bench_data.parse_scale("10MB")
        nodes = bench_data.seed_nodes(seed_scale)
        progress(f"seeding {nodes} nodes through refapp.seed")
        bench_data.create_migrated(main_cluster, settings, SOURCE_DB)
        bench_data.run_seed(main_cluster, settings, SOURCE_DB, nodes)
        with main_cluster.connect(SOURCE_DB) as conn:
            conn.execute("VACUUM (FREEZE, ANALYZE)")
        bytes_per_copy = float(bench_data.measure(main_cluster, SOURCE_DB)[2])
        for text in args.scales:
            scale = bench_data.parse_scale(text)
            # The seed builds its indexes row by row; copies get rebuilt ones, about half the size per row.
            copies = max(2, round(scale.target_bytes / bytes_per_copy * 1.9))
            progress(f"{scale.label}: building {copies} copies of the seed in SQL")
            bench_data.synthesize(main_cluster, SOURCE_DB, BUILD_DB, copies, progress)
            _nodes, _edges, table_bytes, database_bytes = bench_data.measure(main_cluster, BUILD_DB)
            meta, _dump_seconds = bench_data.dump_database(
                main_cluster, settings, store, scale.env, BUILD_DB, f"{copies} copies"
            )
            with main_cluster.connect() as conn:
                databases.drop(conn, BUILD_DB)
            dump_path = store.dump_path(scale.env, meta.name)
            ref = DumpRef(meta, dump_path)
            samples: dict[str, list[float]] = {
                "cold_start": [],
                "cold_restore": [],
                "cold": [],
                "write": [],
                "snap_start": [],
                "snap_restore": [],
                "snap": [],
            }
            sizes: list[int] = []
            for rep in range(args.reps):
                for old in snapshots_of(dump_path):
                    old.discard()  # every repetition writes its own
                progress(f"{scale.label}: fresh machine, cold ({rep + 1}/{args.reps})")
                os.sync()
                began = time.monotonic()
                cold = LocalCluster(tools, cache_dir=scratch / f"cold-cache-{rep}")
                clusters.append(cold)
                cold.start()
                started = time.monotonic()
                result = restore_dump(cold, meta, dump_path, TARGET_DB, jobs=cores)
                assert result.method == "pg_restore", result.method
                done = time.monotonic()
                samples["cold_start"].append(started - began)
                samples["cold_restore"].append(done - started)
                samples["cold"].append(done - began)
                progress(f"{scale.label}: writing the snapshot at stop")
                cold.snapshot_after_stop(ref)
                cold.stop()
                [snapshot] = snapshots_of(dump_path)
                written = SnapshotMeta.read(snapshot.meta_path)
                samples["write"].append(written.write_seconds)
                sizes.append(written.size_bytes)
                shutil.rmtree(scratch / f"cold-cache-{rep}", ignore_errors=True)
                progress(f"{scale.label}: fresh machine, from the snapshot ({rep + 1}/{args.reps})")
                os.sync()
                began = time.monotonic()
                warm = LocalCluster(tools, cache_dir=scratch / f"snap-cache-{rep}", snapshot_of=ref)
                clusters.append(warm)
                warm.start()
                started = time.monotonic()
                assert warm.started_from_snapshot is not None, warm.snapshot_problem
                result = restore_dump(warm, meta, dump_path, TARGET_DB, jobs=cores)
                assert result.method == "template clone", result.method
                done = time.monotonic()
                with warm.connect(TARGET_DB) as conn:
                    assert count_rows(conn) == meta.row_counts, "the snapshot's data differs from the dump's"
                samples["snap_start"].append(started - began)
                samples["snap_restore"].append(done - started)
                samples["snap"].append(done - began)
                warm.stop()
                shutil.rmtree(scratch / f"snap-cache-{rep}", ignore_errors=True)
            if args.sessions:
                for suite in args.suites:
                    sessions(args.sessions, suite, scratch, settings.dumps_dir, scale.env, ref, samples)
            rows.append(
                {
                    "scale": scale.label,
                    "table_bytes": table_bytes,
                    "database_bytes": database_bytes,
                    "dump_bytes": meta.size_bytes,
                    "snapshot_bytes": int(median([float(s) for s in sizes])),
                    "samples": samples,
                }
            )
            store.remove(scale.env, meta.name)
    finally:
        for cluster in reversed(clusters):
            with contextlib.suppress(Exception):
                cluster.stop()
        for pid_file in scratch.glob("**/postmaster.pid"):
            with contextlib.suppress(Exception):
                stop_postmaster(tools, pid_file.parent, server_account())
        shutil.rmtree(scratch, ignore_errors=True)
        if loop is not None:
            subprocess.run(["umount", str(loop)], check=False)
        shutil.rmtree(outer, ignore_errors=True)
    report = render(rows, cores, load_start, disk)
    print(report)
    out = args.out or default_out("snapshot")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    return 0


def session_env(folder: Path, dumps_dir: Path, env_name: str) -> dict[str, str]:
    """A session of this repository on a fresh machine: its own TMPDIR, an empty cache, nothing parked."""
    tmp = folder / "tmp"
    tmp.mkdir(parents=True)
    folder.chmod(0o755)
    tmp.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBSNAP_") and k not in {"DATABASE_URL"}}
    return env | {
        "TMPDIR": str(tmp),
        "DBSNAP_DUMPS_DIR": str(dumps_dir),
        "DBSNAP_CACHE_DIR": str(folder / "cache"),
        "DBSNAP_LOGS_DIR": str(folder / "logs"),
        "DBSNAP_WARM_CLUSTER": "false",
        "DBSNAP_ENV": env_name,
    }


def run_session(suite: str, env: dict[str, str], log_path: Path) -> float:
    command = [sys.executable, "-m", "pytest", *SUITES[suite], "-q", "-p", "no:cacheprovider"]
    command.append("--durations=6")  # where a session's time goes, in its log (kept beside --out)
    began = time.monotonic()
    with log_path.open("wb") as log:
        code = subprocess.run(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900, check=False
        ).returncode
    seconds = time.monotonic() - began
    if code != 0:
        raise RuntimeError(f"the {suite} session exited with {code}; see {log_path}")
    return seconds


def sessions(
    pairs: int,
    suite: str,
    scratch: Path,
    dumps_dir: Path,
    env_name: str,
    ref: DumpRef,
    samples: dict[str, list[float]],
) -> None:
    """Whole sessions on a fresh machine: the first (no snapshot) pays initdb + pg_restore and writes the
    snapshot at its end; the second starts from it."""
    cold_key, snap_key = f"session_{suite}_cold", f"session_{suite}_snap"
    samples[cold_key], samples[snap_key] = [], []
    LOGS.mkdir(parents=True, exist_ok=True)
    for rep in range(pairs):
        for old in snapshots_of(ref.dump_path):
            old.discard()
        progress(f"whole {suite} session, fresh machine, cold ({rep + 1}/{pairs})")
        folder = scratch / f"{suite[:2]}-cold-{rep}"  # short: the server's socket path has 107 bytes at most
        log = scratch / f"session-{suite}-cold-{rep}.log"
        try:
            cold_seconds = run_session(suite, session_env(folder, dumps_dir, env_name), log)
        except RuntimeError as exc:
            # A failed session (the machine too busy for a check's timeout, say) loses its pair, not the run.
            shutil.copy(log, LOGS / f"{env_name}-{log.name}")
            progress(f"{exc}; kept as {LOGS / f'{env_name}-{log.name}'}; pair skipped")
            samples.setdefault(f"session_{suite}_failed", []).append(1.0)
            continue
        samples[cold_key].append(cold_seconds)
        shutil.copy(log, LOGS / f"{env_name}-{log.name}")
        assert snapshots_of(ref.dump_path), f"the cold session wrote no snapshot; see {log}"
        shutil.rmtree(folder, ignore_errors=True)
        progress(f"whole {suite} session, fresh machine, from the snapshot ({rep + 1}/{pairs})")
        folder = scratch / f"{suite[:2]}-snap-{rep}"  # short: the server's socket path has 107 bytes at most
        log = scratch / f"session-{suite}-snap-{rep}.log"
        samples[snap_key].append(run_session(suite, session_env(folder, dumps_dir, env_name), log))
        shutil.copy(log, LOGS / f"{env_name}-{log.name}")
        assert "cluster snapshot in" in log.read_text(errors="replace"), f"not started from the snapshot; see {log}"
        shutil.rmtree(folder, ignore_errors=True)


def describe_disk(folder: Path) -> str:
    """The filesystem the run wrote on, and for ext4 whether it has a journal (it changes what creating files
    costs right after removing many: see cow_bench.ext4_journal)."""
    kind, source = mounted_on(folder)
    journal = ext4_journal(folder)
    said = "" if journal is None else (", with a journal" if journal else ", without a journal")
    return f"{kind or 'unknown filesystem'} on {source or 'an unknown device'}{said}"


def render(rows: list[dict[str, object]], cores: int, load_start: tuple[float, float, float], disk: str) -> str:
    lines = [
        f"Fresh-machine database step, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}, {cores} cores, "
        f"{platform.platform()}; load average {load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
        f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, of any "
        f"program it waited for {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB. "
        f"Disk: {disk}.",
        "",
        "| Scale | Measurement | Median | Min-max | Reps | vs cold |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        samples = row["samples"]
        assert isinstance(samples, dict)
        cold = median(samples["cold"])
        label = row["scale"]
        for key, what in (
            ("cold", "fresh machine, cold: initdb + dbsnap cold restore (pg_restore -j{cores})"),
            ("cold_start", "  of which the cluster start (initdb)"),
            ("cold_restore", "  of which the restore (sha256, pg_restore, row counts, template, clone, swap)"),
            ("snap", "fresh machine, from the cluster snapshot: unpack + start + template clone"),
            ("snap_start", "  of which the cluster start (unpack with sha256, ownership, start, new secret)"),
            ("snap_restore", "  of which the template clone + swap"),
            ("write", "writing the snapshot at stop (drop other databases, stop, tar \\| zstd -1, rename)"),
            ("session_user_cold", "whole session of a user's test file, fresh machine, cold (writes the snapshot)"),
            ("session_user_snap", "whole session of a user's test file, fresh machine, from the snapshot"),
            (
                "session_smoke_cold",
                "whole `pytest -m smoke --skip-frontend` session, fresh machine, cold (writes the snapshot)",
            ),
            ("session_smoke_snap", "whole `pytest -m smoke --skip-frontend` session, fresh, from the snapshot"),
        ):
            if not samples.get(key):
                continue
            values = samples[key]
            ratio = cold / median(values)
            shown = f"{ratio:.1f}x faster" if key == "snap" else ""
            if key.startswith("session_") and key.endswith("_snap"):
                cold_session = median(samples[key.removesuffix("_snap") + "_cold"])
                shown = f"{cold_session / median(values):.1f}x faster than the cold session"
            if key == "write":
                shown = f"{median(values) / cold:.0%} of cold"
            lines.append(
                f"| {label} | {what.format(cores=cores)} | {median(values):.2f} s | {spread(values)} | "
                f"{len(values)} | {shown} |"
            )
        dump_bytes, snapshot_bytes = row["dump_bytes"], row["snapshot_bytes"]
        assert isinstance(dump_bytes, int)
        assert isinstance(snapshot_bytes, int)
        lines.append(
            f"| {label} | sizes: table data {bench_data.pretty_bytes(float(str(row['table_bytes'])))}, database "
            f"{bench_data.pretty_bytes(float(str(row['database_bytes'])))}, dump "
            f"{bench_data.pretty_bytes(dump_bytes)}, snapshot {bench_data.pretty_bytes(snapshot_bytes)} "
            f"({snapshot_bytes / dump_bytes:.1f}x the dump) | | | | |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

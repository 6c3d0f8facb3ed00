"""dbsnap capture against plain pg_dump -Fc of the same database: a masked full capture (verification included)
and a masked 10% subset, with the peak memory of each.

    .venv/bin/python benchmarks/capture_bench.py [--size-mb 300] [--reps 1] [--out FILE]

A LocalCluster started by the project's own code in a scratch folder holds a generated source database with
personal-data columns (users with email, name, phone, street, postal code, bio, settings JSON; their orders with a
contact email and a note), grown to --size-mb. Each measured step runs in a forked child, so that its peak
resident memory (wait4's ru_maxrss) is its own. Goal (issue #27): a masked full capture at most 4x plain pg_dump,
with memory that does not grow with the database.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pytest_dbsnap.core.proc import run
from pytest_dbsnap.dumps.capture.pipeline import Source, capture_dump
from pytest_dbsnap.dumps.capture.policy import parse_policy
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster

SOURCE_DB = "capture_bench_src"
TARGET_RATIO = 4.0
SCHEMA = """
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text, phone text, street text,
                    zip text, bio text, settings jsonb, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users, total numeric NOT NULL,
                     contact text, note text);
CREATE INDEX ON orders (user_id);
"""
GROW = """
INSERT INTO users (id, email, name, phone, street, zip, bio, settings)
SELECT i, 'person' || i || '@realmail.org', 'First' || i || ' Last' || i, '+49 30 ' || i, i || ' Main Street',
       lpad((i %% 100000)::text, 5, '0'), repeat('biography of a real person number ' || i || ' ', 4),
       jsonb_build_object('email', 'person' || i || '@realmail.org', 'theme', 'dark')
FROM generate_series(%(start)s, %(stop)s) i;
INSERT INTO orders (user_id, total, contact, note)
SELECT u, u %% 1000, 'person' || u || '@realmail.org', 'deliver to the back door, ring twice ' || u || '/' || n
FROM generate_series(%(start)s, %(stop)s) u, generate_series(1, 3) n;
"""
POLICY = {
    "keep": ["public.users.created_at", "public.orders.total"],
    "mask": {
        "public.users.email": "email",
        "public.users.name": "full_name",
        "public.users.phone": "phone",
        "public.users.street": "street",
        "public.users.zip": "postal_code",
        "public.users.bio": "text",
        "public.users.settings": {"json": {"email": "email"}},
        "public.orders.contact": "email",
        "public.orders.note": "text",
    },
}


def build(cluster: LocalCluster, size_mb: int) -> int:
    """The source database, grown in batches of users until it holds size_mb; returns its size in bytes."""
    with cluster.connect() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {SOURCE_DB}")
        admin.execute(f"CREATE DATABASE {SOURCE_DB}")
    with cluster.connect(SOURCE_DB) as conn:
        conn.execute(SCHEMA)
        start, batch, size = 1, 100_000, 0
        while size < size_mb * 1_000_000:
            for statement in GROW.split(";")[:-1]:  # parameters: one statement at a time
                conn.execute(statement, {"start": start, "stop": start + batch - 1})
            start += batch
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            size = int(str(row[0])) if row else 0
            print(f"  source: {start - 1} users, {size / 1e6:.0f} MB", file=sys.stderr)
        conn.execute("VACUUM ANALYZE")
    return size


class Steps:
    """Progress lines on stderr with the time since the previous one, to see where a capture spends it."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        print(f"    +{now - self.last:6.1f} s  {line}", file=sys.stderr)
        self.last = now


def measured(step: Callable[[], None]) -> tuple[float, float, float]:
    """(seconds, peak RSS in MB, CPU seconds of this process) of `step` run in a forked child: the CPU the
    masking in Python takes, apart from the servers' and pg_dump's."""
    began = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            step()
        except BaseException as exc:
            print(f"step failed: {exc}", file=sys.stderr)
            os._exit(1)
        os._exit(0)
    _pid, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("a measured step failed (see above)")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dbsnap-capture-bench-"))
    key = os.urandom(32)
    try:
        with LocalCluster(find_pg_tools(None), cache_dir=scratch / "cache").start() as cluster:
            assert isinstance(cluster, LocalCluster)
            size = build(cluster, args.size_mb)
            source = Source.parse(cluster.dsn(SOURCE_DB), allow_remote=False)
            store = DumpStore(scratch / "dumps")
            conninfo, env = cluster.tool_args(SOURCE_DB)

            def plain() -> None:
                run([cluster.tools.path("pg_dump"), "-Fc", "-f", str(scratch / "plain.dump"), "-d", conninfo],
                    what="pg_dump", env=env)  # fmt: skip

            def full(jobs: int | None = None) -> None:
                capture_dump(cluster, store, "full", source=source, policy=parse_policy(POLICY), key=key,
                             database="app", progress=Steps(), jobs=jobs)  # fmt: skip

            def full_python() -> None:
                os.environ["DBSNAP_MASKING"] = "python"  # in the step's forked child (and its workers) only
                full()

            def subset() -> None:
                policy = parse_policy({**POLICY, "subset": [{"table": "public.users", "where": "id % 10 = 0"}]})
                capture_dump(
                    cluster, store, "subset", source=source, policy=policy, key=key, database="app", progress=Steps()
                )

            rows: list[tuple[str, float, float, float]] = []
            for name, step in (
                ("plain pg_dump -Fc", plain),
                ("masked full capture", full),
                ("masked full capture, maskers in Python only (DBSNAP_MASKING=python)", full_python),
                ("masked full capture, masking in this process only (jobs=1)", lambda: full(1)),
                ("masked 10% subset", subset),
            ):
                for _ in range(args.reps):
                    print(f"  timing {name}", file=sys.stderr)
                    rows.append((name, *measured(step)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    best = {name: min(s for n, s, _, _ in rows if n == name) for name, _, _, _ in rows}
    peak = {name: max(r for n, _, r, _ in rows if n == name) for name, _, _, _ in rows}
    cpu = {name: min(c for n, _, _, c in rows if n == name) for name, _, _, _ in rows}
    baseline = best["plain pg_dump -Fc"]
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    lines = [
        f"source database {size / 1e6:.0f} MB, best of {args.reps}, {os.cpu_count()} cores, load {load} at the "
        f"end; the runner's own peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
        "",
        "| step | seconds | x pg_dump | peak RSS of the step | CPU s of the Python process |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in best:
        lines.append(
            f"| {name} | {best[name]:.1f} | {best[name] / baseline:.2f} | {peak[name]:.0f} MB | {cpu[name]:.1f} |"
        )
    ratio = best["masked full capture"] / baseline
    lines.append("")
    lines.append(
        f"masked full capture / pg_dump = {ratio:.2f} (goal <= {TARGET_RATIO}): "
        f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}"
    )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a fresh_db hand-out costs with the pool and without it (issue 28), on a local cluster of this machine.

    .venv/bin/python benchmarks/pool_bench.py [--mb 200] [--reps 10]

A template of about --mb MB (a table of the reference app's shape filled in SQL). Each round, interleaved:
  pool      ClonePool(ahead=1): wait until its copy is ready (a test that ran longer than a clone), then time
            take() (one rename, the copy opened to connections), then give_back() (the drop, not timed)
  no pool   ClonePool(ahead=0): time take() (CREATE DATABASE ... TEMPLATE while the test waits)
Prints the median and spread of each, and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.postgres.pool import ClonePool


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="pool-bench-") as scratch,
        LocalCluster(find_pg_tools(None), cache_dir=Path(scratch)).start() as cluster,
    ):
        template = f"{databases.TEMPLATE_PREFIX}bench"
        with cluster.connect() as conn:
            databases.create(conn, template)
        with cluster.connect(template) as conn:
            conn.execute("CREATE TABLE nodes (id bigserial PRIMARY KEY, name text, attributes jsonb)")
            conn.execute(
                "INSERT INTO nodes (name, attributes) SELECT 'node-' || i || md5(i::text), "
                "jsonb_build_object('mass', i %% 977) FROM generate_series(1, %s) AS i",
                (args.mb * 1_000_000 // 150,),
            )
        with cluster.connect() as conn:
            databases.mark_template(conn, template)
            size = databases.size_of(conn, template)
        print(f"template {size / 1e6:.0f} MB; load average {tuple(round(x, 1) for x in os.getloadavg())}")
        pooled_ms: list[float] = []
        direct_ms: list[float] = []
        # One pool for the whole run, as a session has: its connection is open after the first hand-out.
        pool = ClonePool(cluster, template, ahead=1).start()
        direct = ClonePool(cluster, template, ahead=0).start()
        try:
            for _round in range(args.reps):
                assert pool.wait_until_full(timeout=300)  # the previous test ran longer than a clone
                began = time.perf_counter()
                name = pool.take()
                pooled_ms.append((time.perf_counter() - began) * 1000)
                pool.give_back(name)
                began = time.perf_counter()
                name = direct.take()
                direct_ms.append((time.perf_counter() - began) * 1000)
                direct.give_back(name)
            assert pool.handed_out_ready == args.reps
            assert pool.made_on_demand == 0
        finally:
            pool.close()
            direct.close()
        ratios = [d / p for d, p in zip(direct_ms, pooled_ms, strict=True)]
        print(
            f"pool hand-out: median {statistics.median(pooled_ms):.1f} ms ({min(pooled_ms):.1f}-{max(pooled_ms):.1f})"
        )
        print(
            f"clone on demand: median {statistics.median(direct_ms):.1f} ms ({min(direct_ms):.1f}-{max(direct_ms):.1f})"
        )
        print(f"paired ratio: median {statistics.median(ratios):.0f}x ({min(ratios):.0f}-{max(ratios):.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

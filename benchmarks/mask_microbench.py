"""The masking alone, in memory: ChunkMasker over the COPY text of capture_bench.py's rows, no servers, one process.

    .venv/bin/python benchmarks/mask_microbench.py [--users 100000] [--reps 3]

Prints microseconds per row of each table (each chunk's best of --reps): the Python work a capture's masking workers
do.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from capture_bench import POLICY  # beside this script (sys.path[0])

from pytest_dbsnap.dumps.capture.copytext import ChunkMasker
from pytest_dbsnap.dumps.capture.leaks import LeakSample
from pytest_dbsnap.dumps.capture.masking import CHUNK, build_fields

USERS = ["id", "email", "name", "phone", "street", "zip", "bio", "settings", "created_at"]
ORDERS = ["id", "user_id", "total", "contact", "note"]


def rows(users: int) -> dict[str, list[bytes]]:
    """COPY text chunks of about CHUNK bytes of users and of orders, as capture_bench.py's source holds them."""
    made: dict[str, list[str]] = {"users": [], "orders": []}
    for i in range(1, users + 1):
        email = f"person{i}@realmail.org"
        bio = f"biography of a real person number {i} " * 4
        settings = f'{{"email": "{email}", "theme": "dark"}}'
        made["users"].append(
            f"{i}\t{email}\tFirst{i} Last{i}\t+49 30 {i}\t{i} Main Street\t{i % 100000:05d}\t{bio}\t{settings}\t"
            "2026-12-04 03:25:00+00\n"
        )
        for n in range(1, 4):
            made["orders"].append(
                f"{3 * i + n}\t{i}\t{i % 1000}\t{email}\tdeliver to the back door, ring twice {i}/{n}\n"
            )
    chunks: dict[str, list[bytes]] = {}
    for table, lines in made.items():
        data = "".join(lines).encode()
        chunks[table] = []
        while data:
            end = data.find(b"\n", CHUNK) + 1 or len(data)
            chunks[table].append(data[:end])
            data = data[end:]
    return chunks


def rules(table: str, columns: list[str]) -> list[tuple[int, str, Any]]:
    mask: dict[str, Any] = POLICY["mask"]  # type: ignore[assignment]
    masked = {k.rsplit(".", 1)[1]: v for k, v in mask.items() if k.split(".")[1] == table}
    return [(columns.index(c), f"{table}.{c}", spec) for c, spec in masked.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    data = rows(args.users)
    key = os.urandom(32)
    # Each chunk's best time over the repetitions (each starts afresh: same samplers' and memos' states), summed:
    # steadier than the best whole pass on a machine other work shares.
    best: dict[str, list[float]] = {table: [float("inf")] * len(chunks) for table, chunks in data.items()}
    for _ in range(args.reps):
        sample = LeakSample()
        memos: dict[str, dict[bytes, bytes]] = {}
        for table, columns in (("users", USERS), ("orders", ORDERS)):
            masker = ChunkMasker(build_fields(rules(table, columns), key, sample, memos))
            for number, chunk in enumerate(data[table]):
                began = time.perf_counter()
                masker(chunk)
                best[table][number] = min(best[table][number], time.perf_counter() - began)
    per_row = {table: sum(times) / (args.users * (1 if table == "users" else 3)) * 1e6 for table, times in best.items()}
    load = Path("/proc/loadavg").read_text().split()[0]
    users, orders = per_row["users"], per_row["orders"]
    print(f"users {users:.1f} us/row, orders {orders:.1f} us/row (best of {args.reps}, load {load})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Dump names: a UTC timestamp to the second first (so that names sort by time), and never one already taken.

Two dumps of one environment can be made within a second (a forced regeneration, one file imported twice, a
test suite); the second gets a number instead of a refusal, and nothing is ever looked up by name alone
(a server's templates and the cluster snapshots are keyed by the dump's sha256).
"""

from __future__ import annotations

import datetime as dt

from pytest_dbsnap.dumps.store import DumpStore


def stamp(created: dt.datetime) -> str:
    return created.strftime("%Y%m%dT%H%M%SZ")


def unused_name(store: DumpStore, env: str, name: str) -> str:
    """`name`, or `name-2`, `name-3`... when a dump (or its metadata) of that name is in the store already.

    Called under the environment's lock, so that two writers cannot pick the same name."""
    candidate, number = name, 1
    while store.meta_path(env, candidate).exists() or store.dump_path(env, candidate).exists():
        number += 1
        candidate = f"{name}-{number}"
    return candidate

"""Wrap an existing pg_dump -Fc file (from a managed database, a colleague) into the store with metadata."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path

from pytest_dbsnap import __version__
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.errors import DumpCorrupt, ToolError
from pytest_dbsnap.postgres.base import PgTools
from pytest_dbsnap.proc import run
from pytest_dbsnap.progress import meter

ARCHIVE_MAGIC = b"PGDMP"


def read_archive_header(tools: PgTools, path: Path) -> dict[str, str]:
    """Versions and source database from `pg_restore --list`, which also proves the archive is readable."""
    with path.open("rb") as handle:
        if handle.read(5) != ARCHIVE_MAGIC:
            raise DumpCorrupt(
                f"{path} is not a pg_dump custom-format archive (it does not start with PGDMP). "
                f"Make one with `pg_dump -Fc -f FILE DATABASE`; plain SQL dumps are not accepted."
            )
    try:
        listing = run(
            [tools.path("pg_restore"), "--list", str(path)], what=f"pg_restore --list {path.name}", timeout=300
        ).stdout
    except ToolError as exc:
        raise DumpCorrupt(
            f"{path} cannot be read by pg_restore {tools.version}: it is truncated, corrupt, or "
            f"written by a newer pg_dump.\n{exc}"
        ) from exc
    header: dict[str, str] = {}
    for key, pattern in {
        "pg_dump_version": r"Dumped by pg_dump version:\s*(\S+)",
        "server_version": r"Dumped from database version:\s*(\S+)",
        "database": r"dbname:\s*(\S+)",
    }.items():
        match = re.search(pattern, listing)
        if match:
            header[key] = match[1]
    return header


def _quiet(_message: str) -> None:
    """Progress sink that shows nothing."""


def import_dump(
    store: DumpStore, tools: PgTools, source: Path, env: str, *, progress: Callable[[str], None] = _quiet
) -> DumpMeta:
    """Copy a dump into the store (atomically), checksum it and record what its archive header says.

    An imported dump has no fingerprint: it did not come from this project's seed, so it is never stale.
    """
    if not source.is_file():
        raise DumpCorrupt(f"There is no file {source} to import.")
    progress(f"reading the table of contents of {source.name}")
    header = read_archive_header(tools, source)
    began = time.monotonic()
    with store.lock(env), store.incoming(env) as temporary:
        total = source.stat().st_size
        progress(f"copying {source.name} into the store ({total / 1e6:.1f} MB)")
        count = meter()  # the step's bar, by bytes copied
        digest = hashlib.sha256()
        size = 0
        with source.open("rb") as src, temporary.open("wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
                count(size, total)
        created = dt.datetime.now(dt.UTC).replace(microsecond=0)
        sha = digest.hexdigest()
        meta = DumpMeta(
            name=f"{created.strftime('%Y%m%dT%H%M%SZ')}-import-{sha[:8]}",
            environment=env,
            database=header.get("database", source.stem),
            created_at=created.isoformat().replace("+00:00", "Z"),
            sha256=sha,
            size_bytes=size,
            pg_dump_version=header.get("pg_dump_version", tools.version),
            server_version=header.get("server_version", "unknown"),
            tool_version=__version__,
            duration_seconds=round(time.monotonic() - began, 3),
            source="imported",
            fingerprint_inputs={"imported_from": source.name},
        )
        return store.install(temporary, meta)

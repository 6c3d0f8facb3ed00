"""Wrap an existing pg_dump -Fc file (from a managed database, a colleague) into the store with metadata."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path

from pytest_dbsnap._version import __version__
from pytest_dbsnap.core.proc import run
from pytest_dbsnap.core.progress import meter
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.naming import stamp, unused_name
from pytest_dbsnap.dumps.restore import check_readable
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.errors import DumpCorrupt, ToolError
from pytest_dbsnap.postgres.base import PgTools

ARCHIVE_MAGIC = b"PGDMP"


def archive_pg_dump_version(head: bytes) -> str | None:
    """The version of the pg_dump that wrote a custom-format archive, from its first bytes, without pg_restore
    (which refuses archives of a newer pg_dump before saying whose they are). None when the header is not
    one we can read (archive formats before 1.10 do not record it).

    The header (pg_backup_archiver.c, WriteHead): PGDMP, format version (3 bytes), int size, offset size,
    format, compression (one byte from 1.15 on, an int before), seven ints of creation time, then three
    strings: database name, server version, pg_dump version. An int is a sign byte and `int size` bytes,
    least significant first; a string is its length as an int, then its bytes.
    """
    if len(head) < 12 or not head.startswith(ARCHIVE_MAGIC):
        return None
    version, int_size = (head[5], head[6]), head[8]
    if version < (1, 10) or not 1 <= int_size <= 8:
        return None
    offset = 12 if version >= (1, 15) else 11 + 1 + int_size  # past the compression byte or int
    offset += 7 * (1 + int_size)  # the creation time

    def read_int() -> int | None:
        nonlocal offset
        field = head[offset : offset + 1 + int_size]
        if len(field) < 1 + int_size:
            return None
        offset += 1 + int_size
        value = int.from_bytes(field[1:], "little")
        return -value if field[0] else value

    text = ""
    for _field in ("database", "server version", "pg_dump version"):
        length = read_int()
        if length is None or length > 256 or offset + max(length, 0) > len(head):
            return None
        text = head[offset : offset + max(length, 0)].decode("utf-8", errors="replace")
        offset += max(length, 0)
    number = re.match(r"\d+(\.\d+)*", text)  # "15.14 (Debian 15.14-0+deb12u1)" on some builds
    return number[0] if number else None


def read_archive_header(tools: PgTools, path: Path) -> dict[str, str]:
    """Versions and source database from `pg_restore --list`, which also proves the archive is readable; an
    archive of a newer pg_dump is refused first, with what to install (check_readable)."""
    with path.open("rb") as handle:
        head = handle.read(4096)
    if not head.startswith(ARCHIVE_MAGIC):
        raise DumpCorrupt(
            f"{path} is not a pg_dump custom-format archive (it does not start with PGDMP). "
            f"Make one with `pg_dump -Fc -f FILE DATABASE`; plain SQL and tar (-Ft) dumps are not accepted."
        )
    written_by = archive_pg_dump_version(head)
    if written_by is not None:
        check_readable(written_by, tools, dump=str(path))
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
    if source.is_dir():
        raise DumpCorrupt(
            f"{source} is a folder (a pg_dump -Fd archive, say), and dbsnap import takes one custom-format file: "
            f"make one with `pg_dump -Fc -f FILE DATABASE`."
        )
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
            name=unused_name(store, env, f"{stamp(created)}-import-{sha[:8]}"),
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

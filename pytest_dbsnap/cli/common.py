"""What the dbsnap commands share: settings from their flags, the target server, the progress reporter, exit
codes and the lines that describe a dump."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_dbsnap.config.loading import find_pyproject, load_settings
from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.core.progress import Reporter
from pytest_dbsnap.errors import ConfigError, DbsnapError

if TYPE_CHECKING:
    from pytest_dbsnap.dumps.meta import DumpMeta
    from pytest_dbsnap.dumps.store import DumpStore
    from pytest_dbsnap.postgres.base import Server

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(ConfigError):
    """A command-line mistake (exit 2)."""


# The command's progress on stderr (stdout stays the command's answer: --json, DATABASE_URL=...): a live line
# on a terminal, a line per finished step with its duration otherwise, nothing with --quiet. Set by main().
_progress = [Reporter()]


def progress() -> Reporter:
    """The command's reporter (set by main for its stream and --quiet)."""
    return _progress[0]


def use_progress(reporter: Reporter) -> None:
    _progress[0] = reporter


def progress_printer() -> Callable[[str], None]:
    """The progress callback of the library's slow calls (generate, restore, up)."""
    return progress().step


def progress_done() -> None:
    """The last step is over: its live line is erased (or its duration line printed) before the command's answer."""
    progress().end()


def load_cli_settings(args: argparse.Namespace) -> Settings:
    """Settings as the plugin builds them: pyproject found from the current folder upwards, env, then flags."""
    pyproject = find_pyproject(Path.cwd())
    root = pyproject.parent if pyproject else Path.cwd()
    cli: dict[str, object | None] = {
        "env": getattr(args, "env", None),
        "dsn": getattr(args, "dsn", None),
        "dumps_dir": getattr(args, "dumps_dir", None),
        "pg_bindir": getattr(args, "pg_bindir", None),
        "postgres_binaries": getattr(args, "postgres_binaries", None),
        "allow_remote": True if getattr(args, "allow_remote", False) else None,
        "verify": False if getattr(args, "no_verify", False) else None,
        "restore_jobs": getattr(args, "jobs", None),
        "replace_database": True if getattr(args, "replace", False) else None,
    }
    flags = {
        "env": "--env",
        "dsn": "--dsn",
        "dumps_dir": "--dumps-dir",
        "pg_bindir": "--pg-bindir",
        "postgres_binaries": "--postgres-binaries",
        "allow_remote": "--allow-remote",
        "verify": "--no-verify",
        "restore_jobs": "--jobs",
        "replace_database": "--replace",
    }
    return load_settings(project_root=root, pyproject=pyproject, cli=cli, cli_flags=flags)


def dump_store(settings: Settings) -> DumpStore:
    from pytest_dbsnap.dumps.store import DumpStore

    return DumpStore(settings.dumps_dir)


@contextlib.contextmanager
def target_server(settings: Settings, *, required: bool) -> Iterator[Server]:
    """The DSN's server, or (for generate) the project's local cluster when no DSN is given."""
    from pytest_dbsnap.stack.servers import start_server, watch_server

    if settings.dsn:
        server = start_server(settings, "external")
    elif required:
        raise UsageError(
            "This command needs a target server: pass --dsn or set DBSNAP_DSN (for example "
            "postgresql://postgres@127.0.0.1:5432/app). DATABASE_URL is not read, so that the database your app "
            "uses is never replaced by accident."
        )
    else:
        server = start_server(settings, "local")
    forget = watch_server(server)
    try:
        with server:
            yield server
    finally:
        forget()


def target_database(args: argparse.Namespace, settings: Settings) -> str:
    """--database, else the database named in the DSN, else the setting."""
    if args.database:
        return str(args.database)
    if settings.dsn:
        from pytest_dbsnap.postgres.external import parse_dsn

        named = parse_dsn(settings.dsn).get("dbname")
        if named and named != "postgres":
            return named
    return settings.database


def meta_line(meta: DumpMeta, latest: str | None, tree: str | None = None) -> str:
    """One dump: `*` marks latest; `= working tree` one whose fingerprint is the working tree's (`tree`)."""
    rows = sum(meta.row_counts.values())
    mark = "*" if meta.name == latest else " "
    matches = "  = working tree" if tree is not None and meta.fingerprint == tree else ""
    if meta.captured:
        matches += f"  captured, {len(meta.capture.get('masked_columns', []))} column(s) masked"
    return (
        f"{mark} {meta.name:<48} {meta.created_at:<21} {meta.size_bytes / 1e6:>9.1f} MB {rows:>10} rows  "
        f"schema {meta.schema_version or '-'}{matches}"
    )


def snapshot_lines(store: DumpStore, env: str, name: str) -> list[tuple[str, dict[str, object] | None, str]]:
    """(archive name, metadata as a dict or None, one-line description) of each cluster snapshot of a dump."""
    from pytest_dbsnap.postgres.snapshot import SnapshotMeta, describe, snapshot_meta_dict, snapshots_of

    found: list[tuple[str, dict[str, object] | None, str]] = []
    for snapshot in snapshots_of(store.dump_path(env, name)):
        try:
            meta = SnapshotMeta.read(snapshot.meta_path)
        except DbsnapError as exc:
            found.append((snapshot.name, None, f"unusable: {exc}"))
            continue
        found.append((snapshot.name, snapshot_meta_dict(meta), describe(meta)))
    return found

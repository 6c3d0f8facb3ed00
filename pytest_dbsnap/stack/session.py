"""The database step of a session: restore the latest dump of an environment (generating it when missing or
stale), or keep the database as it is, then migrate. Shared by the plugin and usable from any script."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pytest_dbsnap.config.parsers import DiskBudget
from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.dumps.fingerprint import compute_fingerprint
from pytest_dbsnap.dumps.generate import generate_dump, migrate
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.remote import RemoteStore
from pytest_dbsnap.dumps.restore import (
    check_target,
    drop_orphan_templates,
    prepare_spare,
    restore_dump,
    spare_name,
    template_name,
    with_copy_on_write,
)
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.errors import DbsnapError, DumpCorrupt, DumpError
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.base import PgTools, Server, find_pg_tools
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.postgres.pool import ClonePool
from pytest_dbsnap.postgres.snapshot import DumpRef

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    """Progress sink that shows nothing."""


@dataclass
class DatabaseOutcome:
    """What the session did to get its database, for the header, the summary and the reports."""

    name: str  # the app database's name (`database` also makes a deferred one)
    method: str  # "spare swap" | "template clone" | "cluster snapshot" | "pg_restore" | "kept as it was"
    seconds: float
    meta: DumpMeta | None
    generated: bool = False
    generate_seconds: float = 0.0
    verified: bool = False
    stale_reason: str | None = None
    pulled: bool = False  # brought from the remote dump store (setting remote) instead of generated
    pull_seconds: float = 0.0
    pushed: bool = False  # sent to the remote dump store (--push-dump)
    warnings: list[str] = field(default_factory=list)  # one line each in the terminal summary
    # An earlier dump whose fingerprint matches the working tree, restored because `latest` is stale (the
    # reason it is): switching back to a branch reuses its dump instead of seeding again.
    matched_earlier: str | None = None
    # The server's clones (this restore's, the spare, fresh_db, xdist workers') share the template's blocks.
    copy_on_write: bool = False
    # fresh_db: how many clones the pool makes ahead (0: none), and the disk budget that caps it and the spare.
    pool_ahead: int = 0
    disk_budget: DiskBudget | None = None
    _spare_thread: threading.Thread | None = field(default=None, repr=False)
    _pool: ClonePool | None = field(default=None, repr=False)
    # The spare is made at the session's end, from a copy the fresh_db pool made ahead when it has one: cloning it
    # while the tests start would queue the first fresh_db behind it (one clone of a template at a time).
    _spare_after: tuple[Server, DumpMeta] | None = field(default=None, repr=False)
    # A deferred app database (prepare_database(defer_app=True)): cloned from the template the first time
    # `database` is read, so a session whose tests take only fresh_db copies never copies the whole database once
    # more for nothing. made_seconds: what that clone took, once made.
    _make: Callable[[], None] | None = field(default=None, repr=False)
    _make_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    deferred: bool = False
    made_seconds: float | None = None
    make_began: bool = False  # a test asked for the deferred app database (its making may have been stopped)

    @property
    def pending(self) -> bool:
        """The app database is deferred and not made yet."""
        return self._make is not None

    @property
    def database(self) -> str:
        """The app database's name; a deferred one is made here, on first use (DumpError if it cannot be)."""
        if self._make is not None:
            with self._make_lock:
                if self._make is not None:
                    began, self.make_began = time.monotonic(), True
                    self._make()  # on failure it stays to do: the next reader gets the same error
                    self._make, self.made_seconds = None, time.monotonic() - began
        return self.name

    def describe(self) -> str:
        if self.meta is None:
            return f"database {self.name!r} {self.method} (no dump)"
        how = f"{with_copy_on_write(self.method, self.copy_on_write)} in {self.seconds:.2f} s"
        if self.deferred:
            if self.made_seconds is not None:
                how += f", made when first used ({self.made_seconds:.2f} s)"
            elif self.make_began:
                how += f", {self.name!r} not made: its making failed or was stopped"
            else:
                how += f", {self.name!r} not made: no test used it (fresh_db copies come from the template)"
        if self.generated:
            how = f"generated in {self.generate_seconds:.1f} s ({self.stale_reason}), then {how}"
        if self.pulled:
            how = f"pulled from the remote store in {self.pull_seconds:.1f} s, then {how}"
        if self.matched_earlier:
            how = f"the earlier dump matching the working tree (latest is {self.matched_earlier}), {how}"
        verified = ", sha256 verified" if self.verified else ""
        pushed = ", pushed to the remote store" if self.pushed else ""
        cow = ", clones copy-on-write" if self.copy_on_write and self.method != "template clone" else ""
        return f"{self.meta.environment}/{self.meta.name} -> {self.name!r}: {how}{verified}{pushed}{cow}"

    def wait_for_spare(self, timeout: float | None = None) -> None:
        if self._spare_thread is not None:
            self._spare_thread.join(timeout)

    def pool(self, server: Server, template: str) -> ClonePool:
        """The session's pool of fresh_db clones, started at the first fresh_db (a session without one makes
        no copy ahead)."""
        if self._pool is None:
            budget = self.disk_budget
            limit = None if budget is None else (lambda conn: budget.limit(databases.size_of(conn, template)))
            self._pool = ClonePool(server, template, ahead=self.pool_ahead, limit_bytes=limit).start()
        return self._pool

    def close_pool(self) -> None:
        """Drop the clones made ahead (at the session's end); a deferred spare is one of them renamed, or made
        now when the pool has none ready (not when the app database was never made)."""
        pool, self._pool = self._pool, None
        spare_after, self._spare_after = self._spare_after, None
        if self.pending:
            # No test read the app database, so this session used no spare (one it found is still there): the
            # next session that needs one clones the template then, rather than this one at its end.
            spare_after = None
        kept = pool.close(keep_as=spare_name(spare_after[1]) if spare_after else None) if pool is not None else False
        if spare_after is not None and not kept:
            self.start_spare(*spare_after)

    def start_spare(self, server: Server, meta: DumpMeta) -> None:
        """Clone the spare in the background (wait_for_spare waits for it)."""
        self._spare_thread = threading.Thread(
            target=_spare_quietly, args=(server, meta), daemon=True, name="dbsnap-spare"
        )
        self._spare_thread.start()


def changed_inputs(meta: DumpMeta, current: dict[str, str]) -> list[str]:
    recorded = meta.fingerprint_inputs
    return sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))


def describe_input_changes(meta: DumpMeta, current: dict[str, str], limit: int = 5) -> str:
    """ "a.sql changed, b.sql removed, c.sql added" (the first few): a removed file is not a changed one."""
    recorded = meta.fingerprint_inputs
    changes = changed_inputs(meta, current)
    shown = [
        f"{key} {'removed' if key not in current else 'added' if key not in recorded else 'changed'}"
        for key in changes[:limit]
    ]
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return ", ".join(shown) + more if shown else "inputs changed"


def staleness(
    settings: Settings, meta: DumpMeta | None, current: tuple[str, dict[str, str]] | None = None
) -> str | None:
    """Why the latest dump cannot be used as it is, or None when it is current. `current` is the working tree's
    fingerprint when the caller has it already (hashing the inputs reads every input file)."""
    if meta is None:
        return "no dump yet"
    if settings.regenerate_dump:
        return "--regenerate-dump"
    if meta.fingerprint is None:  # imported: not made from our inputs, used as given
        return None
    fingerprint, inputs = current or compute_fingerprint(settings)
    if meta.fingerprint == fingerprint:
        return None
    return f"stale: {describe_input_changes(meta, inputs)}"


def matching_dump(store: DumpStore, settings: Settings, fingerprint: str | None = None) -> DumpMeta | None:
    """The newest dump of the environment whose fingerprint is the working tree's, with its file present (an
    unreadable one is passed over: it cannot be the one restored)."""
    if fingerprint is None:
        fingerprint, _inputs = compute_fingerprint(settings)
    for name in reversed(store.names(settings.env)):
        try:
            meta = store.read_meta(settings.env, name)
        except DumpCorrupt:
            continue
        if meta.fingerprint == fingerprint and store.dump_path(settings.env, name).is_file():
            return meta
    return None


def usable_dump(store: DumpStore, settings: Settings) -> tuple[DumpMeta | None, str | None, str | None]:
    """(dump to restore, why a new one is needed, why latest was passed over): latest when current, else the
    newest dump matching the working tree (a branch switched back to), else latest with its staleness."""
    meta = store.latest(settings.env)
    # Hashed once here for both questions: is latest current, and else which dump matches the tree.
    needs_hash = meta is not None and meta.fingerprint is not None and not settings.regenerate_dump
    current = compute_fingerprint(settings) if needs_hash else None
    reason = staleness(settings, meta, current)
    if reason is None or meta is None or settings.regenerate_dump:
        return meta, reason, None
    earlier = matching_dump(store, settings, current[0] if current else None)
    if earlier is None:
        return meta, reason, None
    return earlier, None, reason


def pull_for_session(
    settings: Settings, store: DumpStore, tools: PgTools, *, with_snapshot: bool
) -> tuple[DumpMeta | None, float, str | None]:
    """A session's own pull: the newest remote dump made from the working tree's inputs (None when the remote
    has none) and, `with_snapshot`, this machine's cluster snapshot of it, as `dbsnap pull` brings them (sha256
    verified, installed atomically). Returns (dump, seconds, warning): a remote snapshot that is missing is
    normal and says nothing; one that cannot be pulled (damaged, unreachable) is a warning, and the dump is
    restored instead. `tools` (the local pg_restore) refuses a dump it could not read before it is downloaded."""
    started = time.monotonic()
    remote = RemoteStore.configured(settings.remote, settings.remote_endpoint_url)
    fingerprint, _inputs = compute_fingerprint(settings)
    fetched = remote.pull_matching(store, settings.env, fingerprint, tools=tools)
    if fetched is None:
        return None, time.monotonic() - started, None
    warning = None
    if with_snapshot:
        try:
            remote.pull_own_snapshot(store, fetched.meta, settings)
        except DbsnapError as exc:
            reason = str(exc).splitlines()[0]
            warning = (
                f"the remote cluster snapshot of {fetched.meta.name} was not used ({reason}); the dump was "
                f"restored instead"
            )
    return fetched.meta, time.monotonic() - started, warning


def snapshot_source(settings: Settings) -> DumpRef | None:
    """The dump this session will restore, when a local cluster may start from its snapshot: the latest dump
    of the environment when current, else the newest matching the working tree; with its file present. With a
    remote store and no such dump here, the session's pull happens now, before the cluster starts, so that the
    snapshot pulled with the dump replaces initdb and pg_restore (a fresh CI runner sharing the store)."""
    if not settings.cluster_snapshot or settings.skip_dump_restore or settings.regenerate_dump:
        return None
    store = DumpStore(settings.dumps_dir)
    pull_seconds: float | None = None
    pull_warning: str | None = None
    try:
        meta, reason, _passed_over = usable_dump(store, settings)
        if reason is not None and settings.remote:
            tools = find_pg_tools(settings)
            meta, pull_seconds, pull_warning = pull_for_session(settings, store, tools, with_snapshot=True)
            reason = None if meta is not None else "not in the remote store either"
        if meta is None or reason is not None:
            return None
    except DbsnapError:
        return None  # the database step says what is wrong with the dump (or the remote store)
    dump_path = store.dump_path(settings.env, meta.name)
    return DumpRef(meta, dump_path, pull_seconds, pull_warning) if dump_path.is_file() else None


def push_snapshot_later(settings: Settings, meta: DumpMeta) -> Callable[[], tuple[str, ...]]:
    """What a stopping local cluster calls once it has written the dump's snapshot: push it beside the dump
    that --push-dump sent. At teardown rather than before the tests: writing a snapshot stops the cluster, and
    stopping and starting it again before the first test would put about two seconds plus the packing on the
    critical path of every such session."""

    def push() -> tuple[str, ...]:
        return RemoteStore.configured(settings.remote, settings.remote_endpoint_url).push_snapshots(
            DumpStore(settings.dumps_dir), meta.environment, meta.name
        )

    return push


def ensure_database(server: Server, name: str) -> None:
    """Create the database when missing (marked as ours, so a later restore may replace it); an existing one
    is kept as it is."""
    check_target(name)
    with server.connect() as conn:
        if not databases.exists(conn, name):
            databases.create(conn, name)


def prepare_database(
    server: Server,
    settings: Settings,
    *,
    progress: Progress = _quiet,
    spare_in_background: bool = True,
    spare_at_end: bool = False,
    defer_app: bool = False,
) -> DatabaseOutcome:
    """Get the app database ready: restore (or generate, then restore), migrate, and start the next spare
    (`spare_at_end`: when the pool closes instead, for a session whose tests take fresh_db copies).
    `defer_app`: an app database that would be a clone of the template (or the spare renamed) is made, and
    migrated, when `DatabaseOutcome.database` is first read (by a fixture or a check), not now."""
    target = settings.database
    store = DumpStore(settings.dumps_dir)
    began = time.monotonic()
    if settings.skip_dump_restore:
        ensure_database(server, target)
        if settings.migrate_command:
            progress(f"migrating {target!r}")
        migrate_warning = migrate(server, settings, target)
        latest = None
        with contextlib.suppress(DumpError):  # an unreadable dump only costs the report its dump name
            latest = store.latest(settings.env)
        return DatabaseOutcome(
            target,
            "kept as it was",
            time.monotonic() - began,
            latest,
            warnings=[migrate_warning] if migrate_warning else [],
        )

    meta, reason, matched_earlier = usable_dump(store, settings)
    if matched_earlier is not None and meta is not None:
        progress(f"latest dump of {settings.env!r} is {matched_earlier}; restoring {meta.name}, which matches")
    generated, generate_seconds = False, 0.0
    pulled, pull_seconds = False, 0.0
    warnings: list[str] = []
    generation_warned = False
    early = server.snapshot_of if isinstance(server, LocalCluster) else None
    if early is not None and early.pull_seconds is not None and meta is not None and meta.sha256 == early.meta.sha256:
        # Pulled before the cluster started (snapshot_source), with this machine's snapshot when there was one.
        pulled, pull_seconds = True, early.pull_seconds
        if early.pull_warning is not None:
            warnings.append(early.pull_warning)
    if reason is not None and settings.remote and not settings.regenerate_dump:
        # Another runner may have made this very dump already: a download beats minutes of seeding.
        progress(f"looking for a current dump of {settings.env!r} in {settings.remote}")
        fetched_meta, seconds, _warning = pull_for_session(settings, store, server.tools, with_snapshot=False)
        if fetched_meta is not None:
            meta, reason, pulled, pull_seconds = fetched_meta, None, True, seconds
    if reason is not None:
        if not settings.seed_command:
            where = f"of environment {settings.env!r} in {store.root}"
            what = f"There is no dump {where}" if meta is None else f"The latest dump {meta.name} {where} is {reason}"
            raise DumpError(
                f"{what}, and no seed_command is configured to "
                f"generate one. Set seed_command (and migrate_command) in [tool.dbsnap], run "
                f"`dbsnap generate --env {settings.env}`, import a dump with `dbsnap import FILE --env "
                f"{settings.env}`, or pass --skip-dump-restore to use the database as it is."
            )
        progress(f"generating a dump of {settings.env!r} ({reason})")
        started = time.monotonic()
        generation = generate_dump(
            server,
            settings,
            store,
            settings.env,
            force=settings.regenerate_dump,
            keep_as_template=True,
            progress=progress,
        )
        meta, generated = generation.meta, generation.made
        warnings.extend(generation.warnings)
        generation_warned = bool(generation.warnings)
        generate_seconds = time.monotonic() - started
    assert meta is not None
    store.get(settings.env, meta.name)  # the dump file itself must be there, with its metadata
    result = restore_dump(
        server,
        meta,
        store.dump_path(settings.env, meta.name),
        target,
        verify=settings.verify,
        jobs=settings.jobs,
        progress=progress,
        replace=settings.replace_database,
        defer_clone=defer_app,
    )
    method, seconds = result.method, result.seconds
    snapshot_ref: DumpRef | None = None
    if isinstance(server, LocalCluster):
        if server.started_from_snapshot is not None and result.method == "template clone":
            # The template came with the snapshot: the database step is the unpack and start plus the clone.
            method, seconds = "cluster snapshot", server.snapshot_seconds + result.seconds
        if server.snapshot_problem is not None:
            warnings.append(server.snapshot_problem)
        if settings.cluster_snapshot and (generated or result.method == "pg_restore"):
            snapshot_ref = DumpRef(meta, store.dump_path(settings.env, meta.name))
            server.snapshot_after_stop(snapshot_ref)

    def migrate_target(progress: Progress) -> None:
        if settings.migrate_command:
            progress(f"migrating {target!r}")
        migrate_warning = migrate(server, settings, target)
        if migrate_warning is not None and not generation_warned:  # else it is the same finding again
            warnings.append(migrate_warning)

    if not result.deferred:
        migrate_target(progress)
    pushed = False
    if settings.push_dump and not pulled:
        # After the restore, so that only a dump that restores is shared; pushing an existing one is a no-op.
        progress(f"pushing {settings.env}/{meta.name} to {settings.remote}")
        RemoteStore.configured(settings.remote, settings.remote_endpoint_url).push(store, settings.env, meta.name)
        pushed = True
        if snapshot_ref is not None and isinstance(server, LocalCluster):
            # The snapshot needs the cluster stopped, so it is written at teardown, after the tests; it follows
            # the dump to the remote store from there (see push_snapshot_later).
            server.snapshot_after_stop(snapshot_ref, then=push_snapshot_later(settings, meta))
    if server.provider == "local":
        # The parked local cluster is this project's own: templates of dumps that are gone only take space.
        drop_orphan_templates(server, store.all_sha256())
    outcome = DatabaseOutcome(
        target,
        method,
        seconds,
        meta,
        generated,
        generate_seconds,
        result.verified,
        reason if generated else None,
        pulled,
        pull_seconds,
        pushed,
        warnings,
        matched_earlier,
        copy_on_write=result.copy_on_write,
    )
    outcome.pool_ahead, outcome.disk_budget = settings.fresh_db_pool, settings.disk_budget
    spare_wanted = (
        spare_in_background
        and _spare_outlives_session(server)
        and _spare_fits(server, meta, settings.disk_budget, warnings, app_to_come=result.deferred)
    )
    if result.deferred:
        dump_path = store.dump_path(settings.env, meta.name)

        def make() -> None:
            # The spare when there is one (a rename), else a clone of the template; refused, as at the start,
            # when a database of that name that pytest-dbsnap did not make has appeared since. Then migrated.
            restore_dump(server, meta, dump_path, target, verify=False, replace=settings.replace_database)
            if spare_wanted and outcome._spare_after is None:
                outcome.start_spare(server, meta)  # the next session's, now that the template is free
            migrate_target(_quiet)

        outcome.deferred, outcome._make = True, make
    if isinstance(server, LocalCluster):
        # Restored from the dump, so the next session restores it again (from the spare): parked, it would only
        # be a third copy on disk.
        server.discard_at_park(target)
    if spare_wanted:
        if spare_at_end and settings.fresh_db_pool > 0:
            outcome._spare_after = (server, meta)
        elif not result.deferred:
            outcome.start_spare(server, meta)
        # A deferred app database starts the spare once it is made (make, above): a spare cloned now would hold
        # the template, and the first test's clone of it would wait for that copy to finish first.
    return outcome


def _spare_outlives_session(server: Server) -> bool:
    """A spare is for the next restore of the dump on this server. A local cluster that is not parked
    (warm_cluster off) is removed at stop with its spare: making one would only copy the whole database while
    the tests run and make the session's teardown wait for the copy."""
    return not (isinstance(server, LocalCluster) and server.warm_slot is None)


def _spare_fits(
    server: Server, meta: DumpMeta, budget: DiskBudget | None, warnings: list[str], *, app_to_come: bool = False
) -> bool:
    """Whether the disk budget holds one more copy of the database for the spare; when it does not, the
    session says so once (a line in the summary) and goes on without one. `app_to_come`: the app database is
    deferred, and counted as if made (a test may still ask for it)."""
    if budget is None or server.copy_on_write:
        return True
    template = template_name(meta)
    with server.connect() as conn:
        if databases.exists(conn, spare_name(meta)):
            return True
        size = databases.size_of(conn, template)
        used = sum(databases.our_sizes(conn).values()) + (size if app_to_come else 0)
    if used + size <= budget.limit(size):
        return True
    warnings.append(
        f"the disk budget ({budget}: {budget.limit(size) / 1e6:.0f} MB) cannot hold a spare copy of the database "
        f"({size / 1e6:.0f} MB; this server's pytest-dbsnap databases take {used / 1e6:.0f} MB), so none was "
        f"made: the next session clones the template instead of renaming a spare. Raise disk_budget to keep one."
    )
    return False


def _spare_quietly(server: Server, meta: DumpMeta) -> None:
    """A spare that cannot be made only costs the next restore its fast path; never fail the session for it."""
    with contextlib.suppress(Exception):
        prepare_spare(server, meta)


def verify_restored_dump(outcome: DatabaseOutcome, settings: Settings) -> None:
    """Check that the dump this session restored still has the sha256 its metadata recorded (DumpCorrupt if
    not); for a user's own database phase."""
    from pytest_dbsnap.dumps.restore import verify_file

    if outcome.meta is None:
        raise DumpError(f"No dump was restored into {outcome.name!r} in this session, so there is none to verify.")
    meta = outcome.meta
    verify_file(meta, DumpStore(settings.dumps_dir).dump_path(meta.environment, meta.name))


@contextlib.contextmanager
def template_clone(server: Server, outcome: DatabaseOutcome, *, need: str, fix: str) -> Iterator[str]:
    """A private database cloned from the restored dump's template, dropped afterwards (pass or fail): what
    `fresh_db` and transactional Django tests get, from the session's pool (a rename when a copy is ready).
    DumpError (`need`, then `fix`) when the session has no template."""
    meta = outcome.meta
    template = template_name(meta) if meta is not None else None
    if outcome._pool is None:
        with server.connect() as conn:
            if template is None or not databases.exists(conn, template):
                raise DumpError(f"{need}, and this session has none (--skip-dump-restore, or no dump). {fix}")
    assert template is not None
    pool = outcome.pool(server, template)
    name = pool.take()
    try:
        yield name
    finally:
        pool.give_back(name)

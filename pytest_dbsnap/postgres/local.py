"""The embedded default: a throwaway cluster started from a parked folder, a snapshot or a pristine copy.

Each session starts its own cluster on a free port on 127.0.0.1, durability off (throwaway data), as the account
of account.py. Nobody gets in without the cluster's secret: TCP needs its random password (scram-sha-256), the
socket sits in a 0700 folder and takes only the invoking OS user (peer). Leftovers: parking.py.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from filelock import FileLock
from psycopg import sql

from pytest_dbsnap.core import progress, reaper
from pytest_dbsnap.core.proc import chown_tree, run, tail
from pytest_dbsnap.core.redact import add_secret
from pytest_dbsnap.errors import DbsnapError, ServerError, SnapshotUnusable, ToolError
from pytest_dbsnap.postgres.account import (
    free_space,
    runtime_base,
    server_account,
)
from pytest_dbsnap.postgres.base import PgTools, Server, find_pg_tools, free_port, wait_until_accepting
from pytest_dbsnap.postgres.binaries import BinariesChoice
from pytest_dbsnap.postgres.copy_on_write import has_copy_on_write
from pytest_dbsnap.postgres.databases import TEMPLATE_PREFIX, drop
from pytest_dbsnap.postgres.parking import (
    CLUSTER_FORMAT,
    SECRET_FILE,
    SUPERUSER,
    cluster_instructions,
    is_current_format,
    owner_file,
    process_start,
    read_secret,
    reap,
    remove_outdated_pristines,
    remove_stale_clusters,
    start_postmaster,
    stop_postmaster,
    write_auth_files,
)
from pytest_dbsnap.postgres.snapshot import (
    DumpRef,
    Snapshot,
    check_snapshot,
    controldata,
    locate_snapshot,
    require_programs,
    unpack,
    write_snapshot,
)

log = logging.getLogger(__name__)

# Settings for throwaway data: nothing needs to survive a crash, and restores go faster without WAL work.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "max_connections": "200",
    "jit": "off",
}
_PORT_TRIES = 4


class LocalCluster(Server):
    """A private cluster in a temporary folder, stopped and removed by stop()."""

    provider = "local"

    def __init__(
        self,
        tools: PgTools,
        *,
        cache_dir: Path,
        start_timeout: float = 30.0,
        port: int | None = None,
        warm_key: str | None = None,
        warm_owner: Path | None = None,
        snapshot_of: DumpRef | None = None,
    ) -> None:
        super().__init__({"host": "127.0.0.1", "port": "0", "user": SUPERUSER}, tools)
        self.cache_dir = cache_dir
        self.start_timeout = start_timeout
        self.requested_port = port
        self.account = server_account()
        self.folder: Path | None = None
        self.reused_pristine = False
        self.started_warm = False
        self.rebuilt_outdated = False  # a parked folder of an older, less secure version was thrown away
        self.start_seconds = 0.0
        # With a warm key the data folder is parked at stop and taken back at the next start, so databases
        # made in this session (a dump's template and spare) make the next session's restore a rename.
        self.warm_slot = self._warm_slot(warm_key) if warm_key else None
        self.warm_owner = warm_owner  # the project a parked folder belongs to: gone project, evicted folder
        # With no parked folder, a cluster snapshot of this dump (if one fits this machine) replaces initdb and
        # the pg_restore that would follow.
        self.snapshot_of = snapshot_of
        self.started_from_snapshot: str | None = None  # the archive's file name
        self.snapshot_seconds = 0.0  # unpack + start, when started from a snapshot
        self.snapshot_problem: str | None = None  # why a snapshot was not used (a warning for the summary)
        self.snapshot_written: str | None = None  # what stop() wrote, for the summary
        self.snapshot_write_problem: str | None = None  # why stop() wrote none although asked to
        self._snapshot_request: DumpRef | None = None
        self._discard_at_park: set[str] = set()
        self._after_snapshot: Callable[[], tuple[str, ...]] | None = None
        self._postmaster: int | None = None  # the pid of this process's child, reaped at each stop

    def _warm_slot(self, warm_key: str) -> Path:
        account = self.account.user if self.account else str(os.geteuid())
        # Keyed by the programs' build (origin and exact version): a folder parked by another build is never
        # started by this one.
        return runtime_base() / f"warm-pg{self.tools.version}-{self.tools.build_tag}-{account}-{warm_key}"

    @property
    def socket_dir(self) -> Path:
        assert self.folder is not None, "cluster not started"
        return self.folder / "sock"

    @property
    def data_dir(self) -> Path:
        assert self.folder is not None, "cluster not started"
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        assert self.folder is not None, "cluster not started"
        return self.folder / "postgres.log"

    @property
    def copy_on_write(self) -> bool:
        """PostgreSQL 18+ and a cluster folder on XFS, btrfs or APFS (probed once per filesystem)."""
        if self.folder is None or self.tools.major < 18:
            return False
        return has_copy_on_write(self.folder)

    @property
    def port(self) -> int:
        return int(self.params["port"])

    # --- start ----------------------------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        try:
            return self._start()
        except ToolError as exc:
            if "No space left on device" not in str(exc) and "Disk quota exceeded" not in str(exc):
                raise
            base = runtime_base()
            raise ServerError(
                f"The local PostgreSQL could not be set up because a disk is full. Its cluster folders are in "
                f"{base} ({free_space(base)}) and its pristine copy in {self.cache_dir} "
                f"({free_space(self.cache_dir)}). "
                f"Free space there, or set TMPDIR (the cluster) or cache_dir (the cache) to a folder with room.\n"
                f"{exc}"
            ) from exc

    def _start(self) -> LocalCluster:
        began = time.monotonic()
        base = runtime_base()
        remove_stale_clusters(base, self.tools)
        self.folder = Path(tempfile.mkdtemp(prefix="cluster-", dir=base))
        # Killed while starting, the half-made cluster is the reaper's; once started, its owner registers it.
        folder = self.folder
        with reaper.watched(lambda watchdog: watchdog.register(*cluster_instructions(folder))):
            self._set_up_folder()
        self.start_seconds = time.monotonic() - began
        if self.started_from_snapshot is not None:
            self.snapshot_seconds = self.start_seconds
        return self

    def _set_up_folder(self) -> None:
        assert self.folder is not None
        try:
            (self.folder / "owner.json").write_text(
                json.dumps({"pid": os.getpid(), "started": process_start(os.getpid())})
            )
            # The socket folder is the server account's alone: only it (and root) may knock on the socket.
            self.socket_dir.mkdir(mode=0o700)
            # Parked folder > cluster snapshot of the dump > pristine copy > initdb.
            self.started_warm = self._claim_warm()
            if not self.started_warm and not self._unpack_snapshot():
                self._copy_pristine(self._pristine())
            if self.account:
                os.chown(self.folder, self.account.uid, self.account.gid)
                os.chown(self.socket_dir, self.account.uid, self.account.gid)
            self.socket_dir.chmod(0o700)
            self.folder.chmod(0o755)
            try:
                self._start_postmaster()
            except ServerError as exc:
                if not self.started_warm and self.started_from_snapshot is None:
                    raise
                if self.started_from_snapshot is not None:
                    # Files of another build (catalog version, block size): the server refuses them. The dump
                    # is restored instead, and the next cold restore writes a snapshot that fits.
                    fatal = [line for line in self._log_tail().splitlines() if "FATAL" in line]
                    reason = fatal[-1].split("FATAL:", 1)[-1].strip() if fatal else str(exc)
                    self._snapshot_not_used(self.started_from_snapshot, f"the server did not start from it: {reason}")
                    self._snapshot_files(self.started_from_snapshot).discard()
                else:
                    # A parked folder that does not start again is only a lost cache: begin from pristine.
                    log.warning("the parked warm cluster did not start; starting from the pristine copy")
                self._stop_server()
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.started_warm = False
                self.started_from_snapshot = None
                self._copy_pristine(self._pristine())
                self._start_postmaster()
        except BaseException:
            self._remove_folder()
            raise

    def _snapshot_files(self, archive_name: str) -> Snapshot:
        assert self.snapshot_of is not None
        folder = self.snapshot_of.dump_path.parent
        return Snapshot(folder / archive_name, folder / archive_name.replace(".tar.zst", ".json"))

    def _snapshot_not_used(self, archive_name: str, reason: str) -> None:
        self.snapshot_problem = (
            f"the cluster snapshot {archive_name} was not used ({reason.splitlines()[0]}); the dump was restored "
            f"instead"
        )
        log.warning("%s", self.snapshot_problem)

    def _unpack_snapshot(self) -> bool:
        """Start from this machine's snapshot of the dump, if there is one: True when unpacked (not yet started).

        Anything wrong with it (another machine's key, a missing file, a damaged or truncated archive) is a
        warning, the partial folder is removed, and so is the snapshot (the next cold restore writes a new one).
        """
        if self.snapshot_of is None:
            return False
        try:
            snapshot, key = locate_snapshot(self.tools, self.snapshot_of)
        except ToolError as exc:
            log.warning("cannot tell whether a cluster snapshot fits this machine: %s", exc)
            return False
        try:
            meta = check_snapshot(snapshot, key)
            if meta is None:
                return False
            with progress.substep(f"unpacking the cluster snapshot {snapshot.name}"):
                unpack(self.tools, snapshot, meta, self.data_dir)
        except (SnapshotUnusable, ToolError, OSError) as exc:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._snapshot_not_used(snapshot.name, str(exc))
            if isinstance(exc, SnapshotUnusable):
                snapshot.discard()
            return False
        if self.account:
            chown_tree(self.data_dir, self.account)
        # Machine-specific: the ident map names this machine's OS users. No secret came with it: the first
        # start sets a new one through the socket.
        write_auth_files(self.account, self.data_dir)
        (self.data_dir / SECRET_FILE).unlink(missing_ok=True)
        self.started_from_snapshot = snapshot.name
        return True

    def _copy_pristine(self, pristine: Path) -> None:
        # cp -a keeps the server account's ownership and modes, and is quicker than a Python tree copy.
        run(["cp", "-a", str(pristine), str(self.data_dir)], what="copying the pristine cluster")

    def _claim_warm(self) -> bool:
        """Take the parked data folder, if any: a rename, so it costs the same at any database size."""
        if self.warm_slot is None:
            return False
        try:
            os.rename(self.warm_slot, self.data_dir)
        except FileNotFoundError:
            return False  # none parked, or another session took it first
        if not is_current_format(self.data_dir) or read_secret(self.data_dir) is None:
            # Parked by an older version (trust authentication): rebuilt from the pristine copy, never reused.
            log.warning("the parked cluster %s was made by an older pytest-dbsnap; starting afresh", self.warm_slot)
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.rebuilt_outdated = True
            return False
        return True

    def _park(self) -> None:
        """Leave the stopped data folder for the next session; the newest parked folder wins."""
        assert self.warm_slot is not None
        assert self.folder is not None
        base = self.warm_slot.parent
        incoming = base / f".parking-{os.getpid()}-{self.folder.name}"
        os.rename(self.data_dir, incoming)
        trash = base / f".trash-{os.getpid()}-{self.folder.name}"
        try:
            os.rename(self.warm_slot, trash)
        except FileNotFoundError:
            trash = None  # type: ignore[assignment]
        try:
            os.rename(incoming, self.warm_slot)
        except OSError:
            shutil.rmtree(incoming, ignore_errors=True)  # another session parked at the same moment
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        owner = {"project_root": str(self.warm_owner) if self.warm_owner else None, "parked_at": time.time()}
        owner_file(self.warm_slot).write_text(json.dumps(owner))

    def _pristine(self) -> Path:
        """The initdb'd data folder for this build of the Postgres programs (origin and exact version), made once
        and reused (locked for parallel runs)."""
        account = self.account.user if self.account else str(os.geteuid())
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        build = f"pg{self.tools.version}-{self.tools.build_tag}"
        pristine = self.cache_dir / f"pristine-v{CLUSTER_FORMAT}-{build}-{account}"
        with FileLock(str(pristine) + ".lock", timeout=300):
            if (pristine / "PG_VERSION").is_file() and is_current_format(pristine):
                self.reused_pristine = True
                return pristine
            remove_outdated_pristines(self.cache_dir)
            scratch = Path(tempfile.mkdtemp(prefix="initdb-", dir=runtime_base()))
            try:
                target = scratch / "data"
                # initdb wants a superuser password for scram; a random one nobody keeps: every cluster made
                # from this copy gets its own secret at its first start, through the socket.
                password_file = scratch / "pwfile"
                password_file.write_text(secrets.token_urlsafe(32) + "\n")
                password_file.chmod(0o600)
                if self.account:
                    chown_tree(scratch, self.account)
                    scratch.chmod(0o700)
                run(
                    [
                        self.tools.path("initdb"),
                        "-D",
                        str(target),
                        "-U",
                        SUPERUSER,
                        f"--pwfile={password_file}",
                        "--auth-local=peer",
                        "--auth-host=scram-sha-256",
                        "-E",
                        "UTF8",
                        "--locale=C",
                        "--no-sync",
                        "--no-instructions",
                    ],
                    what="initdb (creating the pristine cluster)",
                    run_as=self.account,
                    cwd=scratch,
                    timeout=300,
                )
                password_file.unlink()
                write_auth_files(self.account, target)
                shutil.rmtree(pristine, ignore_errors=True)
                # cp -a rather than rename: the cache may be on another filesystem than the temp folder.
                run(["cp", "-a", str(target), str(pristine)], what="storing the pristine cluster")
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return pristine

    def _use_secret(self) -> None:
        """Connect over TCP with the cluster's secret from now on; a new cluster gets its secret here.

        The password is set at every start, through the socket: a folder that was snapshotted had its password
        removed (a snapshot carries none) and is parked without one.
        """
        secret = read_secret(self.data_dir)
        new = secret is None
        if secret is None:
            secret = secrets.token_urlsafe(24)
        with psycopg.connect(self.conninfo("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(SUPERUSER), sql.Literal(secret)))
        if new:
            secret_path = self.data_dir / SECRET_FILE
            fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secret)
        add_secret(secret)
        self.params.update({"host": "127.0.0.1", "password": secret})

    def _start_postmaster(self) -> None:
        assert self.folder is not None
        last_error = ""
        for _attempt in range(_PORT_TRIES):
            port = self.requested_port or free_port()
            self.params["port"] = str(port)
            try:
                self._launch(["-p", str(port), "-h", "127.0.0.1"], what="starting the server")
            except ToolError as exc:
                server_log = self._log_tail()
                if "could not bind" in server_log or "already in use" in server_log:
                    last_error = server_log
                    if self.requested_port:
                        raise ServerError(
                            f"Port {port} on 127.0.0.1 is already in use, so the local PostgreSQL cannot listen "
                            f"there. Free the port or leave the port unset so a free one is picked."
                        ) from exc
                    self.log_path.unlink(missing_ok=True)
                    continue
                raise ServerError(
                    f"The local PostgreSQL in {self.data_dir} did not start ({exc}).\nServer log:\n{server_log}"
                ) from exc
            # First through the socket (peer: the invoking OS user), which works before the secret is set.
            self.params["host"] = str(self.socket_dir)
            self.params.pop("password", None)
            wait_until_accepting(self, self.start_timeout)
            self._use_secret()
            return
        raise ServerError(
            f"Could not find a free port for the local PostgreSQL after {_PORT_TRIES} tries:\n{last_error}"
        )

    def _launch(self, listen: list[str], *, what: str) -> None:
        """Start the postmaster on this data folder with `listen` options, the private socket and the fast
        settings; as the server account, returning once it accepts connections."""
        options = [
            *listen,
            "-k",
            str(self.socket_dir),
            *[arg for key, value in FAST_SETTINGS.items() for arg in ("-c", f"{key}={value}")],
        ]
        assert self.folder is not None
        self._postmaster = start_postmaster(
            self.tools,
            self.data_dir,
            options,
            log_path=self.log_path,
            account=self.account,
            cwd=self.folder,
            timeout=self.start_timeout,
            what=what,
        )

    def _stop_server(self) -> bool:
        """stop_postmaster, then the exit status of the postmaster this process started is collected."""
        stopped = stop_postmaster(self.tools, self.data_dir, self.account)
        # It removes its pid file as its last act, so after a clean stop its exit is a moment away.
        if self._postmaster is not None and reap(self._postmaster, 5 if stopped else 0.1):
            self._postmaster = None
        return stopped

    def _log_tail(self) -> str:
        try:
            return tail(self.log_path.read_text(errors="replace"))
        except OSError:
            return "(no server log)"

    # --- stop -----------------------------------------------------------------------------------------------

    def stop(self) -> None:
        if self.folder is None:
            return
        try:
            if self.warm_slot is not None:
                self._drop_discarded()
            stopped_cleanly = self._stop_server()
            if stopped_cleanly and self._snapshot_request is not None:
                stopped_cleanly = self._write_snapshot(self._snapshot_request)
            if stopped_cleanly and self.warm_slot is not None:
                try:
                    self._park()
                except OSError as exc:
                    log.warning("could not park the local cluster for the next session: %s", exc)
        finally:
            self._remove_folder()
        if self._snapshot_request is not None and self.snapshot_write_problem is None:
            self._push_snapshot(self._snapshot_request)

    def discard_at_park(self, name: str) -> None:
        """Drop this database before the folder is parked: the session restored it from a dump, so the next
        session restores it again (the spare is renamed in). Parked, it would be a third full copy beside the
        template and the spare."""
        self._discard_at_park.add(name)

    def _drop_discarded(self) -> None:
        if not self._discard_at_park:
            return
        try:
            with self.connect() as conn:
                for name in sorted(self._discard_at_park):
                    drop(conn, name)
        except psycopg.Error as exc:  # only costs the parked folder its space
            log.warning("could not drop %s before parking the local cluster: %s", ", ".join(self._discard_at_park), exc)

    def snapshot_after_stop(self, ref: DumpRef, *, then: Callable[[], tuple[str, ...]] | None = None) -> None:
        """Write a cluster snapshot of this dump when the cluster stops (the session's data came from a cold
        restore or was generated): the next fresh machine starts from it. `then` (a push to the remote store)
        runs once it is written, after the folder is parked or removed."""
        self._snapshot_request = ref
        self._after_snapshot = then

    def _push_snapshot(self, ref: DumpRef) -> None:
        if self._after_snapshot is None:
            return
        try:
            pushed = self._after_snapshot()
        except (DbsnapError, OSError) as exc:
            log.warning("the cluster snapshot of %s was not pushed: %s", ref.meta.name, exc)
            self.snapshot_write_problem = (
                f"the cluster snapshot of {ref.meta.name} was not pushed to the remote store: "
                f"{str(exc).splitlines()[0]}"
            )
            return
        if pushed:
            self.snapshot_written = (
                f"{self.snapshot_written or 'cluster snapshot ' + pushed[0]}, pushed to the remote store"
            )

    def _write_snapshot(self, ref: DumpRef) -> bool:
        """Keep only the dump's template, remove the password, stop, pack. Never fails the session: a snapshot
        that cannot be written is a warning. True when the folder is stopped cleanly (it may be parked)."""
        began = time.monotonic()
        try:
            require_programs()
            server_version = self._prepare_for_snapshot(f"{TEMPLATE_PREFIX}{ref.meta.template_key}")
            facts = controldata(self.tools, self.data_dir)
            written = write_snapshot(self.tools, self.data_dir, ref, facts, server_version, began=began)
        except (DbsnapError, OSError, psycopg.Error) as exc:
            log.warning("no cluster snapshot of %s was written: %s", ref.meta.name, exc)
            self.snapshot_write_problem = (
                f"no cluster snapshot of {ref.meta.name} was written: {str(exc).splitlines()[0]}"
            )
            return self._stop_server()
        if written is not None:
            snapshot, meta = written
            self.snapshot_written = (
                f"cluster snapshot {snapshot.name} written in {meta.write_seconds:.1f} s "
                f"({meta.size_bytes / 1e6:.1f} MB)"
            )
        return True

    def _prepare_for_snapshot(self, keep: str) -> str:
        """On the stopped folder, a server reachable only on the socket drops every database but the system
        ones and `keep` (the app database, spares, other dumps' templates) and forgets the superuser's password;
        then it stops cleanly (a shutdown checkpoint, so no WAL before it is needed)."""
        port = self.params["port"]
        self._launch(["-c", "listen_addresses=", "-p", port], what="starting the server (socket only)")
        try:
            with psycopg.connect(
                host=str(self.socket_dir), port=port, user=SUPERUSER, dbname="postgres", autocommit=True
            ) as conn:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (keep,)).fetchone() is None:
                    raise SnapshotUnusable(f"the cluster has no template database {keep}")
                rows = conn.execute(
                    "SELECT datname, datistemplate FROM pg_database "
                    "WHERE datname NOT IN ('postgres', 'template0', 'template1') AND datname <> %s",
                    (keep,),
                ).fetchall()
                for name, is_template in rows:
                    database = sql.Identifier(str(name))
                    if is_template:
                        conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(database))
                    conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(database))
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD NULL").format(sql.Identifier(SUPERUSER)))
                row = conn.execute("SHOW server_version").fetchone()
                return str(row[0]).split()[0] if row else self.tools.version
        finally:
            if not self._stop_server():
                raise ServerError(f"the local PostgreSQL in {self.data_dir} did not stop cleanly")

    def _remove_folder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def describe(self) -> str:
        return f"local PostgreSQL {self.tools.version} at 127.0.0.1:{self.params['port']}"


def start_local_cluster(
    binaries: BinariesChoice | Path | None,
    cache_dir: Path,
    start_timeout: float,
    warm_key: str | None = None,
    warm_owner: Path | None = None,
    snapshot_of: DumpRef | None = None,
) -> LocalCluster:
    return LocalCluster(
        find_pg_tools(binaries),
        cache_dir=cache_dir,
        start_timeout=start_timeout,
        warm_key=warm_key,
        warm_owner=warm_owner,
        snapshot_of=snapshot_of,
    ).start()

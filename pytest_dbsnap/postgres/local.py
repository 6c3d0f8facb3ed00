"""The embedded default: a throwaway cluster from local Postgres binaries, started from a cached pristine copy.

initdb runs once per Postgres version into the cache; each session copies that pristine data folder (fast)
and starts it on a free port on 127.0.0.1 with durability turned off (throwaway data). When started by root
the server runs as the dedicated unprivileged account `dbsnap` (never `postgres`, which owns the machine's
own PostgreSQL), since Postgres refuses to run as root. Nobody gets in without the cluster's secret: TCP
needs its random password (scram-sha-256), the unix socket sits in a 0700 folder of the server's account and
takes only the invoking OS user (peer). A session killed with -9 leaves a folder whose owner pid is dead: the
next start stops that postmaster and removes the folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import secrets
import shlex
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from filelock import FileLock
from psycopg import sql

from pytest_dbsnap.core import progress, reaper
from pytest_dbsnap.core.proc import RunAs, chown_tree, run, tail
from pytest_dbsnap.core.redact import add_secret
from pytest_dbsnap.dumps.databases import TEMPLATE_PREFIX
from pytest_dbsnap.errors import DbsnapError, ServerError, SnapshotUnusable, ToolError
from pytest_dbsnap.postgres.base import PgTools, Server, find_pg_tools, wait_until_accepting
from pytest_dbsnap.postgres.binaries import BinariesChoice
from pytest_dbsnap.postgres.copy_on_write import has_copy_on_write
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

SUPERUSER = "postgres"
DEDICATED_ACCOUNT = "dbsnap"
# Bumped when the on-disk layout or its security changes: older pristine copies are removed, not reused.
CLUSTER_FORMAT = 2
SECRET_FILE = "dbsnap.secret"  # noqa: S105 - a file name; inside the data folder so it is parked with it
IDENT_MAP = "dbsnap"
# No trust line anywhere: the socket takes the invoking OS user only (and its folder is 0700), TCP the secret.
PG_HBA = f"""\
# pytest-dbsnap (format {CLUSTER_FORMAT}): nobody gets in without the cluster's secret.
local   all   all                  peer map={IDENT_MAP}
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""
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


def server_account() -> RunAs | None:
    """The account the server runs as: None (ourselves) unless we are root.

    As root it is the dedicated `dbsnap` account (created when missing), never `postgres`: a cluster superuser
    can run programs as the server's account (COPY ... TO PROGRAM), and `postgres` owns the machine's own
    PostgreSQL data on Debian and Ubuntu.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(DEDICATED_ACCOUNT)
    except KeyError:
        try:
            run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    DEDICATED_ACCOUNT,
                ],
                what=f"creating the unprivileged account {DEDICATED_ACCOUNT!r} to run PostgreSQL as (it refuses root)",
            )
        except ToolError as exc:
            with contextlib.suppress(KeyError):  # another session created it at the same moment
                entry = pwd.getpwnam(DEDICATED_ACCOUNT)
                return RunAs(DEDICATED_ACCOUNT, entry.pw_uid, entry.pw_gid)
            raise ServerError(
                f"PostgreSQL refuses to run as root, and the unprivileged account {DEDICATED_ACCOUNT!r} to run it "
                f"as could not be created ({exc}). Create a system account named {DEDICATED_ACCOUNT!r} with no "
                f"login shell, or run the tests as an ordinary user."
            ) from exc
        entry = pwd.getpwnam(DEDICATED_ACCOUNT)
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise ServerError(
            f"The account {DEDICATED_ACCOUNT!r} that the local PostgreSQL runs as has uid {entry.pw_uid} and gid "
            f"{entry.pw_gid}; it must be an unprivileged account (not root's uid or group). Fix the account, or "
            f"run the tests as an ordinary user."
        )
    return RunAs(DEDICATED_ACCOUNT, entry.pw_uid, entry.pw_gid)


def _can_traverse(folder: Path, account: RunAs) -> Path | None:
    """The first folder on the way to `folder` that `account` may not enter (search permission), or None."""
    for step in [*reversed(folder.parents), folder]:
        try:
            info = step.stat()
        except OSError:
            return step
        if info.st_uid == account.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == account.gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return step
    return None


# A unix socket's path holds 107 bytes (sun_path, Linux; 103 on macOS): the cluster's socket is
# <base>/cluster-XXXXXXXX/sock/.s.PGSQL.<port>, so a long TMPDIR would make pg_ctl fail without saying why.
SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107
_SOCKET_TAIL = "/cluster-xxxxxxxx/sock/.s.PGSQL.65535"


def runtime_base() -> Path:
    """Per-user folder of running clusters; world-traversable so the server account can reach its own.

    As root, a TMPDIR inside a private folder (mode 0700, such as /root/tmp) cannot be entered by the server
    account: /tmp is used then, and when neither works the error says which folder blocks and what to set.
    """
    account = server_account()
    preferred = Path(tempfile.gettempdir())
    blocked: list[str] = []
    for parent in dict.fromkeys([preferred, Path("/tmp")]):
        base = parent / f"pytest-dbsnap-{os.geteuid()}"
        if len(str(base)) + len(_SOCKET_TAIL) > SOCKET_PATH_MAX:
            blocked.append(f"{parent} (its path is too long for the server's socket)")
            continue
        if parent != preferred and account is None:
            continue  # an ordinary user's TMPDIR is theirs to choose; only a long one falls back to /tmp
        blocking = _can_traverse(parent, account) if account is not None else None
        if blocking is not None:
            blocked.append(f"{parent} (the account cannot enter {blocking})")
            continue
        base.mkdir(mode=0o755, exist_ok=True)
        if base.stat().st_uid != os.geteuid() or base.is_symlink():
            raise ServerError(f"{base} belongs to another user; remove it or set TMPDIR to a folder of your own.")
        base.chmod(0o755)
        return base
    if account is None:
        raise ServerError(
            f"No folder for the local PostgreSQL cluster: {'; '.join(blocked)}. A unix socket path holds at most "
            f"{SOCKET_PATH_MAX} bytes: set TMPDIR to a short folder (under {SOCKET_PATH_MAX - len(_SOCKET_TAIL)} "
            f"characters), such as /tmp."
        )
    raise ServerError(
        f"The local PostgreSQL runs as the unprivileged account {account.user!r} (it refuses root), which "
        f"cannot use a folder for its cluster: {'; '.join(blocked)}. Set TMPDIR to a short folder that every "
        f"account may enter (chmod o+x on each folder on the way, as /tmp is), or run the tests as an "
        f"ordinary user."
    )


def _free(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
    except OSError:
        return "free space unknown"


def _invoking_user() -> str:
    """The OS user the socket's peer authentication maps to the superuser: whoever runs pytest-dbsnap."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError as exc:
        raise ServerError(
            f"This process runs as uid {os.geteuid()}, which has no entry in the user database, so the local "
            f"PostgreSQL cannot tell it apart on its socket. Run as a user with a name (an /etc/passwd entry)."
        ) from exc


def read_secret(data_dir: Path) -> str | None:
    try:
        return (data_dir / SECRET_FILE).read_text().strip() or None
    except OSError:
        return None


def is_current_format(data_dir: Path) -> bool:
    """A data folder made by this version: no trust authentication (older versions trusted every local user)."""
    try:
        hba = (data_dir / "pg_hba.conf").read_text()
    except OSError:
        return False
    lines = [line.split("#", 1)[0].split() for line in hba.splitlines()]
    return f"(format {CLUSTER_FORMAT})" in hba and not any("trust" in words for words in lines)


def free_port() -> int:
    """A port nobody listens on now; the caller retries if it is taken before the server binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process, so that a reused pid is not mistaken for the owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _exited(pid: int) -> bool:
    """A zombie has exited; it only waits to be reaped, which a container's PID 1 may never do."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _exited(pid):
        return False
    return started is None or _process_start(pid) in (None, started)


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
        self._after_snapshot: Callable[[], tuple[str, ...]] | None = None

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
                f"{base} ({_free(base)}) and its pristine copy in {self.cache_dir} ({_free(self.cache_dir)}). "
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
        with reaper.watched(lambda watchdog: watchdog.watch_cluster(folder)):
            self._set_up_folder()
        self.start_seconds = time.monotonic() - began
        if self.started_from_snapshot is not None:
            self.snapshot_seconds = self.start_seconds
        return self

    def _set_up_folder(self) -> None:
        assert self.folder is not None
        try:
            (self.folder / "owner.json").write_text(
                json.dumps({"pid": os.getpid(), "started": _process_start(os.getpid())})
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
                stop_postmaster(self.tools, self.data_dir, self.account)
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
        self._write_auth_files(self.data_dir)
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
        _owner_file(self.warm_slot).write_text(json.dumps(owner))

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
            _remove_outdated_pristines(self.cache_dir)
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
                self._write_auth_files(target)
                shutil.rmtree(pristine, ignore_errors=True)
                # cp -a rather than rename: the cache may be on another filesystem than the temp folder.
                run(["cp", "-a", str(target), str(pristine)], what="storing the pristine cluster")
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return pristine

    def _write_auth_files(self, data_dir: Path) -> None:
        """pg_hba.conf without trust, and the ident map that lets the invoking OS user in on the socket."""
        (data_dir / "pg_hba.conf").write_text(PG_HBA)
        # The server's own account may use the socket too: it owns the data files anyway.
        users = dict.fromkeys([_invoking_user(), *([self.account.user] if self.account else [])])
        with (data_dir / "pg_ident.conf").open("w") as ident:
            ident.write("# pytest-dbsnap: the OS users that may connect on the socket as the superuser.\n")
            ident.writelines(f"{IDENT_MAP}   {user}   {SUPERUSER}\n" for user in users)
        if self.account:
            for name in ("pg_hba.conf", "pg_ident.conf"):
                os.chown(data_dir / name, self.account.uid, self.account.gid)

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
                self._pg_ctl_start(["-p", str(port), "-h", "127.0.0.1"], what="pg_ctl start")
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

    def _pg_ctl_start(self, listen: list[str], *, what: str) -> None:
        """Start the postmaster on this data folder with `listen` options, the private socket and the fast
        settings; as the server account, waiting until it accepts connections."""
        options = [
            *listen,
            "-k",
            str(self.socket_dir),
            *[arg for key, value in FAST_SETTINGS.items() for arg in ("-c", f"{key}={value}")],
        ]
        run(
            [
                self.tools.path("pg_ctl"),
                "start",
                "-w",
                "-t",
                str(int(self.start_timeout)),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-o",
                shlex.join(options),
            ],
            what=what,
            run_as=self.account,
            cwd=self.folder,
            timeout=self.start_timeout + 10,
        )

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
            stopped_cleanly = stop_postmaster(self.tools, self.data_dir, self.account)
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
            return stop_postmaster(self.tools, self.data_dir, self.account)
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
        self._pg_ctl_start(
            ["-c", "listen_addresses=", "-p", port], what="pg_ctl start (socket only, to prepare the cluster snapshot)"
        )
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
            if not stop_postmaster(self.tools, self.data_dir, self.account):
                raise ServerError(f"the local PostgreSQL in {self.data_dir} did not stop cleanly")

    def _remove_folder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def describe(self) -> str:
        return f"local PostgreSQL {self.tools.version} at 127.0.0.1:{self.params['port']}"


def stop_postmaster(tools: PgTools, data_dir: Path, account: RunAs | None) -> bool:
    """Stop the postmaster of one data folder (found by its postmaster.pid, never by name).

    True when it shut down cleanly (a fast shutdown, or it was not running), so the folder may be reused.
    """
    if not (data_dir / "postmaster.pid").exists():
        return True
    for mode in ("fast", "immediate"):
        try:
            run(
                [tools.path("pg_ctl"), "stop", "-D", str(data_dir), "-m", mode, "-w", "-t", "30"],
                what=f"pg_ctl stop -m {mode}",
                run_as=account,
                cwd="/",
                timeout=40,
            )
            return mode == "fast"
        except ToolError as exc:
            log.warning("stopping PostgreSQL in %s (%s) failed: %s", data_dir, mode, exc)
    return False


def _remove_outdated_pristines(cache_dir: Path) -> None:
    """Pristine copies of older versions trusted every local user: removed, so nothing starts from them."""
    for old in cache_dir.glob("pristine-*"):
        if old.is_dir() and not old.name.startswith(f"pristine-v{CLUSTER_FORMAT}-"):
            shutil.rmtree(old, ignore_errors=True)


WARM_MAX_AGE = 7 * 24 * 3600  # a parked folder unused for a week is evicted: it only takes disk space


def _owner_file(slot: Path) -> Path:
    return slot.with_name(f"{slot.name}.owner.json")


def evict_parked(base: Path, now: float | None = None) -> list[Path]:
    """Parked folders of projects that are gone (deleted checkouts, temporary test projects), unused for a week,
    or made by an older version (trust authentication). One that a session takes at this moment is renamed
    away first, so it is never removed under it."""
    now = time.time() if now is None else now
    evicted: list[Path] = []
    for slot in base.glob("warm-*"):
        if not slot.is_dir():
            continue
        try:
            owner = json.loads(_owner_file(slot).read_text())
            root, parked_at = owner.get("project_root"), float(owner["parked_at"])
        except (OSError, ValueError, KeyError, TypeError):
            root, parked_at = None, slot.stat().st_mtime
        outdated = not is_current_format(slot)
        if (root is not None and not Path(root).is_dir()) or now - parked_at > WARM_MAX_AGE or outdated:
            trash = base / f".trash-evict-{os.getpid()}-{slot.name}"
            try:
                os.rename(slot, trash)  # atomic: a session claiming it at the same time wins or loses cleanly
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
            _owner_file(slot).unlink(missing_ok=True)
            evicted.append(slot)
    return evicted


def remove_stale_clusters(base: Path, tools: PgTools) -> list[Path]:
    """Stop and remove clusters whose owning process is gone (a session killed with -9)."""
    removed: list[Path] = []
    account = server_account()
    for folder in base.glob("cluster-*"):
        try:
            owner = json.loads((folder / "owner.json").read_text())
            if owner.get("up") and Path(str(owner.get("project_root"))).is_dir():
                continue  # kept running by `dbsnap up` until `dbsnap down` (or its project is gone)
            pid, started = int(owner["pid"]), owner.get("started")
        except (OSError, ValueError, KeyError, TypeError):
            # A folder without a readable owner file is only stale once it is old (it may be starting now).
            if time.time() - folder.stat().st_mtime < 60:
                continue
            pid, started = -1, None
        if pid > 0 and _alive(pid, started):
            continue
        stop_postmaster(tools, folder / "data", account)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    evict_parked(base)
    # Half-done initdb, parking or trash folders of killed processes (old enough not to be in use).
    for scratch in [*base.glob("initdb-*"), *base.glob(".parking-*"), *base.glob(".trash-*")]:
        with contextlib.suppress(OSError):
            if time.time() - scratch.stat().st_mtime > 600:
                shutil.rmtree(scratch, ignore_errors=True)
    return removed


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

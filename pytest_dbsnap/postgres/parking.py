"""What outlives a session on purpose (a parked data folder, kept for the next session's rename) and what must
not (the folder of a session killed with -9): telling them apart, stopping and removing the leftovers."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from pytest_dbsnap.core import reaper
from pytest_dbsnap.core.proc import RunAs, as_account, run
from pytest_dbsnap.core.reaper import Instruction
from pytest_dbsnap.errors import ToolError
from pytest_dbsnap.postgres.account import invoking_user, server_account
from pytest_dbsnap.postgres.base import PgTools

log = logging.getLogger(__name__)

SECRET_FILE = "dbsnap.secret"  # noqa: S105 - a file name; inside the data folder so it is parked with it


def read_secret(data_dir: Path) -> str | None:
    try:
        return (data_dir / SECRET_FILE).read_text().strip() or None
    except OSError:
        return None


# Bumped when the on-disk layout or its security changes: older pristine copies are removed, not reused.
CLUSTER_FORMAT = 2


def is_current_format(data_dir: Path) -> bool:
    """A data folder made by this version: no trust authentication (older versions trusted every local user)."""
    try:
        hba = (data_dir / "pg_hba.conf").read_text()
    except OSError:
        return False
    lines = [line.split("#", 1)[0].split() for line in hba.splitlines()]
    return f"(format {CLUSTER_FORMAT})" in hba and not any("trust" in words for words in lines)


def process_start(pid: int) -> str | None:
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
    return started is None or process_start(pid) in (None, started)


def cluster_instructions(folder: Path) -> tuple[Instruction, Instruction]:
    """What a reaper does with a cluster of ours should its owner die: the postmaster (named by its pid file,
    checked by its data folder argument) gets an immediate shutdown, then the folder goes."""
    data = folder / "data"
    return reaper.signal_pidfile(data / "postmaster.pid", expect=str(data)), reaper.remove(folder)


def start_postmaster(
    tools: PgTools,
    data_dir: Path,
    options: Sequence[str],
    *,
    log_path: Path,
    account: RunAs | None,
    cwd: Path,
    timeout: float,
    what: str,
) -> int:
    """Start the postmaster of one data folder in a session of its own (as `pg_ctl start` does) and return its
    pid once its pid file says it is ready, looking every 5 ms: `pg_ctl start -w` looks every 100 ms, most of
    what a start from a ready folder takes. It stays this process's child (`reap` collects its exit after a
    stop); it outlives a killed session as pg_ctl's would, for the reaper's instructions to stop it cleanly,
    and `dbsnap up` leaves it running on purpose. A server that exits or is not ready in time is a ToolError;
    its reason is in `log_path`."""
    argv: list[str] = [str(tools.path("postgres")), "-D", str(data_dir), *options]
    with log_path.open("ab") as log_file:  # opened here: the server writes through the descriptor it inherits
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,  # a Ctrl-C to the terminal's group is the session's to handle, not its
                **as_account(account),
            )
        except OSError as exc:
            raise ToolError(f"{what} could not start {argv[0]}: {exc}", command=argv) from exc
    pid_file = data_dir / "postmaster.pid"
    reaper.wait_for(lambda: process.poll() is not None or _says_ready(pid_file, process.pid), timeout, every=0.005)
    if process.returncode is not None:
        raise ToolError(
            f"{what}: the server exited at start with code {process.returncode} (command: {shlex.join(argv)}).",
            command=argv,
            returncode=process.returncode,
        )
    if _says_ready(pid_file, process.pid):
        # From here it is known by its pid: a Popen collected while its child runs warns ("subprocess ... is
        # still running"), as when `dbsnap up` exits and leaves the server up. Marked done, it never does.
        process.returncode = 0
        return process.pid
    process.send_signal(signal.SIGQUIT)  # never ready: an immediate shutdown, its children with it
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    raise ToolError(
        f"{what}: the server was not ready within {timeout:.0f} s, so it was shut down (command: "
        f"{shlex.join(argv)}). A slow or busy machine may need a larger start_timeout.",
        command=argv,
    )


def reap(pid: int, timeout: float) -> bool:
    """Collect the exit of a postmaster `start_postmaster` started, so that it leaves no zombie; False when it
    has not ended within `timeout`. A pid that is not this process's child (any more) counts as collected."""

    def collected() -> bool:
        try:
            return os.waitpid(pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            return True

    return reaper.wait_for(collected, timeout, every=0.005)


def _says_ready(pid_file: Path, pid: int) -> bool:
    """The pid file is this postmaster's and its status line (the 8th) says `ready`: it accepts connections."""
    try:
        lines = pid_file.read_text().splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def stop_postmaster(tools: PgTools, data_dir: Path, account: RunAs | None) -> bool:
    """Stop the postmaster of one data folder (found by its postmaster.pid, never by name).

    True when it shut down cleanly (a fast shutdown, or it was not running), so the folder may be reused.
    """
    if not (data_dir / "postmaster.pid").exists() or _fast_stop_by_signal(data_dir):
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


def _fast_stop_by_signal(data_dir: Path, timeout: float = 30.0) -> bool:
    """A fast shutdown (SIGINT) of the postmaster its pid file names, then the pid file watched every 5 ms:
    `pg_ctl stop -w` looks every 100 ms, most of what a stop takes. False when the postmaster cannot be signalled
    from here (another user's) or does not stop in time: pg_ctl then does it."""
    pid_file = data_dir / "postmaster.pid"
    pid = reaper.pid_from_file(pid_file, expect=str(data_dir))
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGINT)
    except OSError:
        return False
    # The postmaster removes its pid file as it exits, after the shutdown checkpoint; one that ended without
    # removing it did not stop cleanly, nor did one still running at the deadline.
    reaper.wait_for(lambda: not pid_file.exists() or not reaper.alive(pid), timeout, every=0.005)
    return not pid_file.exists()


def remove_outdated_pristines(cache_dir: Path) -> None:
    """Pristine copies of older versions trusted every local user: removed, so nothing starts from them."""
    for old in cache_dir.glob("pristine-*"):
        if old.is_dir() and not old.name.startswith(f"pristine-v{CLUSTER_FORMAT}-"):
            shutil.rmtree(old, ignore_errors=True)


WARM_MAX_AGE = 7 * 24 * 3600  # a parked folder unused for a week is evicted: it only takes disk space


def owner_file(slot: Path) -> Path:
    return slot.with_name(f"{slot.name}.owner.json")


def _abandoned(slot: Path, now: float, unknown_since: float | None) -> bool:
    """Whether the project that parked `slot` is gone, or left it unused for WARM_MAX_AGE. An owner file that
    cannot be read counts from `unknown_since` (None: never abandoned)."""
    try:
        owner = json.loads(owner_file(slot).read_text())
        root, parked_at = owner.get("project_root"), float(owner["parked_at"])
    except (OSError, ValueError, KeyError, TypeError):
        if unknown_since is None:
            return False
        root, parked_at = None, unknown_since
    return (root is not None and not Path(root).is_dir()) or now - parked_at > WARM_MAX_AGE


def evict_parked(base: Path, now: float | None = None) -> list[Path]:
    """Parked folders of projects that are gone (deleted checkouts, temporary test projects), unused for a week,
    or made by an older version (trust authentication). One that a session takes at this moment is renamed
    away first, so it is never removed under it."""
    now = time.time() if now is None else now
    evicted: list[Path] = []
    for slot in base.glob("warm-*"):
        if not slot.is_dir():
            continue
        if _abandoned(slot, now, slot.stat().st_mtime) or not is_current_format(slot):
            trash = base / f".trash-evict-{os.getpid()}-{slot.name}"
            try:
                os.rename(slot, trash)  # atomic: a session claiming it at the same time wins or loses cleanly
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
            owner_file(slot).unlink(missing_ok=True)
            evicted.append(slot)
    for stray in base.glob("warm-*.owner.json"):
        # The owner file of a folder that is not parked now: taken by a session (which writes it again when it
        # parks), or gone (a session that did not park it, killed). Only litter once its project is gone.
        slot = stray.with_name(stray.name.removesuffix(".owner.json"))
        if not slot.exists() and _abandoned(slot, now, None):
            stray.unlink(missing_ok=True)
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


SUPERUSER = "postgres"
IDENT_MAP = "dbsnap"
# No trust line anywhere: the socket takes the invoking OS user only (and its folder is 0700), TCP the secret.
PG_HBA = f"""\
# pytest-dbsnap (format {CLUSTER_FORMAT}): nobody gets in without the cluster's secret.
local   all   all                  peer map={IDENT_MAP}
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""


def write_auth_files(account: RunAs | None, data_dir: Path) -> None:
    """pg_hba.conf without trust, and the ident map that lets the invoking OS user in on the socket."""
    (data_dir / "pg_hba.conf").write_text(PG_HBA)
    # The server's own account may use the socket too: it owns the data files anyway.
    users = dict.fromkeys([invoking_user(), *([account.user] if account else [])])
    with (data_dir / "pg_ident.conf").open("w") as ident:
        ident.write("# pytest-dbsnap: the OS users that may connect on the socket as the superuser.\n")
        ident.writelines(f"{IDENT_MAP}   {user}   {SUPERUSER}\n" for user in users)
    if account:
        for name in ("pg_hba.conf", "pg_ident.conf"):
            os.chown(data_dir / name, account.uid, account.gid)

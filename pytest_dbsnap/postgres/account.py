"""Who the local server runs as and where its clusters live: as root, the unprivileged `dbsnap` account (never
`postgres`, which owns the machine's own PostgreSQL), in a per-user runtime folder it can enter."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from pytest_dbsnap.core.proc import RunAs, run
from pytest_dbsnap.errors import ServerError, ToolError

DEDICATED_ACCOUNT = "dbsnap"


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


def can_traverse(folder: Path, account: RunAs) -> Path | None:
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
        blocking = can_traverse(parent, account) if account is not None else None
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


def free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
    except OSError:
        return "free space unknown"


def invoking_user() -> str:
    """The OS user the socket's peer authentication maps to the superuser: whoever runs pytest-dbsnap."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError as exc:
        raise ServerError(
            f"This process runs as uid {os.geteuid()}, which has no entry in the user database, so the local "
            f"PostgreSQL cannot tell it apart on its socket. Run as a user with a name (an /etc/passwd entry)."
        ) from exc

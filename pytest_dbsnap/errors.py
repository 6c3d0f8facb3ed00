"""Errors a user can cause, each with a message that names the thing and the fix.

DbsnapError
 +-- ConfigError          a setting has a wrong value or an unknown key
 |    +-- UnmanagedDatabase  the target database holds data pytest-dbsnap did not make; nothing was replaced
 +-- ToolError            an external program is missing or failed (initdb, pg_dump, the app's seed...)
 +-- ServerError          a PostgreSQL server could not be started, reached or is not allowed
 +-- DumpError            a dump is missing, corrupt, stale or unreadable
 |    +-- DumpNotFound
 |    +-- DumpCorrupt
 |    +-- DumpTooNew       written by a newer pg_dump than the pg_restore that would read it; nothing was touched
 +-- SnapshotUnusable     a cluster snapshot does not fit this machine or is damaged (the dump is used instead)
 +-- RestoreError         a restore failed; the target database was left as it was
 +-- StorageError         the disk refused a write (full, read-only, no permission, over quota)
 +-- ServiceError         a backend/frontend process did not become healthy
 +-- BrowserUnavailable   no Chromium or no Playwright for the frontend's browser checks
 +-- RenderError          the frontend page did not load or did not show its data in the browser
 +-- RemoteError          the shared dump store (S3) could not be used
      +-- RemoteCredentialsError   no usable AWS credentials were found
      +-- RemoteAccessDenied       the store refused the credentials or the action
      +-- RemoteBucketMissing      the bucket does not exist
      +-- RemoteUnreachable        the endpoint could not be reached

The plugin turns these into a usage error or a failed phase with the message only; the CLI prints the message
and exits non-zero. Anything else is a bug and keeps its traceback.
"""

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path


class DbsnapError(Exception):
    """Base of every error a user can cause and fix."""


class ConfigError(DbsnapError):
    """A configuration value is malformed or a key is unknown."""


class UnmanagedDatabase(ConfigError):
    """A restore would replace a database that pytest-dbsnap did not make and that is not empty."""

    def __init__(self, message: str, *, database: str) -> None:
        super().__init__(message)
        self.database = database


class ToolError(DbsnapError):
    """An external program is missing or exited non-zero."""

    def __init__(
        self, message: str, *, command: list[str] | None = None, returncode: int | None = None, stderr_tail: str = ""
    ) -> None:
        super().__init__(message)
        self.command = command or []
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class ServerError(DbsnapError):
    """A PostgreSQL server could not be started, reached, or is not allowed."""


class DumpError(DbsnapError):
    """A dump cannot be used as it is."""


class DumpNotFound(DumpError):
    """No dump matches the environment or name asked for."""


class DumpCorrupt(DumpError):
    """A dump's bytes or metadata do not match what was recorded."""


class DumpTooNew(DumpError):
    """A dump written by a newer pg_dump than the pg_restore that would read it (which cannot)."""

    def __init__(self, message: str, *, dump_major: int, restore_major: int) -> None:
        super().__init__(message)
        self.dump_major = dump_major
        self.restore_major = restore_major


class SnapshotUnusable(DbsnapError):
    """A cluster snapshot cannot be used here (another machine's key, a damaged or missing file): the session
    falls back to the dump, so this is reported as a warning, never a failure."""


class RestoreError(DbsnapError):
    """A restore failed; the target database is unchanged."""


class StorageError(DbsnapError):
    """The disk refused a write: full, read-only, not permitted or over quota. Nothing partial was left."""


_STORAGE_REASONS = {
    errno.ENOSPC: "is full",
    errno.EDQUOT: "is over its disk quota",
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "may not be written by this user (permission denied)",
    errno.EPERM: "may not be written by this user (operation not permitted)",
}
# What to change to write elsewhere, so that the message names a fix and not only a cause.
STORAGE_FIX = (
    "Free space there, or move what is written: the dump store with dumps_dir (--dumps-dir, DBSNAP_DUMPS_DIR), "
    "the pristine-cluster cache with cache_dir (DBSNAP_CACHE_DIR), the local cluster with TMPDIR, the logs with "
    "logs_dir."
)


def _existing_folder(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.is_dir():
            return candidate
    return Path("/")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name the file in an OSError raised while writing it (a write() on an open file names none)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def storage_error(exc: OSError, *, needed_bytes: int | None = None) -> StorageError | None:
    """One paragraph for a write the disk refused, or None for any other OSError (which stays a bug)."""
    reason = _STORAGE_REASONS.get(exc.errno or 0)
    if reason is None:
        return None
    path = Path(exc.filename) if isinstance(exc.filename, str) else None
    folder = _existing_folder(path.parent if path is not None else Path.cwd())
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    needed = f", {needed_bytes / 1e6:.1f} MB needed" if needed_bytes else ""
    what = f"Writing {path}" if path is not None else "A write"
    fix = STORAGE_FIX
    if exc.errno == errno.EROFS:
        fix = (
            "Reading dumps from a read-only store works (sessions, dbsnap restore, list, show, verify); to "
            "generate, import or pull, point dumps_dir at a writable folder."
        )
    return StorageError(
        f"{what} failed: the folder {folder} {reason} ({free}{needed}). Nothing half-written was left and the "
        f"dump store's latest dump is unchanged. {fix}"
    )


class ServiceError(DbsnapError):
    """An app service did not start or did not become healthy."""


class RemoteError(DbsnapError):
    """The shared dump store on object storage could not be used; the local store is unchanged."""


class RemoteCredentialsError(RemoteError):
    """No usable AWS credentials were found by boto3's default chain."""


class RemoteAccessDenied(RemoteError):
    """The object store rejected the credentials or refused the action."""


class RemoteBucketMissing(RemoteError):
    """The bucket named by the remote setting does not exist."""


class RemoteUnreachable(RemoteError):
    """The object store's endpoint could not be reached (network, DNS, proxy, wrong endpoint URL)."""


class BrowserUnavailable(DbsnapError):
    """No Chromium was found or it would not start, or Playwright is not installed."""


class RenderError(DbsnapError):
    """The frontend page did not load, or did not show its data in time; carries what the page logged."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        console_errors: tuple[str, ...] = (),
        screenshot: bytes | None = None,
        first_screen: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.console_errors = console_errors
        self.screenshot = screenshot  # the full page, PNG
        self.first_screen = first_screen  # the viewport, PNG

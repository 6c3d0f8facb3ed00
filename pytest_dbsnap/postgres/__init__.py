"""Ways to get a running PostgreSQL server; `start_server` picks one from the settings."""

from pytest_dbsnap.postgres.base import PgTools, Server, find_pg_tools
from pytest_dbsnap.postgres.select import choose_provider, start_server, watch_server

__all__ = ["PgTools", "Server", "choose_provider", "find_pg_tools", "start_server", "watch_server"]

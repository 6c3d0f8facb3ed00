"""Servers only: a running PostgreSQL (local cluster, compose service, external DSN) and the programs that
drive it. Which one a session gets is decided above, in `pytest_dbsnap.stack.servers`."""

from pytest_dbsnap.postgres.base import PgTools, Server, find_pg_tools

__all__ = ["PgTools", "Server", "find_pg_tools"]

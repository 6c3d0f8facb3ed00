"""The postgres service of docker-compose.dev.yml, run through pytest-docker's compose executor.

pytest-docker's `get_docker_services` does `docker compose up` and `down -v`; we add the service selection,
the published port lookup and a pg_isready-style wait, so users with a Docker engine get the same server
their `docker compose up postgres` gives them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pytest_dbsnap.errors import ConfigError, ServerError
from pytest_dbsnap.postgres.base import PgTools, Server, find_pg_tools, wait_until_accepting

CONTAINER_PORT = 5432


def docker_engine_answers(timeout: float = 5.0) -> bool:
    """True only when a Docker engine runs: the client alone (as on many CI images) is not enough."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def compose_project_name() -> str:
    return f"dbsnap{os.getpid()}"


def compose_commands(service: str) -> tuple[list[str], list[str]]:
    """The compose sub-commands run at start and at stop (pytest-docker prefixes `docker compose -f F -p P`)."""
    return [f"up -d --wait {service}"], ["down -v"]


class ComposeServer(Server):
    provider = "docker"

    def __init__(self, params: dict[str, str], tools: PgTools, stack: contextlib.ExitStack) -> None:
        super().__init__(params, tools)
        self._stack = stack

    def stop(self) -> None:
        self._stack.close()

    def describe(self) -> str:
        return f"docker compose PostgreSQL at {self.params['host']}:{self.params['port']}"


def start_compose(
    compose_file: Path, service: str, *, user: str, password: str, timeout: float, pg_bindir: Path | None = None
) -> ComposeServer:
    if not compose_file.is_file():
        raise ConfigError(
            f"The docker provider needs the compose file {compose_file}, which does not exist. "
            f"Create it or set compose_file in [tool.dbsnap]."
        )
    if not docker_engine_answers():
        raise ServerError(
            "The docker provider needs a running Docker engine, and `docker info` got no answer. "
            "Start Docker, or use --db-provider=local (a throwaway cluster from Postgres binaries)."
        )
    from pytest_docker.plugin import get_docker_ip, get_docker_services

    tools = find_pg_tools(pg_bindir, need_server=False)
    setup, cleanup = compose_commands(service)
    stack = contextlib.ExitStack()
    try:
        services: Any = stack.enter_context(
            get_docker_services("docker compose", str(compose_file), compose_project_name(), setup, cleanup)
        )
        port = services.port_for(service, CONTAINER_PORT)
        params = {"host": str(get_docker_ip()), "port": str(port), "user": user, "password": password}
        server = ComposeServer(params, tools, stack)
        wait_until_accepting(server, timeout)
    except Exception as exc:
        stack.close()
        if isinstance(exc, ServerError):
            raise
        raise ServerError(f"docker compose could not start the {service!r} service of {compose_file}: {exc}") from exc
    return server

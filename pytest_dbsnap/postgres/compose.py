"""The postgres service of docker-compose.dev.yml, started with the machine's compose command.

`up -d --wait --wait-timeout` bounds the start by start_timeout; a failed start is described in one paragraph
(the containers' states, the service's last log lines, its health check) and its project taken down. Without
systemd podman never runs health checks on its own, so while we wait we run them (`podman healthcheck run`).
Each session's project is named after its pid (`dbsnap<pid>`), so a reaper can take down a dead session's
project by name with `take_down_project`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pytest_dbsnap.core import reaper
from pytest_dbsnap.core.proc import tail
from pytest_dbsnap.core.redact import add_secret, redact
from pytest_dbsnap.errors import ConfigError, ServerError
from pytest_dbsnap.postgres.base import (
    PgTools,
    Server,
    client_tools_for,
    find_pg_tools,
    free_port,
    wait_until_accepting,
)
from pytest_dbsnap.postgres.binaries import BinariesChoice

CONTAINER_PORT = 5432
# Tried in this order when compose_command is not set: Compose v2 as a docker CLI plugin, the standalone
# binary, podman's wrapper (podman 4.7+), and podman-compose.
COMPOSE_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("docker", "compose"),
    ("docker-compose",),
    ("podman", "compose"),
    ("podman-compose",),
)
# Beyond start_timeout, what compose may need to create the network, volumes and containers.
START_MARGIN = 30.0
STOP_TIMEOUT = 120.0
LOG_LINES = 12


def _quiet(
    command: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str] | None:
    """Run a probe; None when it could not run or took too long."""
    try:
        return subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def compose_answers(command: Sequence[str], timeout: float = 10.0) -> bool:
    """True when `<command> version` runs: the compose program exists (the engine is asked separately)."""
    if shutil.which(command[0]) is None:
        return False
    result = _quiet([*command, "version"], timeout)
    return result is not None and result.returncode == 0


def find_compose_command(configured: Sequence[str] | None = None) -> tuple[str, ...]:
    """The compose command to use: the compose_command setting when given (it must answer), else the first
    of COMPOSE_CANDIDATES that answers."""
    if configured:
        if not compose_answers(configured):
            raise ConfigError(
                f"The compose_command setting is {shlex.join(configured)!r}, and `{shlex.join(configured)} "
                f"version` does not run. Install it, or set compose_command to one that works here "
                f"(docker compose, docker-compose, podman compose or podman-compose)."
            )
        return tuple(configured)
    for candidate in COMPOSE_CANDIDATES:
        if compose_answers(candidate):
            return candidate
    raise ServerError(
        "The docker provider needs a compose command, and none answers `version` here (tried "
        + ", ".join(shlex.join(c) for c in COMPOSE_CANDIDATES)
        + "). Install Docker Compose v2 (with podman: set DOCKER_HOST to podman's socket and use `docker "
        "compose`, or install podman-compose), set compose_command, or use --db-provider=local."
    )


def _uses_podman(command: Sequence[str]) -> bool:
    return "podman" in Path(command[0]).name


def docker_engine_answers(timeout: float = 5.0, compose_command: Sequence[str] | None = None) -> bool:
    """True only when a container engine runs: a client alone (as on many CI images) is not enough.

    `docker` (and Compose v2) reach the engine at DOCKER_HOST, or the default socket; podman-compose and
    `podman compose` use podman itself.
    """
    if compose_command and _uses_podman(compose_command):
        probe = ["podman", "info", "--format", "{{.Version.Version}}"]
    elif shutil.which("docker"):
        probe = ["docker", "info", "--format", "{{.ServerVersion}}"]
    elif compose_command:
        probe = [*compose_command, "ls", "--quiet"]  # lists projects: needs the engine
    else:
        return False
    if shutil.which(probe[0]) is None:
        return False
    result = _quiet(probe, timeout)
    return result is not None and result.returncode == 0 and (bool(result.stdout.strip()) or probe[1] == "ls")


def compose_ready(configured: Sequence[str] | None = None) -> bool:
    """What --db-provider=auto asks: a container engine answers, and so does a compose command for it."""
    if not docker_engine_answers(compose_command=configured):
        return False
    try:
        command = find_compose_command(configured)
    except (ConfigError, ServerError):
        return False
    return command == tuple(configured or ()) or docker_engine_answers(compose_command=command)


def compose_project_name(pid: int | None = None) -> str:
    """The compose project of the session with this pid (default: ours)."""
    return f"dbsnap{os.getpid() if pid is None else pid}"


def compose_commands(service: str, start_timeout: float) -> tuple[list[str], list[str]]:
    """The compose sub-commands run at start and at stop (after `<compose> -f FILE -p PROJECT`)."""
    wait = str(max(1, math.ceil(start_timeout)))
    return ["up", "-d", "--wait", "--wait-timeout", wait, service], ["down", "-v", "--remove-orphans"]


def take_down_project(
    project: str,
    *,
    compose_command: Sequence[str] | None = None,
    compose_file: Path | None = None,
    timeout: float = STOP_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> bool:
    """`down -v` a compose project by name: its containers, network and volumes. For the session's stop and
    for a reaper whose session died (`take_down_project(compose_project_name(dead_pid), ...)`). Compose v2
    needs only the name; podman-compose also needs the file. True when compose reported success; never raises,
    as it runs in clean-ups."""
    try:
        command = find_compose_command(compose_command)
    except (ConfigError, ServerError):
        return False
    file_args = ["-f", str(compose_file)] if compose_file is not None else []
    _, down = compose_commands("", 1)
    result = _quiet([*command, *file_args, "-p", project, *down], timeout, env)
    return result is not None and result.returncode == 0


class _HealthTicker:
    """Runs the project's health checks every second while compose waits: podman without systemd has no
    timer of its own, and `up --wait` would wait for a health status that never changes."""

    def __init__(self, project: str, deadline: float) -> None:
        self._project = project
        self._deadline = deadline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name=f"health-{project}", daemon=True)

    def __enter__(self) -> _HealthTicker:
        if shutil.which("podman"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def _tick(self) -> None:
        label = f"label=com.docker.compose.project={self._project}"
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            listed = _quiet(["podman", "ps", "-q", "--filter", label], 10)
            for container in listed.stdout.split() if listed else []:
                _quiet(["podman", "healthcheck", "run", container], 10)
            self._stop.wait(1.0)


class ComposeServer(Server):
    provider = "docker"

    def __init__(
        self,
        params: dict[str, str],
        tools: PgTools,
        *,
        compose_command: tuple[str, ...],
        compose_file: Path,
        project: str,
        env: Mapping[str, str],
    ) -> None:
        super().__init__(params, tools)
        self.compose_command = compose_command
        self.compose_file = compose_file
        self.project = project
        self._env = dict(env)

    forget_reaper: Callable[[], None] | None = None

    @property
    def is_throwaway(self) -> bool:
        """This session brought the project up and takes it down with its volume (`down -v`): everything in it,
        the database init-db.sh restored included, is the tool's own."""
        return True

    def stop(self) -> None:
        take_down_project(
            self.project, compose_command=self.compose_command, compose_file=self.compose_file, env=self._env
        )
        if self.forget_reaper is not None:
            self.forget_reaper()
            self.forget_reaper = None

    def describe(self) -> str:
        return f"docker compose PostgreSQL at {self.params['host']}:{self.params['port']} (project {self.project})"


def _inspect_health(command: Sequence[str], container: str, env: Mapping[str, str]) -> str:
    client = "podman" if _uses_podman(command) or not shutil.which("docker") else "docker"
    result = _quiet([client, "inspect", "--format", "{{json .State}}", container], 15, env)
    if result is None or result.returncode != 0:
        return "its state could not be inspected"
    try:
        state = json.loads(result.stdout)
    except ValueError:
        return "its state could not be read"
    words = f"state {state.get('Status', '?')} (exit code {state.get('ExitCode', '?')})"
    health = state.get("Health") or state.get("Healthcheck") or {}
    if not health or not health.get("Status"):
        return f"{words}, no health check"
    runs = health.get("Log") or []
    words += f", health {health['Status']} after {health.get('FailingStreak', 0)} failing checks in a row"
    if not runs:
        return f"{words}; no check has run"
    last = runs[-1]
    output = " ".join(str(last.get("Output", "")).split())[:300] or "(nothing)"
    return f"{words}; the last check (exit code {last.get('ExitCode', '?')}) said: {output}"


def _await_healthy(
    command: Sequence[str], base: Sequence[str], service: str, env: Mapping[str, str], deadline: float
) -> str | None:
    """Compose may report a service ready while its health check still says `starting` (seen with podman's
    API); the service's own health status decides, within the same bound. None when healthy or unchecked."""
    client = "podman" if _uses_podman(command) or not shutil.which("docker") else "docker"
    listed = _quiet([*base, "ps", "-q", service], 30, env)
    containers = listed.stdout.split() if listed is not None and listed.returncode == 0 else []
    while containers:
        state = _quiet([client, "inspect", "--format", "{{json .State.Health}}", containers[0]], 15, env)
        try:
            health = json.loads(state.stdout) if state is not None and state.returncode == 0 else None
        except ValueError:
            health = None
        status = str(health.get("Status") or "") if isinstance(health, dict) else ""
        if status in {"", "healthy"}:
            return None
        if time.monotonic() >= deadline:
            return f"compose reported {service} started, but its health check still says {status}"
        time.sleep(0.5)  # polling interval of the health status, not a readiness stand-in
    return None


INIT_REFUSAL = "init-db: refusing to restore: "


def init_refusal(log_text: str) -> str | None:
    """seeds/scripts/init-db.sh's own refusal among the project's log lines (a corrupt dump, one of a newer
    pg_dump than the image's pg_restore...): the cause, so the error leads with it instead of a health state."""
    for line in reversed(log_text.splitlines()):
        _container, found, refusal = line.partition(INIT_REFUSAL)
        if found and refusal.strip():
            return refusal.strip()
    return None


def describe_failure(
    command: Sequence[str], compose_file: Path, project: str, service: str, env: Mapping[str, str]
) -> tuple[str, str]:
    """Why a start failed: every container's state and health check (one paragraph), and the last log lines."""
    base = [*command, "-f", str(compose_file), "-p", project]
    containers: list[dict[str, object]] = []
    listed = _quiet([*base, "ps", "-a", "--format", "json"], 15, env)
    if listed is not None and listed.returncode == 0:
        text = listed.stdout.strip()
        with contextlib.suppress(ValueError):
            loaded = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()]
            containers = [item for item in loaded if isinstance(item, dict)]
    containers.sort(key=lambda item: item.get("Service") != service)  # the service first
    states = [
        f"Container {item.get('Name', '?')} (service {item.get('Service', '?')}): "
        f"{_inspect_health(command, str(item.get('Name', '?')), env)}."
        for item in containers
    ]
    logs = _quiet([*base, "logs", "--no-color", "--tail", str(LOG_LINES)], 15, env)
    log_text = tail((logs.stdout or logs.stderr) if logs else "", LOG_LINES * 2)
    return redact(" ".join(states) or "Compose lists no container for the project."), redact(log_text)


def start_compose(
    compose_file: Path,
    service: str,
    *,
    user: str,
    password: str,
    timeout: float,
    binaries: BinariesChoice | Path | None = None,
    compose_command: Sequence[str] | None = None,
    project: str | None = None,
) -> ComposeServer:
    """`up --wait` the service on a free loopback port, bounded by `timeout`; the caller stops it (`down -v`)."""
    if not compose_file.is_file():
        raise ConfigError(
            f"The docker provider needs the compose file {compose_file}, which does not exist. "
            f"Create it or set compose_file in [tool.dbsnap]."
        )
    add_secret(password)  # before anything that may quote compose's output
    command = find_compose_command(compose_command)
    if not docker_engine_answers(compose_command=command):
        raise ServerError(
            f"The docker provider needs a running container engine, and none answers ({shlex.join(command)}). "
            "Start Docker (or podman's API service, with DOCKER_HOST=unix:///run/podman/podman.sock; "
            "scripts/container-engine.sh sets it up), or use --db-provider=local (a throwaway cluster from "
            "Postgres binaries)."
        )
    tools = find_pg_tools(binaries, need_server=False)  # before `up`: no programs, no point starting anything
    project = project or compose_project_name()
    # The compose file's own variables, so the server is made with what we connect with, on a free port.
    env = {
        **os.environ,
        "POSTGRES_PORT": str(free_port()),
        "POSTGRES_USER": user,
        "POSTGRES_PASSWORD": password,
    }
    base = [*command, "-f", str(compose_file), "-p", project]
    up, down = compose_commands(service, timeout)
    # From before `up` until the server's stop, a killed session's project is taken down by its reaper.
    down_argv = [*base, *down]
    down_env = {"DOCKER_HOST": env["DOCKER_HOST"]} if env.get("DOCKER_HOST") else {}
    forget = reaper.watch(
        lambda watchdog: watchdog.register(reaper.run_command(down_argv, env=down_env, timeout=STOP_TIMEOUT))
    )
    try:
        server = _up(command, base, up, service, project, compose_file, env, timeout, tools, user, password)
        try:
            # Dumps written here are read by the image's own pg_restore (init-db.sh): client programs of the
            # server's major version, when this machine has them and nothing was chosen explicitly.
            server.tools = client_tools_for(binaries, server.version_num // 10000, tools)
        except BaseException:
            server.stop()
            raise
    except BaseException:
        forget()
        raise
    server.forget_reaper = forget
    return server


def _up(
    command: Sequence[str],
    base: list[str],
    up: list[str],
    service: str,
    project: str,
    compose_file: Path,
    env: dict[str, str],
    timeout: float,
    tools: PgTools,
    user: str,
    password: str,
) -> ComposeServer:
    deadline = time.monotonic() + timeout + START_MARGIN
    failure: str | None = None
    with _HealthTicker(project, deadline):
        process = subprocess.Popen(
            [*base, *up],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=timeout + START_MARGIN)
            if process.returncode != 0:
                last = [line.strip() for line in output.splitlines() if line.strip()][-1:] or ["no output"]
                failure = f"`{shlex.join(up)}` failed (exit code {process.returncode}): {last[0]}"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            failure = f"`{shlex.join(up)}` did not return within {timeout + START_MARGIN:.0f} s"
        if failure is None:
            failure = _await_healthy(command, base, service, env, time.monotonic() + timeout)
    if failure is None:
        ports = _quiet([*base, "port", service, str(CONTAINER_PORT)], 30, env)
        published = (
            ports.stdout.strip().splitlines()[-1] if ports and ports.returncode == 0 and ports.stdout.strip() else ""
        )
        host, _, port = published.rpartition(":")
        if not port.isdigit():
            failure = f"compose published no port for {service}:{CONTAINER_PORT} (got {published!r})"
    if failure is not None:
        states, logs = describe_failure(command, compose_file, project, service, env)
        take_down_project(project, compose_command=command, compose_file=compose_file, env=env)
        refusal = init_refusal(logs)
        cause = f"Its init script refused to restore the dump: {refusal} " if refusal else ""
        raise ServerError(
            redact(
                f"docker compose could not start the {service!r} service of {compose_file} (start_timeout "
                f"{timeout:.0f} s): {failure.rstrip('.')}. {cause}{states} The project {project} was taken down "
                f"(down -v). Fix the cause the log lines below show, or raise start_timeout if the service only "
                f"needs longer.\nLast log lines of the project:\n{logs or '(none)'}"
            )
        )
    host = host.strip("[]")
    # A port published on every address is reached on loopback (the compose file publishes on 127.0.0.1).
    params = {
        "host": "127.0.0.1" if host in {"", "0.0.0.0", "::"} else host,  # noqa: S104 - compared, not bound
        "port": port,
        "user": user,
        "password": password,
    }
    server = ComposeServer(
        params, tools, compose_command=tuple(command), compose_file=compose_file, project=project, env=env
    )
    try:
        wait_until_accepting(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server

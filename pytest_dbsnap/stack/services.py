"""One app service (backend, frontend) run as a real process group with a log file, a health wait and a
graceful stop. mirakuru starts the process and polls its health URL; this module adds the log file, the
project's errors and a stop that reaches every process of the group."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlunsplit

import httpx
from mirakuru import HTTPExecutor
from mirakuru.base import ENV_UUID
from mirakuru.exceptions import AlreadyRunning, ProcessExitedWithError, TimeoutExpired

from pytest_dbsnap.config.django_env import django_settings_env
from pytest_dbsnap.config.placeholders import command_argv, fill, fill_env
from pytest_dbsnap.config.settings import ServiceSettings
from pytest_dbsnap.core import reaper
from pytest_dbsnap.core.proc import RedactingLog, resolve_python, run_app_command, tail
from pytest_dbsnap.core.reaper import child_setup, group_members
from pytest_dbsnap.core.redact import redact
from pytest_dbsnap.errors import ServiceError, ToolError

log = logging.getLogger(__name__)

ERROR_TAIL_LINES = 20
STOP_GRACE = 5.0
_KILL_WAIT = 5.0  # after SIGKILL only an uninterruptible sleep in the kernel can delay the end
_POLL = 0.05
_DIGITS = re.compile(r"\d+")
_TAIL_BYTES = 256 * 1024  # enough for any tail we show, without reading a log of hours into memory


class _ServiceExecutor(HTTPExecutor):
    """mirakuru's HTTPExecutor with the changes a service needs.

    mirakuru accepts an exit code of 0 during start (a parent that daemonises), so a service that printed
    its help and exited would be waited for until the timeout; a service must keep running, so any exit
    fails at once. mirakuru forgets the process once it exits or is killed, while children in its
    process group may outlive it, so the group id is kept for the stop. And the group is registered with the
    session's reaper from the moment it exists, so a killed session does not leave the service running.
    """

    pgid: int | None = None
    last_answer: str | None = None  # what the health URL answered last (a status), or why it did not

    def after_start_check(self) -> bool:
        """mirakuru's health request (same method, target and status match), remembering what came back, so a
        timeout can say it: a 301 to a login page reads differently from a refused connection."""
        remaining = getattr(self, "_remaining_timeout", 5.0)
        connection = HTTPConnection(self.host, self.port, timeout=max(0.1, min(5.0, remaining)))
        try:
            connection.request(self.method, urlunsplit(("", "", self.url.path or "/", self.url.query, "")))
            response = connection.getresponse()
            status, location = str(response.status), response.getheader("Location")
        except (OSError, HTTPException) as exc:
            self.last_answer = f"no answer ({exc.__class__.__name__}: {exc})" if str(exc) else "no answer"
            return False
        finally:
            connection.close()
        self.last_answer = f"status {status}" + (f" (Location: {location})" if location else "")
        return status == self.status or bool(self.status_re.match(status))

    forget_group: Callable[[], None] | None = None

    @property
    def _popen_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = super()._popen_kwargs
        # mirakuru's os.setsid, plus a parent-death signal for the service's main process (Linux).
        kwargs["preexec_fn"] = child_setup(new_session=True)
        return kwargs

    def check_subprocess(self) -> bool:
        process: subprocess.Popen[Any] | None = self.process
        if process is not None:
            if self.pgid is None:
                # The new session makes the child the leader of its own group. mirakuru calls this first right
                # after starting the process, so the reaper knows the group before the health wait begins, and
                # mirakuru's environment marker finds the processes that leave the group.
                self.pgid = process.pid
                marker = f"{ENV_UUID}={self._uuid}"
                self.forget_group = reaper.watch(
                    lambda watchdog: watchdog.watch_group(process.pid, marker=marker, grace=reaper.SERVICE_GRACE)
                )
            if process.poll() == 0:
                raise ProcessExitedWithError(self, 0)
        return super().check_subprocess()


class Service:
    """One app service as a process group: `with Service(settings, env=..., logs_dir=...) as service:`.

    start() runs the prepare commands, picks the port, starts the command with PORT and `env` added to the
    environment and waits until the health URL answers the expected status; stop() ends the whole group.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        env: Mapping[str, str],
        logs_dir: Path,
        stop_grace: float = STOP_GRACE,
        placeholders: Mapping[str, str] | None = None,
        shared_env: Mapping[str, str] | None = None,
        django_root: Path | None = None,
    ) -> None:
        self.settings = settings
        self.django_root = django_root  # the project root when a Django project's settings are to be wrapped
        self.env = dict(env)
        # Placeholder values known before start (the database's, the backend's URL); {port} is added at start.
        self.placeholders = dict(placeholders or {})
        self.shared_env = dict(shared_env or {})  # [tool.dbsnap.env]; the service's own env wins over it
        self.logs_dir = logs_dir
        self.stop_grace = stop_grace
        self._port: int | None = None
        self._executor: _ServiceExecutor | None = None
        self._sink: RedactingLog | None = None

    # --- what callers use --------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def log_path(self) -> Path:
        return self.logs_dir / f"{self.name}.log"

    @property
    def prepare_log_path(self) -> Path:
        return self.logs_dir / f"{self.name}-prepare.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"the {self.name} service has no port before start()")
        return self._port

    @property
    def started(self) -> bool:
        """False for a service given only by `url`: it runs already, so this session neither starts nor stops it."""
        return self.settings.command is not None

    @property
    def values(self) -> dict[str, str]:
        """The placeholder values of this service: the given ones, its {port} and its own URL."""
        values = dict(self.placeholders)
        if self.started:
            values["port"] = str(self.port)
        own = f"{self.name}_url"
        if self.settings.url is None:
            values[own] = f"http://127.0.0.1:{self.port}"
        elif own not in values:
            values[own] = fill(self.settings.url, values, key=f"{self.name}.url").rstrip("/")
        return values

    @property
    def url(self) -> str:
        if self.settings.url is None:
            return f"http://127.0.0.1:{self.port}"
        return fill(self.settings.url, self.values, key=f"{self.name}.url")

    @property
    def health_url(self) -> str:
        return fill(self.settings.health_url, self.values, key=f"{self.name}.health_url")

    @property
    def pid(self) -> int | None:
        """The pid of the service's main process (also its process group id) while started, else None."""
        return self._executor.pgid if self._executor is not None else None

    def client(self) -> httpx.Client:
        """An HTTP client for the service; the caller closes it (`with service.client() as client:`)."""
        return httpx.Client(base_url=self.url, timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines this start of the service wrote, passwords redacted, for reports and error messages."""
        return redact(tail(self._read_log(), lines))

    def _read_log(self) -> str:
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(max(0, log_file.seek(0, os.SEEK_END) - _TAIL_BYTES))
                return log_file.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # --- start -------------------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._executor is not None:
            return self
        if not self.settings.cwd.is_dir():
            raise ServiceError(
                f"The {self.name} service cannot start: its working folder {self.settings.cwd} does not exist. "
                f"Create it or fix cwd in [tool.dbsnap.{self.name}]."
            )
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        # Each start writes fresh logs, so a failure never quotes an earlier run; the previous ones stay as .1.
        _keep_previous(self.prepare_log_path)
        _keep_previous(self.log_path)
        if self.settings.command is None:
            self._prepare()
            self._wait_for_url()
            return self
        self._port = self._choose_port()  # before prepare: a prepare step may use {port}
        self._prepare()
        command = resolve_python(command_argv(self.settings.command, self.values, key=f"{self.name}.command"))
        with self.log_path.open("wb") as log_file:
            stamp = datetime.now().isoformat(timespec="seconds")
            shown = redact(shlex.join(command))
            log_file.write(f"--- {stamp} starting {self.name} on port {self._port}: $ {shown}\n".encode())
        # The service's output reaches its log through a redacting pipe: it gets DATABASE_URL with a password.
        self._sink = RedactingLog(self.log_path)
        with self._sink:
            self._executor = self._executor_for(command, self._sink.fd)
            try:
                self._start_executor(self._executor, command)
            except BaseException:
                # Whatever went wrong (a failed start, Ctrl-C), nothing this start began may keep running.
                self.stop()
                raise
        return self

    def _executor_for(self, command: list[str], log_fd: int) -> _ServiceExecutor:
        try:
            return _ServiceExecutor(
                command,
                url=self.health_url,
                status=self.settings.expected_status,
                # GET, not mirakuru's HEAD: many small servers answer HEAD with 405 or 501.
                method="GET",
                timeout=self.settings.start_timeout,
                cwd=str(self.settings.cwd),
                envvars={**self._environment(), "PORT": str(self._port)},
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
            )
        except ValueError as exc:  # mirakuru's word for a URL without a host
            raise ServiceError(
                f"The {self.name} service's health_url {self.settings.health_url!r} is not an http URL with a "
                f'host; set it like health_url = "http://127.0.0.1:{{port}}/health" in '
                f"[tool.dbsnap.{self.name}]."
            ) from exc

    def _prepare(self) -> None:
        steps = self.settings.prepare
        full_env = {**os.environ, **self._environment()}
        for number, configured in enumerate(steps, start=1):
            step = command_argv(configured, self.values, key=f"{self.name}.prepare[{number}]")
            shown = redact(shlex.join(step))
            try:
                run_app_command(
                    step,
                    what=f"The {self.name} service's prepare step {number} of {len(steps)} ({shown})",
                    env=full_env,
                    cwd=self.settings.cwd,
                    log_path=self.prepare_log_path,
                )
            except ToolError as exc:
                if exc.returncode is None:  # the program was not found: the message says all there is
                    raise ServiceError(f"{exc} The {self.name} service was not started.") from exc
                raise ServiceError(
                    f"The {self.name} service's prepare step {number} of {len(steps)} ({shown}) failed with "
                    f"exit code {exc.returncode}, so the service was not started. Run the step by hand in "
                    f"{self.settings.cwd} to see why, or fix prepare in [tool.dbsnap.{self.name}].\n"
                    f"Last lines of {self.prepare_log_path}:\n{exc.stderr_tail or '(empty)'}"
                ) from exc

    def _environment(self) -> dict[str, str]:
        """What the service adds to its environment: [tool.dbsnap.env], then its own env, then what the caller
        gives (DATABASE_URL, BACKEND_URL), each later one winning."""
        values = self.values
        environment = {
            **fill_env(self.shared_env, values, key="env"),
            **fill_env(self.settings.env, values, key=f"{self.name}.env"),
            **self.env,
        }
        if self.django_root is not None:  # a Django project's settings, wrapped to use DATABASE_URL
            environment.update(django_settings_env(self.django_root, {**os.environ, **environment}))
        return environment

    def _wait_for_url(self) -> None:
        """A service given only by `url` is not started: poll its health URL until it answers the expected
        status, or fail with the last answer at the deadline."""
        url, expected = self.health_url, self.settings.expected_status
        deadline = time.monotonic() + self.settings.start_timeout
        last = "no answer yet"
        with httpx.Client(timeout=5, follow_redirects=False) as client:
            while True:
                try:
                    status = client.get(url).status_code
                    if status == expected:
                        return
                    last = f"it answered {status}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    raise ServiceError(
                        redact(
                            f"The {self.name} is given only by its url (no command, so nothing was started), and "
                            f"{url} did not answer {expected} within {self.settings.start_timeout:g} s: {last}. "
                            f"Check that it runs and that url (or health_url) in [tool.dbsnap.{self.name}] is right."
                        )
                    )
                time.sleep(_POLL)  # polling interval between health checks, not a readiness stand-in

    def _choose_port(self) -> int:
        port = self.settings.port
        if port is None:
            # The port is free now; should another program take it before the service binds it, the
            # service exits with an address-in-use error and the log tail says so.
            return _bind_localhost(0)
        try:
            _bind_localhost(port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ServiceError(
                f"The {self.name} service is set to port {port}, but port {port} on 127.0.0.1 is already in "
                f"use (perhaps by a service left from an earlier run). Free port {port} (`ss -ltnp` shows who "
                f'holds it) or set port = "auto" in [tool.dbsnap.{self.name}] to have a free port picked.'
            ) from exc
        return port

    def _start_executor(self, executor: _ServiceExecutor, command: list[str]) -> None:
        shown = redact(shlex.join(command))
        try:
            executor.start()
        except (FileNotFoundError, PermissionError) as exc:
            reason = "was not found" if isinstance(exc, FileNotFoundError) else "is not executable"
            raise ServiceError(
                f"The {self.name} service could not start: the program {command[0]!r} {reason} (working "
                f"folder {self.settings.cwd}). Install it, or fix command in [tool.dbsnap.{self.name}] "
                f"(a leading `python` means the interpreter running pytest)."
            ) from exc
        except ProcessExitedWithError as exc:
            how = _exit_description(exc.exit_code)
            raise self._error(
                f"The {self.name} service {how} while starting, before {self.health_url} answered "
                f"{self.settings.expected_status} (command: {shown}). Its output below says why; fix that, "
                f"or the command in [tool.dbsnap.{self.name}]."
            ) from exc
        except TimeoutExpired as exc:
            seen = executor.last_answer or "nothing, as no check got that far"
            raise self._error(
                f"The {self.name} service did not answer {self.settings.expected_status} at "
                f"{self.health_url} within {self.settings.start_timeout:g} s (command: {shown}); the last "
                f"answer was {seen}. It was stopped. Check that it listens on the PORT it is given and that "
                f"the health URL is right, or raise start_timeout in [tool.dbsnap.{self.name}] if it is just slow."
            ) from exc
        except AlreadyRunning as exc:
            raise self._error(
                f"Before the {self.name} service started, something else already answered at "
                f"{self.health_url}, so its health could not be told apart. Stop that program, or point "
                f"health_url in [tool.dbsnap.{self.name}] at the service's own {{port}}."
            ) from exc

    def _error(self, message: str) -> ServiceError:
        process = self._executor.process if self._executor is not None else None
        if self._sink is not None and process is not None and process.poll() is not None:
            self._sink.wait(timeout=2)  # the service exited: let its last lines reach the file
        # The health checks themselves fill an access log ten lines a second; collapsed, the lines the
        # service printed while starting stay in view.
        text = redact(self._read_log())
        lines = _collapse_repeats(text.strip().splitlines())[-ERROR_TAIL_LINES:]
        shown = "\n".join(lines) or "(empty)"
        return ServiceError(f"{message}\nLast lines of {self.log_path}:\n{shown}")

    # --- stop --------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL to whatever is left after the grace period.

        Safe to call any number of times, also after a failed start. mirakuru's own stop waits only for
        the main process (and with the start timeout), so a child that ignores SIGTERM would outlive it.
        """
        executor = self._executor
        if executor is None:
            return
        if executor.pgid is not None:
            _end_process_group(executor.pgid, executor.process, self.stop_grace)
        # mirakuru's sweep finds processes that left the group (setsid daemons) by the marker it put in
        # their environment, and closes its Popen.
        executor.kill()
        if executor.forget_group is not None:
            executor.forget_group()
        self._executor = None
        if self._sink is not None:
            self._sink.wait(timeout=1)  # its last lines (a shutdown message) reach the file


def _keep_previous(log_path: Path) -> None:
    """<name>.log becomes <name>.log.1 (replacing an older .1), so the next lines start a fresh file."""
    with contextlib.suppress(FileNotFoundError):
        log_path.replace(log_path.with_name(f"{log_path.name}.1"))


def _collapse_repeats(lines: list[str]) -> list[str]:
    """Runs of lines that differ only in digits (timestamps, ports, counters) become one line and a count."""
    result: list[str] = []
    run_key: str | None = None
    repeats = 0
    for line in [*lines, None]:
        key = None if line is None else _DIGITS.sub("0", line)
        if key is not None and key == run_key:
            repeats += 1
            continue
        if repeats:
            result[-1] += f"  [and {repeats} more like it]"
        if line is not None:
            result.append(line)
        run_key, repeats = key, 0
    return result


def _exit_description(exit_code: int) -> str:
    if exit_code >= 0:
        return f"exited with code {exit_code}"
    try:
        return f"was killed by {signal.Signals(-exit_code).name}"
    except ValueError:
        return f"was killed by signal {-exit_code}"


def _bind_localhost(port: int) -> int:
    """Bind a port on 127.0.0.1 and let it go at once: the port the system picked when 0, else the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so connections of a stopped service in TIME_WAIT do not count as in use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return int(sock.getsockname()[1])


def _wait_group_gone(pgid: int, leader: subprocess.Popen[Any] | None, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if leader is not None:
            leader.poll()  # reap our own child so it does not linger as a zombie
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _end_process_group(pgid: int, leader: subprocess.Popen[Any] | None, grace: float) -> None:
    if not group_members(pgid):
        return
    _signal_group(pgid, signal.SIGTERM)
    if _wait_group_gone(pgid, leader, grace):
        return
    log.info("process group %d outlived SIGTERM by %g s; sending SIGKILL", pgid, grace)
    _signal_group(pgid, signal.SIGKILL)
    if not _wait_group_gone(pgid, leader, _KILL_WAIT):
        log.warning("process group %d still has processes %s after SIGKILL", pgid, group_members(pgid))


@dataclass(frozen=True)
class RunningService:
    """What a test gets of a started service: its URL, an HTTP client bound to it, and its log."""

    name: str
    url: str
    client: httpx.Client
    log_path: Path
    service: Service

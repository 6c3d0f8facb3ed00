"""One way to run external programs: record the command, capture stderr, fail with its last lines."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pytest_dbsnap.core import progress, reaper
from pytest_dbsnap.core.reaper import child_setup
from pytest_dbsnap.core.redact import redact
from pytest_dbsnap.errors import ToolError

TAIL_LINES = 15


@dataclass(frozen=True)
class RunAs:
    """An unprivileged account to run a program as (Postgres refuses to run as root)."""

    user: str
    uid: int
    gid: int


def as_account(run_as: RunAs | None) -> dict[str, Any]:
    """Popen's options to run a program as `run_as` (none: as this process), without this process's
    supplementary groups (root's would otherwise come along)."""
    if run_as is None:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last lines of a program's output, which is where the reason usually is."""
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    command: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    run_as: RunAs | None = None,
    stdout: int | None = subprocess.PIPE,
    timeout: float | None = None,
    stderr_line: Callable[[str], bool] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; on failure raise ToolError quoting the tail of stderr.

    `what` is the human name of the step ("initdb", "the seed command") used in messages. `stderr_line`, when
    given, hears each line of stderr as it comes (`pg_restore --verbose` saying which entry it is at) and returns
    whether the line is worth keeping: a line that is only progress is left out of the result's stderr and of
    the failure message's tail, so that thousands of them cannot push the real error out.
    """
    argv = [os.fspath(part) for part in command]
    full_env = dict(os.environ if env is None else env)
    try:
        process = subprocess.Popen(
            argv,
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            **as_account(run_as),
            # A group of its own, so that it and its children (pg_restore's jobs) end together; and a parent-death
            # signal, so that a killed session does not leave it running.
            process_group=0,
            preexec_fn=child_setup(),
        )
    except FileNotFoundError as exc:
        raise ToolError(
            f"{what} could not start: the program {argv[0]!r} was not found. Install it or point the "
            f"setting that names it at the right place.",
            command=argv,
        ) from exc
    with process, reaper.watched_group(process.pid):
        try:
            if stderr_line is None:
                output, errors = process.communicate(timeout=timeout)
            else:
                output, errors = _follow(process, stderr_line, timeout)
        except BaseException as exc:
            # Timed out or interrupted (Ctrl-C reaches only the terminal's group): end the whole group we started.
            _kill_group(process)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise ToolError(
                    f"{what} did not finish within {timeout:.0f} s (command: {redact(shlex.join(argv))}).",
                    command=argv,
                ) from exc
            raise
    result = subprocess.CompletedProcess(argv, process.returncode, output, errors)
    if result.returncode != 0:
        stderr_tail = redact(tail(result.stderr or result.stdout or ""))
        raise ToolError(
            f"{what} failed with exit code {result.returncode} (command: {redact(shlex.join(argv))}).\n"
            f"Its last output lines:\n{stderr_tail}",
            command=argv,
            returncode=result.returncode,
            stderr_tail=stderr_tail,
        )
    return result


def _follow(
    process: subprocess.Popen[str], stderr_line: Callable[[str], bool], timeout: float | None
) -> tuple[str, str]:
    """communicate() with stderr heard line by line: (stdout, the stderr lines that `stderr_line` kept)."""
    kept: deque[str] = deque(maxlen=10 * TAIL_LINES)  # what a failure message can quote, and a bound on memory
    output: list[str] = []

    # Bytes, decoded leniently, and a listener's failure only costs the progress: a reader that stopped would
    # leave the pipe to fill up and the program to wait on it forever.
    def hear() -> None:
        assert isinstance(process.stderr, io.TextIOWrapper)
        for raw in process.stderr.buffer:
            line = raw.decode(errors="replace")
            try:
                keep = stderr_line(line)
            except Exception:
                keep = True
            if keep:
                kept.append(line)

    readers = [threading.Thread(target=hear, name="dbsnap-stderr", daemon=True)]
    if isinstance(process.stdout, io.TextIOWrapper):
        stdout = process.stdout.buffer
        readers.append(
            threading.Thread(target=lambda: output.append(stdout.read().decode(errors="replace")), daemon=True)
        )
    for reader in readers:
        reader.start()
    process.wait(timeout=timeout)
    for reader in readers:
        reader.join(timeout=5)  # a grandchild may hold a pipe open: what it says later is not waited for
    return "".join(output), "".join(kept)


class RedactingLog:
    """A pipe for a child's output that lands in its log file line by line with passwords redacted.

    The app gets DATABASE_URL with the local cluster's secret in it, and apps print their settings; the log
    file is what reports quote and what users attach to bug reports, so nothing reaches it unredacted.
    Use as: `with RedactingLog(path) as sink: Popen(..., stdout=sink.fd); sink.started()`.
    """

    def __init__(self, log_path: Path) -> None:
        read_fd, self.fd = os.pipe()
        self._reader = os.fdopen(read_fd, "rb")
        self._log = log_path.open("ab")
        self._progress = progress.listener()  # the live status line of the step that starts this program
        self._thread = threading.Thread(target=self._copy, name=f"dbsnap-log-{log_path.name}", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        with self._reader, self._log:
            for line in self._reader:  # ends when every process holding the pipe's write end has exited
                text = redact(line.decode("utf-8", "surrogateescape"))
                self._log.write(text.encode("utf-8", "surrogateescape"))
                self._log.flush()
                self._progress(text)  # the live status line shows the latest one

    def started(self) -> None:
        """The child holds its own copy of the write end now; ours must go, or the copy never sees the end."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def wait(self, timeout: float | None = None) -> None:
        """Until the output written so far is in the file (the child and its children have exited)."""
        self._thread.join(timeout)

    def __enter__(self) -> RedactingLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.started()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class SignalStop:
    """Turns the first stop signal into KeyboardInterrupt (pytest's own clean stop), a second into the default."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.running: str | None = None  # the node id of the test being run, for the one line
        self._previous: dict[signal.Signals, Any] = {}

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.received is not None:
            # Teardown itself hangs or the user insists: die now, as the signal's default would.
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        self.received = sig
        raise KeyboardInterrupt(f"stopped by {sig.name}")

    def describe(self) -> str | None:
        if self.received is None:
            return None
        where = f"while running {self.running}" if self.running else "outside any test (set-up or teardown)"
        return f"pytest-dbsnap: stopped by {self.received.name} {where}"


def _kill_group(process: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def chown_tree(path: Path, run_as: RunAs) -> None:
    """Give a whole folder to the unprivileged account that will run the server in it."""
    os.chown(path, run_as.uid, run_as.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), run_as.uid, run_as.gid)


def resolve_python(command: Sequence[str]) -> list[str]:
    """`python ...` in a configured command means the interpreter running us, and a program found only beside
    it (`mlflow`, `alembic`, `gunicorn`: the console scripts of its virtual environment) is taken from there, so
    `.venv/bin/pytest` in an un-activated virtual environment runs the app's commands as an activated one would.
    """
    if not command:
        return []
    if command[0] in {"python", "python3"}:
        return [sys.executable, *command[1:]]
    program = command[0]
    if os.sep not in program and shutil.which(program) is None:
        beside = Path(sys.executable).parent / program
        if beside.is_file() and os.access(beside, os.X_OK):
            return [str(beside), *command[1:]]
    return list(command)


def run_app_command(
    command: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    timeout: float | None = None,
) -> None:
    """Run one of the app's commands (migrate, seed) with its output in a log file; fail with the log's tail.

    The app's output can be long (a seed prints progress for minutes), so it goes to a file, not to memory.
    """
    command = resolve_python(command)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        began = log.tell()  # the log keeps earlier runs; a failure quotes only this one
        log.write(f"$ {redact(shlex.join(command))}\n".encode())
    with RedactingLog(log_path) as sink:
        try:
            process = subprocess.Popen(
                list(command),
                env=dict(env),
                cwd=cwd,
                stdout=sink.fd,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=child_setup(),
            )
        except FileNotFoundError as exc:
            raise ToolError(
                f"{what} could not start: the program {command[0]!r} was not found (working folder "
                f"{cwd}). Check the command in [tool.dbsnap].",
                command=list(command),
            ) from exc
        sink.started()
        with reaper.watched_group(process.pid):
            try:
                returncode = process.wait(timeout=timeout)
            except BaseException:
                # Interrupted or timed out: end the whole process group we started, nothing else.
                _kill_group(process)
                raise
        # A child that daemonised may hold the pipe on: its later lines still arrive, but we need not wait.
        sink.wait(timeout=5)
    if returncode != 0:
        with log_path.open("rb") as log_file:
            log_file.seek(began)
            output = redact(tail(log_file.read().decode(errors="replace")))
        raise ToolError(
            f"{what} failed with exit code {returncode} (command: {redact(shlex.join(command))}). "
            f"Last lines of {log_path}:\n{output}",
            command=list(command),
            returncode=returncode,
            stderr_tail=output,
        )

"""A watchdog per session and per long CLI command: when its parent dies by any means (kill -9, the OOM killer,
a cancelled CI job) it ends what the parent started and removes what the parent left. No pytest import.

The parent writes one JSON line per resource it starts to the watchdog's stdin, and a line to forget it when it is
given back. A resource is told in generic instructions, so this module knows no server or dump: a process group
to end, a process named by a pid file to signal, a command line to run (drop temporary databases, `compose down`),
a path to remove. The layers above build them (postgres/local.py: a cluster is its postmaster's pid file and its
folder). The pipe
reads end-of-file when the parent is gone, however it died; whatever is still registered then is cleaned up,
and on a normal teardown nothing is, so the watchdog just exits. Like testcontainers' Ryuk, but one small
process per session and no container.

Each process that starts resources has its own watchdog (the plugin in the main process and in every xdist
worker, the CLI in each long command), started lazily at the first registration. Only what was registered is
touched: a process group is ended only while its leader is the process that was registered (same start
time), so a reused pid is never signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

SERVICE_GRACE = 2.0  # a service gets SIGTERM and this long before SIGKILL; tools (pg_restore, seed) get SIGKILL
PIDFILE_GRACE = 5.0  # a server named by a pid file gets SIGQUIT (immediate shutdown) and this long before SIGKILL
_KILL_WAIT = 5.0
_POLL = 0.05
_PR_SET_PDEATHSIG = 1


# --- a parent-death signal for children (Linux), the second line of defence --------------------------------------


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Looked up once here: a preexec_fn runs between fork and exec, where as little as possible should happen.
_PRCTL = _load_prctl()


def child_setup(*, new_session: bool = False) -> Callable[[], None] | None:
    """A preexec_fn giving the child SIGKILL when the thread that started it ends (Linux), optionally in a new
    session (what mirakuru asks for). None where there is nothing to do.

    The kernel sends the signal when the starting *thread* exits, so the callers wait for their children in
    the thread that started them; an app service whose children daemonise is covered only by the watchdog.
    """
    if _PRCTL is None and not new_session:
        return None
    parent = os.getpid()
    prctl = _PRCTL

    def setup() -> None:
        if new_session:
            os.setsid()
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the signal was armed
                os._exit(1)

    return setup


# --- processes, told apart from a later process with the same pid --------------------------------------------


def process_start(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), None without /proc or once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def group_members(pgid: int) -> list[int]:
    """The live processes of a process group. A zombie has exited and only waits to be reaped, which a
    container's PID 1 may never do, so zombies do not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass  # a member runs as another user: it exists
    proc = Path("/proc")
    if not proc.is_dir():
        return [pgid]  # no /proc (macOS): kill() said the group exists, and zombies there are reaped
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] not in {"Z", "X"}:
            members.append(int(entry.name))
    return members


def alive(pid: int) -> bool:
    """The process runs (neither gone nor a zombie nobody has reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True
    return state not in {"Z", "X"}


def _marked_processes(marker: str) -> list[int]:
    """Processes carrying `marker` (NAME=value) in their environment: mirakuru marks a service's processes so
    that those which left its process group (setsid daemons) are found too."""
    needle = marker.encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


# --- instructions: what to do with a resource should its parent die --------------------------------------------

Instruction = dict[str, Any]


def end_group(pgid: int, *, marker: str | None = None, grace: float = 0.0) -> Instruction:
    """A process group this process started (its leader's pid); `grace` > 0 asks for SIGTERM first. `marker`
    (NAME=value in the environment) also finds processes that left the group."""
    return {"kind": "group", "pgid": pgid, "started": process_start(pgid), "marker": marker, "grace": grace}


def signal_pidfile(pidfile: Path, *, expect: str, grace: float = 5.0) -> Instruction:
    """The process whose pid is the first line of `pidfile`, if `expect` is one of its command-line arguments
    (so a reused pid is never signalled): SIGQUIT, then SIGKILL to its group after `grace` seconds."""
    return {"kind": "pidfile", "path": str(pidfile), "expect": expect, "grace": grace}


def run_command(
    argv: list[str], *, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 60.0
) -> Instruction:
    """A command line run once the processes are gone; `stdin` carries what must not show in `ps` (a password)."""
    return {"kind": "command", "argv": argv, "env": env or {}, "stdin": stdin, "timeout": timeout}


def remove(path: Path) -> Instruction:
    """A file or folder removed last."""
    return {"kind": "path", "path": str(path)}


# --- the client side: what the parent holds -------------------------------------------------------------------


class Reaper:
    """The parent's end: registers resources with its watchdog, which is started at the first registration.

    `close()` on a normal teardown; a parent that dies without it leaves the watchdog to clean up.
    """

    def __init__(self, log_path: Path | None = None) -> None:
        self.log_path = log_path
        self.owner = os.getpid()
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._registered: set[int] = set()
        self._broken = False

    @property
    def watchdog_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "pytest_dbsnap.core.reaper", str(self.owner), str(self.log_path or "")],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            # Its own session: a kill of the parent's process group (a CI runner, Ctrl-C) does not reach it.
            start_new_session=True,
        )

    def _send(self, message: dict[str, Any]) -> None:
        if self._broken or os.getpid() != self.owner:
            return
        try:
            if self._process is None:
                self._process = self._spawn()
            assert self._process.stdin is not None
            # One write per line, shorter than the pipe's atomic size, so a kill never leaves half a line.
            self._process.stdin.write(json.dumps(message).encode() + b"\n")
            self._process.stdin.flush()
        except OSError:
            # The watchdog could not start or was killed: the session goes on without its safety net.
            self._broken = True

    def register(self, *instructions: Instruction) -> int:
        """One resource, cleaned up by these instructions (any mix of them), forgotten by the returned token."""
        with self._lock:
            token = next(self._tokens)
            self._registered.add(token)
            self._send({"op": "add", "id": token, "do": list(instructions)})
        return token

    def forget(self, token: int) -> None:
        with self._lock:
            if token in self._registered:
                self._registered.discard(token)
                self._send({"op": "forget", "id": token})

    def watch_group(self, pgid: int, *, marker: str | None = None, grace: float = 0.0) -> int:
        return self.register(end_group(pgid, marker=marker, grace=grace))

    def watch_path(self, path: Path) -> int:
        return self.register(remove(path))

    def close(self, timeout: float = 10.0) -> None:
        """A normal teardown: forget what is left (nothing, when every resource was given back) and let the
        watchdog exit."""
        with self._lock:
            process, self._process = self._process, None
        if process is None or os.getpid() != self.owner:
            return
        assert process.stdin is not None
        with contextlib.suppress(OSError):
            process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)


_active: list[Reaper] = []


def current() -> Reaper | None:
    """The reaper of this process's session or command, if one is open."""
    for reaper in reversed(_active):
        if reaper.owner == os.getpid():
            return reaper
    return None


def install(reaper: Reaper) -> Reaper:
    _active.append(reaper)
    return reaper


def uninstall(reaper: Reaper) -> None:
    with contextlib.suppress(ValueError):
        _active.remove(reaper)
    reaper.close()


@contextlib.contextmanager
def session(log_path: Path | None = None) -> Iterator[Reaper]:
    """`with reaper.session(log):` for a CLI command: a watchdog for whatever the command starts."""
    reaper = install(Reaper(log_path))
    try:
        yield reaper
    finally:
        uninstall(reaper)


@contextlib.contextmanager
def watched(register: Callable[[Reaper], int]) -> Iterator[None]:
    reaper = current()
    token = register(reaper) if reaper is not None else None
    try:
        yield
    finally:
        if reaper is not None and token is not None:
            reaper.forget(token)


def watched_group(pgid: int, *, grace: float = 0.0) -> contextlib.AbstractContextManager[None]:
    """Register a started process group with the current reaper (if any) while the block runs."""
    return watched(lambda reaper: reaper.watch_group(pgid, grace=grace))


def watched_path(path: Path) -> contextlib.AbstractContextManager[None]:
    return watched(lambda reaper: reaper.watch_path(path))


def watch(register: Callable[[Reaper], int]) -> Callable[[], None]:
    """Register with the current reaper (if any) now; returns the call that forgets it again."""
    reaper = current()
    if reaper is None:
        return lambda: None
    token = register(reaper)
    return lambda: reaper.forget(token)


# --- the watchdog side ---------------------------------------------------------------------------------------


class _Log:
    """The watchdog's lines, in a file opened only when there is something to say."""

    def __init__(self, path: str, owner: int) -> None:
        self.path = path
        self.owner = owner
        self._file: IO[str] | None = None

    def __call__(self, message: str) -> None:
        if not self.path:
            return
        try:
            if self._file is None:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the watchdog's few lines
            stamp = datetime.now().isoformat(timespec="milliseconds")
            self._file.write(f"{stamp} dbsnap reaper of pid {self.owner}: {message}\n")
            self._file.flush()
        except OSError:
            self.path = ""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _still_ours(entry: Instruction) -> bool:
    """A group id stays taken while any member lives, so a group whose leader is gone is still the one we
    registered; only a live leader with another start time means the group ended and its pid was reused."""
    pgid, started = int(entry["pgid"]), entry.get("started")
    now = process_start(pgid)
    return started is None or now is None or now == started


def _pid_from_file(entry: Instruction) -> int | None:
    return pid_from_file(Path(entry["path"]), expect=entry["expect"])


def pid_from_file(path: Path, *, expect: str) -> int | None:
    """The live pid named by the file's first line, checked against the process itself (its command line holds
    `expect`), so a pid the system has given to another process since is never signalled."""
    try:
        pid = int(path.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None
    except OSError:
        return pid if sys.platform != "linux" else None
    return pid if os.fsencode(expect) in cmdline and alive(pid) else None


def _run(entry: Instruction, log: _Log) -> None:
    argv = [str(part) for part in entry["argv"]]
    try:
        result = subprocess.run(
            argv,
            input=entry.get("stdin", "").encode(),
            env={**os.environ, **entry.get("env", {})},
            capture_output=True,
            timeout=float(entry.get("timeout", 60)),
            check=False,
            cwd="/",
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"could not run {argv[0]}: {type(exc).__name__}: {str(exc)[:200]}")
        return
    said = (result.stdout + result.stderr).decode(errors="replace").strip().splitlines()
    log(f"ran {' '.join(argv[:4])}: exit {result.returncode}" + (f": {said[-1][:200]}" if said else ""))


def _gone(pid: int) -> Callable[[], bool]:
    return lambda: not alive(pid)


def wait_for(condition: Callable[[], bool], seconds: float, *, every: float = _POLL) -> bool:
    """Poll `condition` every `every` seconds until it holds (True) or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
    return True


def _remove(path: Path, log: _Log) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        return
    log(f"removed {path}")


def clean_up(instructions: list[Instruction], log: _Log) -> None:
    """End the registered process groups and pid-file processes, then run the commands (in the order they were
    registered), then remove the paths."""
    of_kind: dict[str, list[Instruction]] = {}
    for entry in instructions:
        of_kind.setdefault(entry["kind"], []).append(entry)
    groups = [e for e in of_kind.get("group", []) if _still_ours(e)]
    marked: dict[int, float] = {}  # pid -> grace, for processes that left their group
    for entry in groups:
        grace = float(entry.get("grace") or 0)
        for pid in _marked_processes(entry["marker"]) if entry.get("marker") else []:
            marked[pid] = max(marked.get(pid, 0.0), grace)
        sig = signal.SIGTERM if grace else signal.SIGKILL
        members = group_members(int(entry["pgid"]))
        if members:
            log(f"ending process group {entry['pgid']} ({len(members)} process(es)) with {sig.name}")
        _signal_group(int(entry["pgid"]), sig)
    for pid, grace in marked.items():
        _signal(pid, signal.SIGTERM if grace else signal.SIGKILL)
    by_pidfile: dict[int, Instruction] = {}
    for entry in of_kind.get("pidfile", []):
        server_pid = _pid_from_file(entry)
        if server_pid is not None:
            by_pidfile[server_pid] = entry
    for pid, entry in by_pidfile.items():
        log(f"sending SIGQUIT to pid {pid} (of {entry['path']})")
        _signal(pid, signal.SIGQUIT)

    grace = max([float(e.get("grace") or 0) for e in groups] + [max(marked.values(), default=0.0)])

    def processes_gone() -> bool:
        return not any(group_members(int(e["pgid"])) for e in groups) and not any(alive(p) for p in marked)

    if not wait_for(processes_gone, grace):
        for entry in groups:
            _signal_group(int(entry["pgid"]), signal.SIGKILL)
        for pid in marked:
            _signal(pid, signal.SIGKILL)
        if not wait_for(processes_gone, _KILL_WAIT):
            log("some processes outlived SIGKILL (an uninterruptible wait in the kernel)")
    for pid, entry in by_pidfile.items():
        if not wait_for(_gone(pid), float(entry.get("grace", PIDFILE_GRACE))):
            log(f"pid {pid} (of {entry['path']}) did not end; sending SIGKILL")
            # A server started in a session of its own: its group is the server and its children.
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) == pid:
                    _signal_group(pid, signal.SIGKILL)
                else:
                    _signal(pid, signal.SIGKILL)
            wait_for(_gone(pid), _KILL_WAIT)
    for entry in of_kind.get("command", []):
        _run(entry, log)
    for entry in of_kind.get("path", []):
        _remove(Path(entry["path"]), log)


def main(argv: list[str]) -> int:
    """`python -m pytest_dbsnap.core.reaper OWNER_PID LOG_PATH`, started by Reaper with its registrations on stdin."""
    owner, log_path = int(argv[0]), argv[1] if len(argv) > 1 else ""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which tidies up itself
    registered: dict[int, list[Instruction]] = {}
    for line in sys.stdin.buffer:
        try:
            message = json.loads(line)
        except ValueError:
            continue  # a torn last line of a dying parent
        if message.get("op") == "add":
            registered[int(message["id"])] = message["do"]
        elif message.get("op") == "forget":
            registered.pop(int(message["id"]), None)
    # End of file: the parent closed the pipe (a normal teardown, nothing left) or is gone.
    if registered:
        log = _Log(log_path, owner)
        log(f"the pipe closed with {len(registered)} resource(s) still registered (the parent is gone); cleaning up")
        clean_up([entry for entries in registered.values() for entry in entries], log)
        log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

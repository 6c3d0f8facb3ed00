"""What the fault drills share (imported as `drills`: a conftest name would clash with the other folders' for
mypy): processes told apart by pid and start time, found by walking /proc, and waits
with a deadline (a drill never sleeps as a readiness check)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.reaper import process_start

DRILL_VARIABLE = "DBSNAP_DRILL_ID"  # every process a drilled run starts inherits it, daemons included
LEFTOVER_DEADLINE = 15.0  # the goal: nothing of a killed run alive 15 s after the kill

Process = tuple[int, str | None]  # pid and its start time: a reused pid is another process


def is_running(pid: int) -> bool:
    """True while the process exists and has not exited; this container's PID 1 does not reap orphans, so a
    finished process can linger as a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def still_running(processes: set[Process]) -> set[Process]:
    return {(pid, started) for pid, started in processes if is_running(pid) and process_start(pid) == started}


def descendants(root: int) -> set[Process]:
    """The live processes below `root` (children, grandchildren...), by their parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[Process] = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if is_running(pid):
            found.add((pid, process_start(pid)))
        todo.extend(children.get(pid, []))
    return found


def marked(drill_id: str) -> set[Process]:
    """The live processes carrying a drill's id in their environment: everything its run started, also the
    ones that left the process tree (a postmaster, a daemonised child of a service)."""
    needle = f"{DRILL_VARIABLE}={drill_id}".encode()
    found: set[Process] = set()
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and is_running(pid):
            found.add((pid, process_start(pid)))
    return found


def wait_until(condition: Callable[[], object], seconds: float, what: str) -> float:
    """Poll until `condition` is true; returns the seconds it took, fails naming `what` at the deadline."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > seconds:
            pytest.fail(f"{what} did not happen within {seconds:g} s")
        time.sleep(0.05)
    return time.monotonic() - began


class Drilled:
    """Runs started under a drill id, so that whatever is left at the end of a test can be ended (only
    processes of runs the test started carry the id)."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def new_id(self) -> str:
        drill_id = uuid.uuid4().hex
        self.ids.append(drill_id)
        return drill_id

    def kill_leftovers(self) -> None:
        for drill_id in self.ids:
            for pid, _started in marked(drill_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def drill_runs() -> Iterator[Drilled]:
    """For a test's fixture: the drilled runs, whatever of them is left ended at the end."""
    runs = Drilled()
    try:
        yield runs
    finally:
        runs.kill_leftovers()


def start_run(
    argv: list[str], *, cwd: Path, env: dict[str, str], drill_id: str, output: Path
) -> subprocess.Popen[bytes]:
    """A run as CI starts it: its own process, output to a file, the drill id in its environment."""
    with output.open("ab") as log:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env={**env, DRILL_VARIABLE: drill_id},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

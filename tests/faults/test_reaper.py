"""The watchdog on its own, with real processes: a parent that registers what it starts and is then killed
with -9, a parent that gives everything back, and processes it must never touch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from drills import LEFTOVER_DEADLINE, Drilled, Process, drill_runs, is_running, start_run, still_running, wait_until

from pytest_dbsnap.core import reaper

pytestmark = pytest.mark.faults


@pytest.fixture
def drilled() -> Iterator[Drilled]:
    with drill_runs() as runs:
        yield runs


# A parent as a session is one: it starts a process group (a leader and its child), a daemon that leaves the
# group but keeps mirakuru's marker, and a temporary file, registers them, writes what it made, and waits for
# its end. With "forget" it gives everything back and closes the reaper as a normal teardown does.
PARENT = """\
import json, os, subprocess, sys, time
from pathlib import Path
from pytest_dbsnap.core.reaper import Reaper, process_start

out, mode = Path(sys.argv[1]), sys.argv[2]
watchdog = Reaper(out / "reaper.log")
group = subprocess.Popen(
    [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
     "'import time; time.sleep(3600)']); time.sleep(3600)"],
    process_group=0,
)
daemon = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(3600)"],
    start_new_session=True,
    env={**os.environ, "mirakuru_uuid": "drill-marker"},
)
scratch = out / "scratch.tmp"
scratch.write_text("half a dump")
tokens = [
    watchdog.watch_group(group.pid, marker="mirakuru_uuid=drill-marker", grace=0.5),
    watchdog.watch_path(scratch),
]
while True:  # the group leader's child: wait until it shows in /proc
    kids = [p.name for p in Path("/proc").glob("[0-9]*")
            if (p / "stat").exists() and (p / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(group.pid)]
    if kids:
        break
    time.sleep(0.01)
pids = [group.pid, int(kids[0]), daemon.pid]
# Written whole, then renamed: the test reads it as soon as the name shows.
(out / "pids.json.tmp").write_text(json.dumps({
    "processes": [[pid, process_start(pid)] for pid in pids],
    "watchdog": watchdog.watchdog_pid,
}))
os.replace(out / "pids.json.tmp", out / "pids.json")
if mode == "forget":
    for token in tokens:
        watchdog.forget(token)
    watchdog.close()
    (out / "closed").write_text("")
time.sleep(3600)
"""


def start_parent(tmp_path: Path, drilled: Drilled, mode: str) -> tuple[subprocess.Popen[bytes], set[Process], int]:
    """The parent, once it has started and registered everything: (its Popen, what it started, its watchdog)."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = start_run(
        [sys.executable, str(script), str(tmp_path), mode],
        cwd=Path.cwd(),
        env=dict(os.environ),
        drill_id=drilled.new_id(),
        output=tmp_path / "parent.out",
    )
    wait_until(lambda: (tmp_path / "pids.json").exists() or parent.poll() is not None, 30, "the parent's start")
    assert parent.poll() is None, (tmp_path / "parent.out").read_text()
    made = json.loads((tmp_path / "pids.json").read_text())
    return parent, {(int(pid), started) for pid, started in made["processes"]}, int(made["watchdog"])


def test_a_killed_parent_leaves_no_process_and_no_file(tmp_path: Path, drilled: Drilled) -> None:
    parent, processes, watchdog = start_parent(tmp_path, drilled, "keep")
    assert still_running(processes) == processes

    parent.send_signal(signal.SIGKILL)
    parent.wait()

    wait_until(lambda: not still_running(processes), LEFTOVER_DEADLINE, "the end of the killed parent's processes")
    wait_until(lambda: not (tmp_path / "scratch.tmp").exists(), LEFTOVER_DEADLINE, "the removal of its file")
    wait_until(lambda: not is_running(watchdog), LEFTOVER_DEADLINE, "the watchdog's exit")
    log = (tmp_path / "reaper.log").read_text()
    assert "2 resource(s) still registered" in log, log
    assert f"removed {tmp_path / 'scratch.tmp'}" in log, log


def test_a_normal_teardown_leaves_the_watchdog_nothing_to_do(tmp_path: Path, drilled: Drilled) -> None:
    parent, processes, watchdog = start_parent(tmp_path, drilled, "forget")
    wait_until(lambda: (tmp_path / "closed").exists(), 30, "the parent's normal teardown")

    # The watchdog exits at once, and what the parent gave back is its own business again.
    wait_until(lambda: not is_running(watchdog), 10, "the watchdog's exit")
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert still_running(processes) == processes
    assert (tmp_path / "scratch.tmp").exists()
    assert not (tmp_path / "reaper.log").exists()


def test_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    """A registered group whose leader is now another process (another start time) is left alone."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], process_group=0) as stranger:
        try:
            entry = {"kind": "group", "pgid": stranger.pid, "started": "1", "marker": None, "grace": 0}
            reaper.clean_up([entry], reaper._Log(str(tmp_path / "reaper.log"), os.getpid()))
            assert stranger.poll() is None
            assert is_running(stranger.pid)
        finally:
            stranger.kill()


def test_no_reaper_outside_a_session_and_none_in_a_forked_child() -> None:
    """Library calls outside a session register nothing; a reaper belongs to the process that made it."""
    assert all(r.owner == os.getpid() for r in reaper._active) or reaper.current() is None
    with reaper.session() as watchdog:
        assert reaper.current() is watchdog
        pid = os.fork()
        if pid == 0:  # the child: not its reaper
            os._exit(0 if reaper.current() is not watchdog else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert reaper.current() is not watchdog


def test_the_watchdog_needs_no_pytest() -> None:
    """It is started by the CLI too, and must stay small."""
    code = textwrap.dedent(
        """
        import sys
        import pytest_dbsnap.core.reaper
        assert "pytest" not in sys.modules and "_pytest" not in sys.modules, sorted(sys.modules)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)

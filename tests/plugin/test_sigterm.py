"""SIGTERM (a cancelled or timed-out CI job) and SIGHUP end a session or a dbsnap command like Ctrl-C: teardown
runs, the reports are written, one line names the signal, the exit status is non-zero and nothing is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

PROJECT = """\
[tool.dbsnap]
warm_cluster = false
skip_dump_restore = true

[tool.dbsnap.backend]
command = "python service.py"
health_url = "http://127.0.0.1:{port}/"
start_timeout = 30
"""

SERVICE = """\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

Path("backend.pid").write_text(str(os.getpid()))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

TESTS = """\
import time
from pathlib import Path


def test_before(dbsnap_db):
    assert dbsnap_db.execute("SELECT 1").fetchone() == (1,)


def test_waits(backend, pg_server):
    pid = (pg_server.data_dir / "postmaster.pid").read_text().split()[0]
    Path("postmaster.pid").write_text(pid)
    Path("waiting").write_text("yes")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)  # stands in for a long test; the signal ends it
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in {"Z", "X"}


def gone(pid: int) -> bool:
    return not alive(pid)


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # polling interval


def clean_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cache = tmp_path_factory.getbasetemp() / "pg-cache"
    cache.mkdir(exist_ok=True)
    keep = {k: v for k, v in os.environ.items() if not k.startswith("DBSNAP_") and k not in {"DATABASE_URL", "CI"}}
    return {**keep, "DBSNAP_CACHE_DIR": str(cache)}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_ends_the_session_like_ctrl_c_with_reports_and_nothing_left(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, sig: signal.Signals
) -> None:
    (tmp_path / "pyproject.toml").write_text(PROJECT)
    (tmp_path / "service.py").write_text(SERVICE)
    (tmp_path / "test_stop.py").write_text(TESTS)
    with subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--junitxml=junit.xml", "--html=report.html",
         "test_stop.py"],
        cwd=tmp_path, env=clean_env(tmp_path_factory), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as session:  # fmt: skip
        wait_for(lambda: (tmp_path / "waiting").exists() or session.poll() is not None, 120, "the test never ran")
        assert session.poll() is None, session.communicate()[0]
        session.send_signal(sig)
        output, _ = session.communicate(timeout=60)
    assert session.returncode not in (0, None), output
    assert f"pytest-dbsnap: stopped by {sig.name} while running test_stop.py::test_waits" in output, output
    for name in ("backend.pid", "postmaster.pid"):
        pid = int((tmp_path / name).read_text())
        wait_for(partial(gone, pid), 10, f"the {name.split('.')[0]} (pid {pid}) outlived the session")
    cases = {
        str(case.get("name"))
        for case in ElementTree.parse(tmp_path / "junit.xml").getroot().iter("testcase")  # noqa: S314 - our file
    }
    assert "test_before" in cases
    assert (tmp_path / "report.html").is_file()


SLOW_SEED = """\
import os, time
from pathlib import Path
Path("seed.pid").write_text(str(os.getpid()))
time.sleep(120)
"""


def test_dbsnap_generate_stopped_by_sigterm_ends_its_seed_and_exits_143(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.dbsnap]\ndumps_dir = "dumps"\nseed_command = "python slow_seed.py"\n'
    )
    (tmp_path / "slow_seed.py").write_text(SLOW_SEED)
    dbsnap = Path(sys.executable).with_name("dbsnap")
    with subprocess.Popen(
        [str(dbsnap), "generate", "--env", "dev"], cwd=tmp_path, env=clean_env(tmp_path_factory),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as generating:  # fmt: skip
        wait_for(lambda: (tmp_path / "seed.pid").exists() or generating.poll() is not None, 120, "no seed ran")
        assert generating.poll() is None, generating.communicate()
        generating.send_signal(signal.SIGTERM)
        out, err = generating.communicate(timeout=60)
    assert generating.returncode == 143, (out, err)
    assert err.strip().splitlines()[-1] == (
        "dbsnap: stopped by SIGTERM; nothing half-written was left in the dump store."
    ), err
    assert "Traceback" not in err
    seed_pid = int((tmp_path / "seed.pid").read_text())
    wait_for(partial(gone, seed_pid), 10, "the seed command outlived dbsnap")
    leftovers = [p.name for p in (tmp_path / "dumps").rglob("*") if p.is_file() and p.name != ".generate.lock"]
    assert leftovers == []

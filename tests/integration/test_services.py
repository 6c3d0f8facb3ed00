"""Service against real processes and real HTTP: start, environment, logs, prepare, the start failures, and a
stop that leaves nothing of the process group running."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_dbsnap.config.settings import ServiceSettings
from pytest_dbsnap.errors import ServiceError
from pytest_dbsnap.stack.services import Service

# One small server for every case; argv[1] picks how it misbehaves.
SERVER = r"""
import os, signal, subprocess, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
print(f"server starting on port {os.environ['PORT']}", flush=True)
print("connecting to postgresql://app:s3cr3t@db/app", flush=True)
if mode == "exit3":
    print("boom: cannot start", flush=True)
    sys.exit(3)
if mode == "exit0":
    print("usage: server [options]", flush=True)
    sys.exit(0)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = None
if mode == "spawn":
    # A child that ignores SIGTERM outlives the main process unless the whole group gets SIGKILL.
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        status, body = 200, b"ok"
        if self.path == "/health" and mode == "unhealthy":
            status, body = 503, b"not yet"
        elif self.path == "/health" and mode == "redirect":
            status, body = 301, b"moved"
        elif self.path.startswith("/env/"):
            body = os.environ.get(self.path[len("/env/"):], "<unset>").encode()
        elif self.path == "/prepared":
            body = Path("prepared.txt").read_bytes()
        elif self.path == "/child":
            body = str(child.pid if child else 0).encode()
        self.send_response(status)
        if status == 301:
            self.send_header("Location", "/login")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

MakeService = Callable[..., Service]


def is_running(pid: int) -> bool:
    """True while the process exists and has not exited; this container's PID 1 does not reap orphans, so a
    finished process can linger as a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def processes_marked(marker: str) -> list[int]:
    """Live processes whose environment holds the marker: everything a test started, children included."""
    needle = f"DBSNAP_TEST_MARK={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and is_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server_script(tmp_path: Path) -> Path:
    path = tmp_path / "server.py"
    path.write_text(SERVER)
    return path


@pytest.fixture
def make_service(tmp_path: Path, server_script: Path) -> Iterator[MakeService]:
    """Build Services for the test server; afterwards stop them and prove no process they started is left."""
    marker = uuid.uuid4().hex
    services: list[Service] = []

    def make(  # settings.* keys come in as overrides; extra_env is the env handed to Service itself
        mode: str = "ok",
        *,
        command: tuple[str, ...] | None = None,
        extra_env: dict[str, str] | None = None,
        stop_grace: float = 5.0,
        **overrides: Any,
    ) -> Service:
        settings: dict[str, Any] = {
            "name": "backend",
            "command": command or ("python", str(server_script), mode),
            "cwd": tmp_path,
            "health_url": "http://127.0.0.1:{port}/health",
            "start_timeout": 30.0,
        }
        settings.update(overrides)
        service = Service(
            ServiceSettings(**settings),
            env={"DBSNAP_TEST_MARK": marker, **(extra_env or {})},
            logs_dir=tmp_path / "logs",
            stop_grace=stop_grace,
        )
        services.append(service)
        return service

    yield make
    for service in services:
        service.stop()
    assert processes_marked(marker) == []


def test_serves_with_port_and_env_and_logs_its_output(make_service: MakeService) -> None:
    service = make_service(
        env={"SHARED": "from settings", "ONLY_SETTINGS": "settings value"},
        extra_env={"SHARED": "from service env", "DATABASE_URL": "postgresql://app@127.0.0.1/app"},
    )
    with service:
        pid = service.pid
        assert pid is not None
        assert is_running(pid)
        assert service.url == f"http://127.0.0.1:{service.port}"
        with service.client() as client:
            assert client.get("/env/PORT").text == str(service.port)
            assert client.get("/env/DATABASE_URL").text == "postgresql://app@127.0.0.1/app"
            assert client.get("/env/SHARED").text == "from service env"  # the env argument wins
            assert client.get("/env/ONLY_SETTINGS").text == "settings value"
            assert client.get("/env/PATH").text != "<unset>"  # the caller's environment is the base
    assert not is_running(pid)
    assert service.pid is None
    log = service.log_path.read_text()
    assert service.log_path == service.logs_dir / "backend.log"
    assert f"server starting on port {service.port}" in log
    assert '"GET /env/PORT HTTP/1.1" 200' in log  # http.server logs requests on stderr: it reaches the log too


def test_log_tail_redacts_passwords(make_service: MakeService) -> None:
    with make_service() as service:
        tail = service.log_tail()
    assert "postgresql://app:***@db/app" in tail
    assert "s3cr3t" not in tail
    # The file itself never holds it: the service's output reaches it through a redacting pipe.
    log = service.log_path.read_text()
    assert "postgresql://app:***@db/app" in log
    assert "s3cr3t" not in log


def test_fixed_port_is_used(make_service: MakeService) -> None:
    port = free_port()
    with make_service(port=port) as service, service.client() as client:
        assert service.port == port
        assert client.get("/env/PORT").text == str(port)


def test_fixed_port_in_use_is_refused_before_starting(make_service: MakeService) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        service = make_service(port=port)
        with pytest.raises(ServiceError, match=rf"port {port}\b.*already in use") as info:
            service.start()
    assert 'port = "auto"' in str(info.value)
    assert not service.log_path.exists()  # nothing was started


def test_prepare_runs_before_the_service(make_service: MakeService, tmp_path: Path) -> None:
    write = "from pathlib import Path; Path('prepared.txt').write_text('built'); print('prepare done')"
    service = make_service(prepare=(("python", "-c", write),))
    with service, service.client() as client:
        assert client.get("/prepared").text == "built"
    assert "prepare done" in (tmp_path / "logs" / "backend-prepare.log").read_text()


def test_failing_prepare_names_the_step(make_service: MakeService) -> None:
    ok = ("python", "-c", "print('first step fine')")
    broken = ("python", "-c", "import sys; print('cannot build assets'); sys.exit(5)")
    service = make_service(prepare=(ok, broken))
    with pytest.raises(ServiceError) as info:
        service.start()
    message = str(info.value)
    assert "prepare step 2 of 2" in message
    assert "exit code 5" in message
    assert "cannot build assets" in message
    assert "[tool.dbsnap.backend]" in message
    assert not service.log_path.exists()  # the service itself never started


@pytest.mark.parametrize(("mode", "reason"), [("exit3", "exited with code 3"), ("exit0", "exited with code 0")])
def test_exit_during_start_fails_fast(make_service: MakeService, mode: str, reason: str) -> None:
    service = make_service(mode, start_timeout=30.0)
    started = time.monotonic()
    with pytest.raises(ServiceError) as info:
        service.start()
    elapsed = time.monotonic() - started
    # A behaviour check, not a benchmark: the failure comes from the exit, not from waiting out 30 s.
    assert elapsed < 10
    message = str(info.value)
    assert reason in message
    assert "server starting on port" in message  # the log tail is quoted
    assert "s3cr3t" not in message
    if mode == "exit3":
        assert "boom: cannot start" in message
    assert service.pid is None


def test_each_start_writes_a_fresh_log_and_keeps_the_previous_as_dot_1(make_service: MakeService) -> None:
    with make_service() as first:
        first_port = first.port
    second = make_service("exit3")
    with pytest.raises(ServiceError) as info:
        second.start()
    assert second.log_path == first.log_path
    log = second.log_path.read_text()
    assert f"server starting on port {first_port}" not in log
    assert f"server starting on port {second.port}" in log
    previous = second.log_path.with_name("backend.log.1").read_text()
    assert f"server starting on port {first_port}" in previous
    assert f"server starting on port {second.port}" not in previous
    assert f"server starting on port {first_port}" not in str(info.value)
    assert f"server starting on port {second.port}" in str(info.value)
    assert f"server starting on port {first_port}" not in second.log_tail()


def test_health_never_ok_times_out_naming_the_url(make_service: MakeService) -> None:
    service = make_service("unhealthy", start_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(ServiceError) as info:
        service.start()
    assert time.monotonic() - started >= 2.0
    message = str(info.value)
    assert f"http://127.0.0.1:{service.port}/health" in message
    assert "within 2 s" in message
    assert "server starting on port" in message
    assert '"GET /health HTTP/1.1" 503' in message
    assert "; the last answer was status 503. It was stopped." in message


def test_health_timeout_says_what_did_come_back(make_service: MakeService) -> None:
    service = make_service("redirect", start_timeout=1.0)
    with pytest.raises(ServiceError) as info:
        service.start()
    assert "; the last answer was status 301 (Location: /login). It was stopped." in str(info.value)


def test_missing_program_is_named(make_service: MakeService) -> None:
    service = make_service(command=("dbsnap-no-such-program", "--serve"))
    with pytest.raises(ServiceError, match="'dbsnap-no-such-program' was not found"):
        service.start()


def test_sigkill_after_the_grace_period_when_sigterm_is_ignored(make_service: MakeService) -> None:
    service = make_service("ignore-term", stop_grace=1.0)
    service.start()
    pid = service.pid
    assert pid is not None
    started = time.monotonic()
    service.stop()
    assert time.monotonic() - started >= 1.0  # SIGTERM was ignored, so the grace period ran out
    assert not is_running(pid)


def test_stop_ends_the_whole_process_group(make_service: MakeService) -> None:
    service = make_service("spawn", stop_grace=1.0)
    with service:
        with service.client() as client:
            child = int(client.get("/child").text)
        pid = service.pid
        assert pid is not None
        assert is_running(child)
    assert not is_running(pid)
    assert not is_running(child)


def test_stop_is_idempotent_and_safe_before_start(make_service: MakeService) -> None:
    service = make_service()
    service.stop()
    service.start()
    pid = service.pid
    assert pid is not None
    service.stop()
    service.stop()
    assert service.pid is None
    assert not is_running(pid)

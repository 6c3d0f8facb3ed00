"""Service with placeholders and without a command, against real processes and real HTTP: {port} and the
database values reach the command, the environment and the health URL; a url-only service is polled, never
started or stopped; a password put into a command shows as *** in the log."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from pytest_dbsnap.config.settings import ServiceSettings
from pytest_dbsnap.errors import ServiceError
from pytest_dbsnap.stack.services import Service

# Serves its argv and one environment variable; the port comes from the argument, not from $PORT.
ECHO = """\
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

print("argv", sys.argv[1:], flush=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"argv": sys.argv[1:], "env": os.environ.get("DB_NAME"), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""
VALUES = {
    "database_url": "postgresql://app:pw-for-service-test@127.0.0.1:5432/shop",
    "database": "shop",
    "pg_host": "127.0.0.1",
    "pg_port": "5432",
    "pg_user": "app",
    "pg_password": "pw-for-service-test",
}


class _Answer(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200 if self.path.startswith("/ok") else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def running() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_placeholders_fill_the_command_env_and_health_url(tmp_path: Path) -> None:
    (tmp_path / "echo.py").write_text(ECHO)
    settings = ServiceSettings(
        name="backend",
        command=f"{sys.executable} echo.py {{port}} --db {{database}} --password {{pg_password}}",
        cwd=tmp_path,
        env={"DB_NAME": "{database}"},
        health_url="{backend_url}/ready?x={{literal}}",
    )
    service = Service(settings, env={}, logs_dir=tmp_path / "logs", placeholders=VALUES)
    with service, service.client() as client:
        body = client.get("/").json()
        assert body["argv"] == [str(service.port), "--db", "shop", "--password", "pw-for-service-test"]
        assert body["env"] == "shop"
        assert service.health_url == f"{service.url}/ready?x={{literal}}"
    log = service.log_path.read_text()
    assert "--password ***" in log
    assert "pw-for-service-test" not in service.log_tail()


def test_a_url_only_service_is_polled_and_never_started_or_stopped(tmp_path: Path, running: str) -> None:
    settings = ServiceSettings(
        name="frontend", command=None, cwd=tmp_path, url="{backend_url}/ok/", health_url="{backend_url}/ok/"
    )
    service = Service(settings, env={}, logs_dir=tmp_path / "logs", placeholders={"backend_url": running})
    with service:
        assert service.url == f"{running}/ok/"
        assert service.pid is None
    assert not service.log_path.exists()
    assert httpx.get(f"{running}/ok", timeout=5).status_code == 200, "stop() touched a service it did not start"


def test_a_url_only_service_that_answers_wrongly_fails_with_its_answer(tmp_path: Path, running: str) -> None:
    settings = ServiceSettings(
        name="backend", command=None, cwd=tmp_path, url=f"{running}/app", health_url=f"{running}/app", start_timeout=0.5
    )
    with pytest.raises(ServiceError) as info:
        Service(settings, env={}, logs_dir=tmp_path / "logs").start()
    assert f"{running}/app did not answer 200 within 0.5 s: it answered 503" in str(info.value)
